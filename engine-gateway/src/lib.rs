//! `engine-gateway`: the golden path over real WebSockets — log in, send a message, get your
//! events, and only yours.
//!
//! ```no_run
//! use engine_gateway::{demo::demo_registry, Gateway, GatewayConfig};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let gateway = Gateway::new(GatewayConfig::development(), demo_registry()).expect("gateway");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! gateway.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! # Endpoints
//! - `GET /` — a small page: pick a development user, send messages, watch the events.
//! - `GET /ws` — the WebSocket. Authenticate *before* the upgrade with
//!   `Authorization: Bearer <jwt>`, or (browsers cannot set headers on WebSockets) by offering
//!   the subprotocols `engine-gateway.v1` and `bearer.<jwt>` (the server answers
//!   `engine-gateway.v1`, never the token), or with `?ticket=<ticket>` from `POST /ws/ticket`.
//!   `?token=<jwt>` only with [`GatewayConfig::query_token`] (proxies log query strings).
//!   Missing, malformed, expired, not yet valid (`nbf`), too long-lived, wrongly signed tokens
//!   and a wrong `iss`/`aud` get `401` and no socket; a user over the connection limit, or an
//!   address over [`GatewayConfig::max_connections_per_ip`], gets `429`; a gateway at
//!   [`GatewayConfig::max_connections`] answers `503`.
//! - `POST /ws/ticket` with `Authorization: Bearer <jwt>` — `{"ticket":..,"expires_in_secs":30}`,
//!   a one-time ticket for `GET /ws?ticket=..`.
//! - `GET /dev/token?user=<id>` — with [`GatewayConfig::development`] only, and to loopback
//!   callers only (a peer address in `127.0.0.0/8` or `::1`): a token for any user.
//! - `GET /healthz` — JSON status (with the run store's and Redis's state when present),
//!   `GET /metrics` — Prometheus text (`GET /metrics.json`: the same counters as JSON).
//!
//! # A connection's life
//! The request headers must arrive within [`GatewayConfig::header_read_timeout`]. The upgrade
//! takes a global and a per-address slot, then checks the token, then a per-user slot; each
//! slot is released when the socket's task ends, however it ends. The server pings every
//! [`GatewayConfig::ping_interval`] of silence and closes the socket with these codes:
//! - `1000` idle: no message either way for [`GatewayConfig::idle_timeout`] (off by default);
//! - `1001` the server shuts down (after the runs' terminal events);
//! - `1002` the client broke the WebSocket protocol; `1009` a frame over 4x `max_frame_bytes`;
//! - `1011` nothing (no pong, no frame) within [`GatewayConfig::pong_timeout`] of a ping: a
//!   half-open socket is gone within `ping_interval + pong_timeout` of its last sign of life;
//! - `4401` the token has expired (its `exp` plus the leeway): reconnect with a new one.
//!
//! # HTTP API (`/v1`, JSON; see [`api`])
//! The same bearer JWT (`Authorization: Bearer <jwt>`), the socket's admission, limits and
//! multitask policy, and only the caller's data: another user's thread or run is `404`, as an
//! id that does not exist. Errors are `{"error":{"code":"..","message":".."}}` with the codes of
//! [`ErrorCode`]. The OpenAPI 3.1 document ([`api::ApiDoc`]) is served at `GET /openapi.json`.
//! - `GET /v1/threads?limit=&cursor=` — the caller's threads, most recently updated first;
//! - `GET /v1/threads/{thread_id}?limit=` — its last messages; `GET /v1/threads/{thread_id}/runs`
//!   — its runs' records; `DELETE /v1/threads/{thread_id}` — gone whole (`204`; running runs
//!   are cancelled first);
//! - `POST /v1/threads/{thread_id}/runs` `{"text":..,"agent":..,"multitask":..}` — starts a run:
//!   `202` with its record, or with `?stream=true` its Server-Sent Events;
//! - `GET /v1/runs/{run_id}` — the run's record; `GET /v1/runs/{run_id}/events?after_seq=&limit=`
//!   — its stored events, or with `Accept: text/event-stream` Server-Sent Events (`id:` = seq)
//!   live until the terminal event, resumed after `Last-Event-ID` on any node or after a
//!   restart (`event: gap` for events that cannot be sent);
//! - `POST /v1/runs/{run_id}/cancel`; `POST /v1/runs/{run_id}/approvals/{call_id}`
//!   `{"decision":"approve"|"deny"}`.
//!
//! With [`Backends::webhooks`] ([`WebhookConfig`]) every ended run's record is POSTed to one
//! URL, signed as the Standard Webhooks specification says, at least once (the deliveries wait
//! in the run store, across restarts).
//!
//! # Durable by default
//! [`Gateway::with_backends`] with a [`Backends::store`] (an `engine_store::SqlStore`) keeps
//! every run, its events, approvals and the thread's messages in SQLite or Postgres: they
//! survive a restart, `resume` of a run this process does not hold reads the store, and a run
//! that was in flight when a process died ends `interrupted` (one terminal record and event).
//! The binary does this by default (`.engine-gateway/gateway.db`; `--database-url memory` for
//! nothing kept).
//!
//! # Protocol (JSON text frames)
//! Client -> server:
//! - `{"type":"user_message","thread_id":"t1","text":"what is 6 * 7?","client_request_id":"c1","multitask":"enqueue"}`
//!   (`client_request_id` and `multitask` are optional; `multitask` says what to do if the
//!   thread still has a run in progress: `enqueue` (default: start after it), `interrupt`
//!   (cancel it; its terminal event comes first), `reject` (answer `thread_busy`) or `parallel`;
//!   any other value is a `bad_frame`);
//!   An optional `agent` names which served agent answers (default `assistant`; the demo
//!   registry also serves `supervisor`, which fans out to four sub-agents);
//! - `{"type":"pipeline","thread_id":"t1","text":"..","steps":[{"agent":"triage"},{"agent":"reporting","input":"..","timeout_ms":5000}],"continue_on_error":false}`
//!   runs the steps one after another as one run (each step a sub-agent, announced by
//!   `progress_update`; a step without `input` takes the previous answer);
//! - `{"type":"cancel","run_id":"run_..."}`
//! - `{"type":"resume","run_id":"run_...","after_seq":3}`
//! - `{"type":"approve","run_id":"run_...","call_id":2,"decision":"approve"}` (or `"deny"`)
//!   answers the `approval_requested` event of a tool call; any tab of the user may answer.
//!
//! Server -> client:
//! - `{"type":"welcome","user_id":"alice"}` once, after the upgrade;
//! - `{"type":"run_accepted","run_id":"run_...","client_request_id":"c1"}`, on the connection
//!   that sent the message, before any event of that run;
//! - `{"type":"event","user_id":..,"thread_id":..,"run_id":..,"seq":1,"timestamp_us":..,"event":{"type":"agent_started",..}}`
//!   for every engine event of the user, on every connection of the user. Besides the lifecycle
//!   events: `answer_delta` (`delta`: the next piece of the answer; for a completed run the
//!   deltas add up to its `result`), `approval_requested` (`tool_name`, `call_id`, `arguments`)
//!   and `approval_decided` (`call_id`, `outcome`: `approved`, `denied` or `timed_out`);
//!   `sub_agent_started` (`agent_name`, `request_id`, `parent_request_id`, `depth`) and
//!   `sub_agent_completed` (`request_id`, `status`, `result`/`error`) around a sub-agent, whose
//!   own events carry its `request_id` in the envelope; `progress_update` (`step`, `of`,
//!   `agent_name`) for pipelines; `agent_death` (`agent_name`, `request_id`, `reason`) when an
//!   agent panicked. A client that reconnects and resumes a run sees a still-pending
//!   `approval_requested` again;
//! - `{"type":"gap","run_id":..,"from_seq":1,"to_seq":40}` when a `resume` asks for events
//!   already evicted from the per-user replay buffer (or, from the run store, events that were
//!   not stored), and at the end of a replay larger than the connection's free queue (resume
//!   again from the last seq received); `resume` frames count against `resumes_per_minute`
//!   (`rate_limited` past it);
//! - `{"type":"error","code":"bad_frame","message":".."}` — codes: `bad_frame`,
//!   `frame_too_large`, `rate_limited`, `too_many_runs`, `too_many_engines`, `thread_busy`,
//!   `unknown_run`, `cluster_unavailable`, `store_unavailable`,
//!   `unknown_approval`, `bad_request`, `shutting_down`, `internal`. `too_many_runs` is the engine's own limit
//!   (`EngineError::QueueFull`: by default 3 runs of a user at once and 4 waiting), reported,
//!   not decided, by the gateway. The connection stays open. (A frame larger than four times
//!   `max_frame_bytes` is refused by the WebSocket layer itself, which closes the connection
//!   with code 1009.)
//!
//! The user id comes only from the token; client frames carry no user field (a frame with one
//! is a `bad_frame`). `resume` and `cancel` look only at the token user's runs, so another
//! user's run id is `unknown_run`. After `resume`, live events continue; a client drops
//! duplicates by `(run_id, seq)`.

pub mod api;
pub mod auth;
mod config;
mod connection;
pub mod demo;
mod dispatch;
mod listen;
mod metrics;
pub mod protocol;
mod routes;
mod server;
mod session;
mod slots;
mod webhook;

pub use auth::{AuthError, Claims, TokenKeys, TokenRules, VerifiedToken};
pub use config::{GatewayConfig, GatewayConfigError};
pub use protocol::{ClientFrame, ErrorCode, ServerFrame};
pub use server::{Backends, Gateway, GatewayError};
pub use webhook::{WebhookConfig, WebhookConfigError};
