//! The HTTP routes: the page, the WebSocket upgrade (authentication before it), development
//! tokens, health and metrics, with request tracing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine_core::UserId;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::auth::{AuthError, VerifiedToken};
use crate::connection::connection;
use crate::metrics::GatewayMetrics;
use crate::session::{lock, AttachRefused, Outgoing, UserSession};
use crate::slots::SlotRefused;
use crate::Gateway;

const PAGE: &str = include_str!("../static/index.html");

/// What `/ws` reads from its query string: a one-time ticket, or (behind
/// [`GatewayConfig::query_token`](crate::GatewayConfig::query_token)) the token itself.
#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
    ticket: Option<String>,
}

#[derive(Deserialize)]
struct DevTokenQuery {
    user: String,
}

/// The subprotocol the gateway speaks; a browser offers it beside `bearer.<jwt>`, and the
/// server answers it (never the token).
pub(crate) const SUBPROTOCOL: &str = "engine-gateway.v1";
/// The prefix of the subprotocol that carries the token.
const BEARER_PROTOCOL: &str = "bearer.";
/// Each socket's read buffer: tungstenite's default is 128 KiB per socket, which idle chat
/// sockets never use (frames are at most `max_frame_bytes`; the buffer grows when needed).
pub(crate) const SOCKET_READ_BUFFER: usize = 4096;

/// The TCP peer of a request (`None` when the router is served without peer addresses).
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

impl Peer {
    /// Whether the peer is this machine: any address in `127.0.0.0/8`, or `::1` (also as an
    /// IPv4-mapped IPv6 address). A proxy on the same machine counts as loopback.
    fn is_loopback(&self) -> bool {
        self.0.is_some_and(|a| a.ip().to_canonical().is_loopback())
    }
}

impl Gateway {
    /// The routes, with request tracing: every request gets an `x-request-id` (kept from the
    /// client or a new UUID, echoed in the response) and a span carrying it, its method and its
    /// path (never the query, which may hold a token); each response is logged with its status
    /// and latency. Plain HTTP requests time out after 10 s (the `/v1` API after 60 s; its own
    /// waits are shorter and answered as JSON errors).
    pub fn router(&self) -> Router {
        let trace = TraceLayer::new_for_http()
            .make_span_with(|req: &axum::http::Request<axum::body::Body>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = req.uri().path(), request_id = id)
            })
            .on_request(())
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
        Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route("/ws", get(ws_handler))
            .route("/ws/ticket", post(ticket))
            .route("/dev/token", get(dev_token))
            .route("/healthz", get(health))
            .route("/metrics", get(metrics))
            .route("/metrics.json", get(metrics_json))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(10),
            ))
            // The API bounds its own waits (store reads 5 s, a delete's runs 10 s) and answers
            // them in its JSON error shape; this only stops a request nothing else bounds.
            .merge(crate::api::routes().layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(60),
            )))
            .with_state(self.clone())
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(trace)
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
    }
}

/// Where the token of an upgrade is: the `Authorization` header, the `bearer.<jwt>`
/// subprotocol, a one-time ticket, or (only when allowed) the query string.
fn token_of(gw: &Gateway, headers: &HeaderMap, q: &WsQuery) -> Result<VerifiedToken, AuthError> {
    let keys = &gw.inner.keys;
    if let Some(bearer) = bearer(headers) {
        return keys.verify_token(bearer);
    }
    let protocols = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for p in protocols {
        if let Some(token) = p.strip_prefix(BEARER_PROTOCOL) {
            return keys.verify_token(token);
        }
    }
    if let Some(ticket) = &q.ticket {
        return gw.inner.tickets.redeem(ticket);
    }
    match &q.token {
        Some(token) if gw.inner.config.query_token => keys.verify_token(token.trim()),
        Some(_) => Err(AuthError::QueryTokenOff),
        None => Err(AuthError::Missing),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

async fn ws_handler(
    State(gw): State<Gateway>,
    peer: Peer,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let metrics = &gw.inner.metrics;
    let cfg = &gw.inner.config;
    if gw.inner.shutting_down.load(Ordering::Acquire) {
        GatewayMetrics::refused(&metrics.upgrades_refused, "shutting_down");
        tracing::info!("upgrade refused: shutting down");
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // Counted before the token is checked: an address over its cap costs no signature check.
    let slot = match gw.inner.slots.take(
        peer.0.map(|a| a.ip().to_canonical()),
        cfg.max_connections,
        cfg.max_connections_per_ip,
    ) {
        Ok(slot) => slot,
        Err(SlotRefused::ServerFull) => {
            GatewayMetrics::refused(&metrics.upgrades_refused, "server_full");
            tracing::warn!(
                limit = cfg.max_connections,
                "upgrade refused: the gateway holds its maximum of sockets"
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                "the server holds its maximum number of connections; retry later or elsewhere",
            )
                .into_response();
        }
        Err(SlotRefused::AddressFull) => {
            GatewayMetrics::refused(&metrics.upgrades_refused, "address_full");
            tracing::warn!(peer = ?peer.0.map(|a| a.ip()), limit = cfg.max_connections_per_ip, "upgrade refused: per-address limit");
            return (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this address already has {} connections (the limit)",
                    cfg.max_connections_per_ip
                ),
            )
                .into_response();
        }
    };
    let token = match token_of(&gw, &headers, &q) {
        Ok(t) => t,
        Err(e) => {
            GatewayMetrics::refused(&metrics.upgrades_refused, "unauthorized");
            tracing::info!(error = %e, "upgrade refused: unauthorized");
            return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        }
    };
    let user = token.user;
    let (tx, rx) = mpsc::channel::<Outgoing>(cfg.connection_queue);
    // A session swept between `session()` and the attach is taken again (a new one).
    let mut attached = Err(AttachRefused::Swept);
    let mut session = gw.session(&user);
    for _ in 0..3 {
        attached = session.try_attach(cfg.max_connections_per_user, tx.clone());
        if attached != Err(AttachRefused::Swept) {
            break;
        }
        session = gw.session(&user);
    }
    let Ok(conn_id) = attached else {
        GatewayMetrics::refused(&metrics.upgrades_refused, "too_many_connections");
        tracing::warn!(user_id = %user, limit = cfg.max_connections_per_user, "upgrade refused: connection limit");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "user {user} already has {} connections (the limit)",
                cfg.max_connections_per_user
            ),
        )
            .into_response();
    };
    // Detaches the connection even if the upgrade never completes.
    let guard = Detach {
        session: Arc::clone(&session),
        id: conn_id,
    };
    let limit = cfg.max_frame_bytes.saturating_mul(4).max(1024);
    let expires_at = token.expires_at;
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(SOCKET_READ_BUFFER)
        // Each frame written at once: no per-socket write buffer kept between frames.
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let tracker = gw.inner.connections.clone();
            tracker.track_future(connection(gw, session, guard, slot, expires_at, socket, rx))
        })
}

/// `POST /ws/ticket` with `Authorization: Bearer <jwt>`: a one-time ticket for `GET
/// /ws?ticket=<ticket>`, valid for `ticket_ttl` (for clients that can set neither a header nor
/// a subprotocol on the upgrade).
async fn ticket(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let verified =
        match bearer(&headers).map_or(Err(AuthError::Missing), |t| gw.inner.keys.verify_token(t)) {
            Ok(v) => v,
            Err(e) => return (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
        };
    let ttl = gw.inner.config.ticket_ttl;
    let ticket = gw.inner.tickets.issue(verified, ttl);
    Json(json!({ "ticket": ticket, "expires_in_secs": ttl.as_secs() })).into_response()
}

pub(crate) struct Detach {
    session: Arc<UserSession>,
    pub(crate) id: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.session.detach(self.id);
    }
}

/// `GET /dev/token?user=<id>`: with `development` on, a token for any user, to loopback
/// callers only (see [`Peer::is_loopback`]).
async fn dev_token(
    State(gw): State<Gateway>,
    peer: Peer,
    Query(q): Query<DevTokenQuery>,
) -> Response {
    if !gw.inner.config.development {
        return (StatusCode::NOT_FOUND, "development tokens are disabled").into_response();
    }
    if !peer.is_loopback() {
        tracing::warn!(peer = ?peer.0.map(|a| a.ip()), "development token refused: not a loopback caller");
        return (
            StatusCode::FORBIDDEN,
            "development tokens are served to loopback callers only",
        )
            .into_response();
    }
    let user = match UserId::new(&q.user) {
        Ok(u) => u,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match gw
        .inner
        .keys
        .issue(&user, gw.inner.config.dev_token_ttl.as_secs())
    {
        Ok(token) => Json(json!({ "user_id": user.as_str(), "token": token })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `200 {"status":"ok"}`; `503` while shutting down, or in cluster mode while Redis does not
/// answer (`"redis":"unreachable"`: this node cannot admit engines, route users elsewhere).
async fn health(State(gw): State<Gateway>) -> Response {
    let shutting = gw.inner.shutting_down.load(Ordering::Acquire);
    let redis_up = match &gw.inner.cluster {
        Some(cluster) => Some(cluster.ping().await),
        None => None,
    };
    let store = gw
        .inner
        .store
        .as_ref()
        .map(engine_factory::RunStore::health);
    let status_text = if shutting {
        "shutting_down"
    } else if redis_up == Some(false) || store.as_ref().is_some_and(|s| !s.up) {
        "degraded"
    } else {
        "ok"
    };
    let status = if status_text == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({ "status": status_text });
    if let (Some(cluster), Some(up)) = (&gw.inner.cluster, redis_up) {
        body["node_id"] = json!(cluster.config().node_id());
        body["redis"] = json!(if up { "ok" } else { "unreachable" });
    }
    if let Some(h) = store {
        body["store"] = json!({
            "backend": h.backend,
            "status": if h.up { "ok" } else { "unreachable" },
            "buffered": h.buffered,
            "write_errors": h.write_errors,
            "events_not_stored": h.events_dropped,
        });
    }
    (status, Json(body)).into_response()
}

async fn metrics(State(gw): State<Gateway>) -> Response {
    let users = lock(&gw.inner.sessions).len();
    let cluster = gw
        .inner
        .cluster
        .as_ref()
        .map(engine_redis::RedisCluster::metrics);
    let text = gw
        .inner
        .metrics
        .render(&gw.inner.factory.metrics(), users, cluster.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn metrics_json(State(gw): State<Gateway>) -> Response {
    let m = gw.inner.factory.metrics();
    let g = &gw.inner.metrics;
    Json(json!({
        "engines_created": m.engines_created,
        "active_engines": m.active_engines,
        "engines_cleaned": m.engines_cleaned,
        "limit_rejections": m.limit_rejections,
        "creation_errors": m.creation_errors,
        "cleanup_errors": m.cleanup_errors,
        "timeout_cleanups": m.timeout_cleanups,
        "hub_events_delivered": m.events_delivered,
        "hub_events_dropped": m.events_dropped,
        "connections": g.open_connections.load(Ordering::Relaxed),
        "connection_slots": gw.inner.slots.open(),
        "users": lock(&gw.inner.sessions).len(),
        "events_sent": g.events_sent.get(),
        "events_dropped": g.events_dropped.get(),
        "cluster": gw.inner.cluster.as_ref().map(|c| {
            let m = c.metrics();
            json!({
                "node_id": c.config().node_id(),
                "redis_up": m.redis_up,
                "events_published": m.events_published,
                "publish_errors": m.publish_errors,
                "events_read": m.events_read,
                "read_errors": m.read_errors,
                "reconnects": m.reconnects,
                "lease_renewals": m.lease_renewals,
                "leases_lost": m.leases_lost,
                "leases_held": c.leases_held(),
                "control_forwarded": m.control_forwarded,
            })
        }),
    }))
    .into_response()
}
