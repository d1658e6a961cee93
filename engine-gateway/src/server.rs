//! HTTP and WebSocket handling.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use engine_core::{
    AgentRegistry, EngineError, MultitaskPolicy, Pipeline, PipelineStep, RunId, RunOptions,
    ThreadId, UserExecutionContext, UserId,
};
use engine_factory::{ExecutionEngineFactory, FactoryError};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::auth::{AuthError, TokenKeys};
use crate::metrics::GatewayMetrics;
use crate::protocol::{ClientFrame, ServerFrame};
use crate::session::{lock, Outgoing, UserSession};
use crate::{GatewayConfig, GatewayConfigError};

const PAGE: &str = include_str!("../static/index.html");

/// The gateway: one factory, per-user sessions, the HTTP routes.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    config: GatewayConfig,
    keys: TokenKeys,
    factory: ExecutionEngineFactory,
    sessions: Mutex<HashMap<UserId, Arc<UserSession>>>,
    metrics: GatewayMetrics,
    shutting_down: AtomicBool,
    /// Cancelled once runs have ended and their events were forwarded: connections close.
    close_connections: CancellationToken,
    pumps: tokio_util::task::TaskTracker,
    /// Every upgraded connection's task: shutdown waits for them to send their close frames
    /// (axum's graceful shutdown does not track upgraded connections).
    connections: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

#[derive(Deserialize)]
struct DevTokenQuery {
    user: String,
}

impl Gateway {
    /// A gateway over a new factory with `registry`'s agents (the page uses `assistant`).
    ///
    /// # Errors
    /// [`GatewayError::Config`] when the configuration does not validate
    /// ([`GatewayConfig::validate`]), [`GatewayError::Factory`] when the factory cannot be
    /// created in this process.
    pub fn new(config: GatewayConfig, registry: AgentRegistry) -> Result<Self, GatewayError> {
        config.validate(&registry)?;
        let factory = ExecutionEngineFactory::new(config.factory.clone(), registry)?;
        Ok(Self {
            inner: Arc::new(Inner {
                keys: TokenKeys::new(&config.jwt_secret),
                config,
                factory,
                sessions: Mutex::new(HashMap::new()),
                metrics: GatewayMetrics::new(),
                shutting_down: AtomicBool::new(false),
                close_connections: CancellationToken::new(),
                pumps: tokio_util::task::TaskTracker::new(),
                connections: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    /// The token keys (to issue tokens in tests or an auth service).
    pub fn keys(&self) -> &TokenKeys {
        &self.inner.keys
    }

    /// The factory behind the gateway.
    pub fn factory(&self) -> &ExecutionEngineFactory {
        &self.inner.factory
    }

    /// The routes, with request tracing: every request gets an `x-request-id` (kept from the
    /// client or a new UUID, echoed in the response) and a span carrying it, its method and its
    /// path (never the query, which may hold a token); each response is logged with its status
    /// and latency. Plain HTTP requests time out after 10 s.
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
            .route("/dev/token", get(dev_token))
            .route("/healthz", get(health))
            .route("/metrics", get(metrics))
            .route("/metrics.json", get(metrics_json))
            .with_state(self.clone())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(10),
            ))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(trace)
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
    }

    /// Serves until `signal` completes, then shuts down gracefully (see [`shutdown`](Self::shutdown)).
    ///
    /// # Errors
    /// I/O errors of the listener.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let me = self.clone();
        let sweeper = self.clone();
        let idle = self.inner.config.session_idle;
        let sweep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                if sweeper.inner.shutting_down.load(Ordering::Acquire) {
                    break;
                }
                sweeper.sweep_idle(idle).await;
            }
        });
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                signal.await;
                me.shutdown().await;
            })
            .await;
        sweep.abort();
        result
    }

    /// Removes the sessions of users with no connection, no run in flight and no activity for
    /// `idle`: their engine is closed, their pump stopped, their replay buffer dropped. Returns
    /// how many were removed. `serve` runs this every minute with
    /// [`GatewayConfig::session_idle`](crate::GatewayConfig::session_idle).
    pub async fn sweep_idle(&self, idle: std::time::Duration) -> usize {
        let gone: Vec<Arc<UserSession>> = {
            let mut sessions = lock(&self.inner.sessions);
            let idle_users: Vec<UserId> = sessions
                .iter()
                .filter(|(_, s)| s.is_idle(idle))
                .map(|(u, _)| u.clone())
                .collect();
            idle_users
                .iter()
                .filter_map(|u| sessions.remove(u))
                .collect()
        };
        for s in &gone {
            s.pump_stop.cancel();
            if let Some(engine) = s.engine.lock().await.take() {
                engine.close().await;
            }
        }
        gone.len()
    }

    /// Graceful shutdown: refuse new sockets and messages, cancel runs within the factory's
    /// deadline (each emits its terminal event, forwarded to the user's connections), then
    /// close every socket with a `1001 going away` close frame, and return once every
    /// connection has sent it (or the shutdown deadline passed). Idempotent.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if !inner.shutting_down.swap(true, Ordering::AcqRel) {
            tracing::info!(
                connections = inner.metrics.open_connections.load(Ordering::Relaxed),
                "gateway shutting down"
            );
            inner.factory.shutdown().await;
            // The hub is closed: every pump forwards what is left and ends.
            inner.pumps.close();
        }
        inner.pumps.wait().await;
        inner.close_connections.cancel();
        inner.connections.close();
        let deadline = inner.config.factory.shutdown_deadline();
        if tokio::time::timeout(deadline, inner.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = inner.connections.len(),
                "connections still closing at the shutdown deadline"
            );
        }
    }

    fn session(&self, user: &UserId) -> Arc<UserSession> {
        let mut sessions = lock(&self.inner.sessions);
        if let Some(s) = sessions.get(user) {
            return Arc::clone(s);
        }
        let session = Arc::new(UserSession::new(
            user.clone(),
            self.inner.config.replay_buffer,
        ));
        sessions.insert(user.clone(), Arc::clone(&session));
        // One pump per user: the user's hub subscription -> replay buffer -> connections.
        let mut sub = self.inner.factory.subscribe(user);
        let s = Arc::clone(&session);
        let me = self.clone();
        let stop = session.pump_stop.clone();
        self.inner.pumps.spawn(async move {
            loop {
                let e = tokio::select! {
                    e = sub.recv() => match e {
                        Some(e) => e,
                        None => break,
                    },
                    () = stop.cancelled() => break,
                };
                lock(&s.replay).push(Arc::clone(&e));
                let emitted_us = e.timestamp_us;
                let frame = Outgoing {
                    text: ServerFrame::Event { envelope: e }.to_json().into(),
                    emitted_us,
                };
                let (sent, dropped) = s.broadcast(&frame);
                let m = &me.inner.metrics;
                m.events_sent.inc_by(sent);
                m.events_dropped.inc_by(dropped);
            }
        });
        session
    }

    fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<UserId, AuthError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let token = bearer.or(query).ok_or(AuthError::Missing)?;
        self.inner.keys.verify(token.trim())
    }

    async fn handle_frame(
        &self,
        session: &UserSession,
        conn: u64,
        text: &str,
    ) -> Option<ServerFrame> {
        if text.len() > self.inner.config.max_frame_bytes {
            return Some(ServerFrame::error(
                "frame_too_large",
                format!(
                    "frame of {} bytes exceeds the limit of {} bytes",
                    text.len(),
                    self.inner.config.max_frame_bytes
                ),
            ));
        }
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                return Some(ServerFrame::error(
                    "bad_frame",
                    format!(
                        "cannot read frame: {e}; expected user_message, pipeline, cancel, resume or approve"
                    ),
                ))
            }
        };
        if self.inner.shutting_down.load(Ordering::Acquire) {
            if let ClientFrame::UserMessage { .. } = frame {
                return Some(ServerFrame::error(
                    "shutting_down",
                    "the server is shutting down; reconnect later",
                ));
            }
        }
        match frame {
            ClientFrame::UserMessage {
                thread_id,
                text,
                client_request_id,
                multitask,
                agent,
            } => {
                let agent = agent.unwrap_or_else(|| self.inner.config.default_agent.clone());
                let work = Work::Agent(agent);
                let start = Start {
                    thread_id,
                    text,
                    client_request_id,
                    options: options(multitask),
                    work,
                };
                self.start_run(session, conn, start).await
            }
            ClientFrame::Pipeline {
                thread_id,
                text,
                steps,
                continue_on_error,
                client_request_id,
                multitask,
            } => {
                let steps = steps.into_iter().map(|s| {
                    let mut step = PipelineStep::new(s.agent);
                    if let Some(input) = s.input {
                        step = step.input(input);
                    }
                    if let Some(ms) = s.timeout_ms {
                        step = step.timeout(Duration::from_millis(ms));
                    }
                    step
                });
                let pipeline = Pipeline::new(steps).continue_on_error(continue_on_error);
                let start = Start {
                    thread_id,
                    text,
                    client_request_id,
                    options: options(multitask),
                    work: Work::Pipeline(pipeline),
                };
                self.start_run(session, conn, start).await
            }
            ClientFrame::Approve {
                run_id,
                call_id,
                decision,
            } => {
                let Ok(run) = RunId::new(&run_id) else {
                    return Some(ServerFrame::error(
                        "bad_request",
                        "run_id is not a valid run id",
                    ));
                };
                let engine = session.engine.lock().await;
                // Only this user's engine is asked: another user's run id is unknown here.
                match engine.as_ref().map(|e| e.approve(&run, call_id, decision)) {
                    Some(Ok(())) => None,
                    Some(Err(EngineError::UnknownApproval { .. })) => Some(ServerFrame::error(
                        "unknown_approval",
                        format!("run {run_id} has no tool call {call_id} waiting for approval"),
                    )),
                    _ => Some(ServerFrame::error(
                        "unknown_run",
                        format!("no active run {run_id} of yours"),
                    )),
                }
            }
            ClientFrame::Cancel { run_id } => {
                let Ok(run) = RunId::new(&run_id) else {
                    return Some(ServerFrame::error(
                        "bad_request",
                        "run_id is not a valid run id",
                    ));
                };
                let engine = session.engine.lock().await;
                match engine.as_ref().map(|e| e.cancel(&run)) {
                    Some(Ok(())) => None,
                    _ => Some(ServerFrame::error(
                        "unknown_run",
                        format!("no active run {run_id} of yours"),
                    )),
                }
            }
            ClientFrame::Resume { run_id, after_seq } => {
                let frames = RunId::new(&run_id)
                    .ok()
                    .and_then(|run| lock(&session.replay).resume(&run, after_seq));
                match frames {
                    None => Some(ServerFrame::error(
                        "unknown_run",
                        format!("no run {run_id} of yours to resume"),
                    )),
                    Some(frames) => {
                        for f in frames {
                            session.send_to(conn, Outgoing::plain(f.to_json()));
                        }
                        None
                    }
                }
            }
        }
    }

    /// Starts a run; answers `run_accepted` itself (before any event of the run reaches the
    /// connection), or returns the error frame.
    async fn start_run(
        &self,
        session: &UserSession,
        conn: u64,
        start: Start,
    ) -> Option<ServerFrame> {
        let Start {
            thread_id,
            text,
            client_request_id,
            options,
            work,
        } = start;
        let thread_id = thread_id.as_str();
        let cfg = &self.inner.config;
        if !session.allow_message(cfg.messages_per_minute) {
            GatewayMetrics::refused(&self.inner.metrics.limit_hits, "rate_limited");
            tracing::warn!(user_id = %session.user, limit = cfg.messages_per_minute, "message refused: rate limit");
            return Some(ServerFrame::error(
                "rate_limited",
                format!(
                    "at most {} messages per minute; wait and retry",
                    cfg.messages_per_minute
                ),
            ));
        }
        if let Err(e) = ThreadId::new(thread_id) {
            return Some(ServerFrame::error("bad_request", e.to_string()));
        }
        let ctx = match UserExecutionContext::builder()
            .user_id(&session.user)
            .thread_id(thread_id)
            .run_id(RunId::generate())
            .connection_id(format!("conn-{conn}"))
            .build()
        {
            Ok(c) => c,
            Err(e) => return Some(ServerFrame::error("bad_request", e.to_string())),
        };
        let mut engine = session.engine.lock().await;
        if engine.as_ref().is_none_or(|e| !e.is_active()) {
            let root = ctx.with_run_id(RunId::generate());
            match self.inner.factory.create_for_user(&root) {
                Ok(e) => *engine = Some(e),
                Err(FactoryError::ShutDown) => {
                    return Some(ServerFrame::error(
                        "shutting_down",
                        "the server is shutting down",
                    ))
                }
                Err(e) => return Some(ServerFrame::error("internal", e.to_string())),
            }
        }
        let Some(engine) = engine.as_ref() else {
            return Some(ServerFrame::error("internal", "no engine"));
        };
        // Registered before the run starts so its first event finds it; forgotten again if the
        // engine refuses the run.
        lock(&session.replay).register(ctx.run_id());
        let hold = session.hold_delivery();
        let spawned = match work {
            Work::Agent(agent) => engine.spawn_with(&ctx, &agent, text, options),
            Work::Pipeline(pipeline) => engine.spawn_pipeline(&ctx, pipeline, text, options),
        };
        match spawned {
            Ok(run) => {
                let accepted = ServerFrame::RunAccepted {
                    run_id: ctx.run_id().clone(),
                    client_request_id,
                };
                hold.send_to(conn, Outgoing::plain(accepted.to_json()));
                drop(hold);
                // The run goes on by itself; this only records how it ends.
                let gw = self.clone();
                let user = session.user.clone();
                tokio::spawn(async move {
                    let run_id = run.run_id().clone();
                    match run.outcome().await {
                        Ok(outcome) => {
                            gw.inner.metrics.run_ended(&outcome);
                            let total = outcome.queue_wait + outcome.execution_time;
                            tracing::info!(
                                user_id = %user,
                                run_id = %run_id,
                                status = outcome.status().as_str(),
                                duration_ms = u64::try_from(total.as_millis()).unwrap_or(u64::MAX),
                                "run ended"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(user_id = %user, run_id = %run_id, error = %e, "run lost");
                        }
                    }
                });
                None
            }
            Err(e) => {
                lock(&session.replay).forget(ctx.run_id());
                // The engine decides how many runs a user may have; the gateway reports it.
                let code = match e {
                    EngineError::QueueFull { .. } => "too_many_runs",
                    EngineError::ThreadBusy { .. } => "thread_busy",
                    EngineError::UnknownAgent { .. } | EngineError::InvalidPipeline { .. } => {
                        "bad_request"
                    }
                    _ => "internal",
                };
                if matches!(code, "too_many_runs" | "thread_busy") {
                    GatewayMetrics::refused(&self.inner.metrics.limit_hits, code);
                    tracing::warn!(user_id = %session.user, run_id = %ctx.run_id(), code, "message refused: {e}");
                }
                Some(ServerFrame::error(code, e.to_string()))
            }
        }
    }
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] GatewayConfigError),
    /// The engine factory could not be created.
    #[error(transparent)]
    Factory(#[from] FactoryError),
}

/// What a `user_message` or `pipeline` frame asks to start.
struct Start {
    thread_id: String,
    text: String,
    client_request_id: Option<String>,
    options: RunOptions,
    work: Work,
}

enum Work {
    Agent(String),
    Pipeline(Pipeline),
}

fn options(multitask: Option<MultitaskPolicy>) -> RunOptions {
    multitask.map_or_else(RunOptions::new, |p| RunOptions::new().multitask(p))
}

async fn ws_handler(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let metrics = &gw.inner.metrics;
    if gw.inner.shutting_down.load(Ordering::Acquire) {
        GatewayMetrics::refused(&metrics.upgrades_refused, "shutting_down");
        tracing::info!("upgrade refused: shutting down");
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let user = match gw.authenticate(&headers, q.token.as_deref()) {
        Ok(u) => u,
        Err(e) => {
            GatewayMetrics::refused(&metrics.upgrades_refused, "unauthorized");
            tracing::info!(error = %e, "upgrade refused: unauthorized");
            return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        }
    };
    let session = gw.session(&user);
    let (tx, rx) = mpsc::channel::<Outgoing>(gw.inner.config.connection_queue);
    let Some(conn_id) = session.try_attach(gw.inner.config.max_connections_per_user, tx) else {
        GatewayMetrics::refused(&metrics.upgrades_refused, "too_many_connections");
        tracing::warn!(user_id = %user, limit = gw.inner.config.max_connections_per_user, "upgrade refused: connection limit");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "user {user} already has {} connections (the limit)",
                gw.inner.config.max_connections_per_user
            ),
        )
            .into_response();
    };
    // Detaches the connection even if the upgrade never completes.
    let guard = Detach {
        session: Arc::clone(&session),
        id: conn_id,
    };
    let limit = gw.inner.config.max_frame_bytes.saturating_mul(4).max(1024);
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let tracker = gw.inner.connections.clone();
            tracker.track_future(connection(gw, session, guard, socket, rx))
        })
}

struct Detach {
    session: Arc<UserSession>,
    id: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.session.detach(self.id);
    }
}

async fn connection(
    gw: Gateway,
    session: Arc<UserSession>,
    guard: Detach,
    socket: WebSocket,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    gw.inner.metrics.connection(1);
    let (mut sink, mut stream) = socket.split();
    let lag_gw = gw.clone();
    let welcome = ServerFrame::Welcome {
        user_id: session.user.to_string(),
    };
    let close = gw.inner.close_connections.clone();
    // How the reader ended, for the close frame the writer sends.
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<CloseFrame>();
    let writer = tokio::spawn(async move {
        if sink
            .send(Message::Text(welcome.to_json().into()))
            .await
            .is_err()
        {
            return;
        }
        let mut reading = true;
        loop {
            tokio::select! {
                biased;
                // The reader ended on an error: close with its code, before anything else.
                frame = &mut ended, if reading => match frame {
                    Ok(frame) => {
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        return;
                    }
                    Err(_) => reading = false,
                },
                msg = rx.recv() => match msg {
                    Some(frame) => {
                        if sink.send(Message::Text(frame.text.as_ref().into())).await.is_err() {
                            return;
                        }
                        if frame.emitted_us > 0 {
                            let lag_us = now_us().saturating_sub(frame.emitted_us);
                            lag_gw.inner.metrics.emit_to_socket.observe(lag_us as f64 / 1e6);
                        }
                    }
                    None => break,
                },
                () = close.cancelled() => {
                    // Flush what is queued (terminal events), then say goodbye.
                    while let Ok(frame) = rx.try_recv() {
                        if sink.send(Message::Text(frame.text.as_ref().into())).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1001,
                reason: "server shutting down".into(),
            })))
            .await;
    });
    let closing = gw.inner.close_connections.clone();
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            () = closing.cancelled() => break,
        };
        let reply = match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => {
                // A frame over the WebSocket size limit closes with 1009 (message too big).
                let text = e.to_string();
                let code = if text.contains("too long") || text.contains("limit") {
                    1009
                } else {
                    1002
                };
                tracing::info!(user_id = %session.user, code, error = %text, "closing a connection after a WebSocket error");
                let _ = ended_tx.send(CloseFrame {
                    code,
                    reason: if code == 1009 {
                        "message too big"
                    } else {
                        "protocol error"
                    }
                    .into(),
                });
                break;
            }
            Some(Ok(Message::Text(t))) => gw.handle_frame(&session, guard.id, t.as_str()).await,
            Some(Ok(Message::Binary(_))) => Some(ServerFrame::error(
                "bad_frame",
                "binary frames are not supported; send JSON text",
            )),
            Some(Ok(_)) => None,
        };
        if let Some(frame) = reply {
            session.send_to(guard.id, Outgoing::plain(frame.to_json()));
        }
    }
    drop(guard);
    let _ = writer.await;
    gw.inner.metrics.connection(-1);
}

/// Microseconds since the Unix epoch, as event timestamps count them.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

async fn dev_token(State(gw): State<Gateway>, Query(q): Query<DevTokenQuery>) -> Response {
    if !gw.inner.config.development {
        return (StatusCode::NOT_FOUND, "development tokens are disabled").into_response();
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

async fn health(State(gw): State<Gateway>) -> Response {
    let shutting = gw.inner.shutting_down.load(Ordering::Acquire);
    let status = if shutting {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({ "status": if shutting { "shutting_down" } else { "ok" } })),
    )
        .into_response()
}

async fn metrics(State(gw): State<Gateway>) -> Response {
    let users = lock(&gw.inner.sessions).len();
    let text = gw.inner.metrics.render(&gw.inner.factory.metrics(), users);
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
        "users": lock(&gw.inner.sessions).len(),
        "events_sent": g.events_sent.get(),
        "events_dropped": g.events_dropped.get(),
    }))
    .into_response()
}
