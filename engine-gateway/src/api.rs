//! The HTTP API under `/v1`: the caller's threads and runs (list, read, stream, start, cancel,
//! approve, delete), beside the socket protocol and over the same engine, limits and JWT.
//!
//! Every handler takes the user from the bearer token and passes it to every read: another
//! user's thread or run is not found (`404`), exactly as one that does not exist. Errors are
//! one JSON shape, `{"error":{"code":"..","message":".."}}`, with the socket's error codes.
//! The OpenAPI document ([`ApiDoc`]) is generated from the handlers' annotations and served at
//! `/openapi.json`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine_core::{
    ApprovalDecision, EventEnvelope, MultitaskPolicy, RunId, RunStatus, ThreadId, UserId,
};
use engine_factory::{RunRecord, RunStore, StoreError, ThreadCursor};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};

use crate::dispatch::{options, Launched, Origin, Start, Work};
use crate::metrics::GatewayMetrics;
use crate::protocol::{ErrorCode, ServerFrame};
use crate::session::{lock, UserSession};
use crate::Gateway;

/// Longest one read of the store may take before the API answers `503 store_unavailable`.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// An event stream with no new event for this long checks whether its run ended where the
/// stream cannot see it live (a dead node's `interrupted`), and then reads the run back.
const STREAM_RECHECK: Duration = Duration::from_secs(3);
/// The longest quiet spell between two such checks (the wait doubles while nothing happens).
const STREAM_RECHECK_MAX: Duration = Duration::from_secs(30);
/// Longest `DELETE` waits for the thread's cancelled runs to end.
const DELETE_WAIT: Duration = Duration::from_secs(10);
/// Events read per page when a stream catches up.
const CATCH_UP_PAGE: usize = 500;
/// The largest sequence number a client may name (the store keeps them as signed 64-bit).
const MAX_SEQ: u64 = i64::MAX as u64;
/// Pages read per catch-up at most (the stream reads the rest after sending these).
const CATCH_UP_PAGES: usize = 8;

/// The routes under `/v1` and `/openapi.json`.
pub(crate) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/threads", get(list_threads))
        .route(
            "/v1/threads/{thread_id}",
            get(get_thread).delete(delete_thread),
        )
        .route(
            "/v1/threads/{thread_id}/runs",
            get(thread_runs).post(start_run),
        )
        .route("/v1/runs/{run_id}", get(get_run))
        .route("/v1/runs/{run_id}/events", get(run_events))
        .route("/v1/runs/{run_id}/cancel", post(cancel_run))
        .route("/v1/runs/{run_id}/approvals/{call_id}", post(approve))
}

/// The API's OpenAPI 3.1 document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "engine-gateway",
        description = "Threads and runs of the authenticated user. Every route answers only the \
                       token's user: another user's thread or run is `404`, as one that does not exist.",
        version = "1"
    ),
    paths(
        list_threads,
        get_thread,
        delete_thread,
        thread_runs,
        start_run,
        get_run,
        run_events,
        cancel_run,
        approve
    ),
    components(schemas(
        ApiErrorBody,
        ApiErrorDetail,
        ThreadPage,
        ThreadView,
        ThreadDetail,
        MessageView,
        RunList,
        RunView,
        RunState,
        UsageView,
        StepView,
        EventPage,
        EventView,
        StreamData,
        SseMessage,
        GapView,
        StartRunBody,
        Multitask,
        ApprovalBody,
        Decision
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// Every error of the API.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiErrorBody {
    /// What went wrong.
    pub error: ApiErrorDetail,
}

/// An error's code and message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiErrorDetail {
    /// The gateway's error code (as in the socket protocol's `error` frames), e.g.
    /// `unknown_run`, `rate_limited`, `unauthorized`.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

/// A page of the caller's threads.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadPage {
    /// Most recently updated first.
    pub threads: Vec<ThreadView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One of the caller's threads.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadView {
    /// The thread's id.
    pub thread_id: String,
    /// Its first run's acceptance, microseconds since the Unix epoch.
    pub created_at_us: u64,
    /// Its last message or run, microseconds since the Unix epoch.
    pub updated_at_us: u64,
    /// Runs on it.
    pub run_count: u64,
    /// The start of its last message.
    pub preview: Option<String>,
}

/// A thread's messages.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadDetail {
    /// The thread's id.
    pub thread_id: String,
    /// Its last messages (at most `limit`), oldest first.
    pub messages: Vec<MessageView>,
}

/// A run's input (`user`) or answer (`assistant`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// `user` or `assistant`.
    #[schema(pattern = "^(user|assistant)$")]
    pub role: String,
    /// The text.
    pub content: String,
    /// The run it belongs to.
    pub run_id: String,
    /// Microseconds since the Unix epoch.
    pub created_at_us: u64,
}

/// A thread's runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Oldest first.
    pub runs: Vec<RunView>,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted and not ended (waiting for a slot or running).
    Running,
    /// Answered.
    Completed,
    /// The agent failed.
    Failed,
    /// It ran past its timeout.
    TimedOut,
    /// Cancelled.
    Cancelled,
    /// A guardrail ended it (its `guardrail_tripped` event says which and why).
    GuardrailTripped,
    /// Its process or node stopped while it ran.
    Interrupted,
}

impl RunState {
    fn of(status: Option<RunStatus>) -> Self {
        match status {
            None => Self::Running,
            Some(RunStatus::Completed) => Self::Completed,
            Some(RunStatus::TimedOut) => Self::TimedOut,
            Some(RunStatus::Cancelled) => Self::Cancelled,
            Some(RunStatus::GuardrailTripped) => Self::GuardrailTripped,
            Some(RunStatus::Interrupted) => Self::Interrupted,
            Some(_) => Self::Failed,
        }
    }
}

/// Model tokens a run reported.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageView {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// One step of a pipeline run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepView {
    /// The step's agent.
    pub agent: String,
    /// How it ended; absent if it never ran.
    pub status: Option<RunState>,
}

/// A run's record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    /// The run's id.
    pub run_id: String,
    /// Its thread.
    pub thread_id: String,
    /// The agent (or `pipeline`) that runs.
    pub agent: String,
    /// Where it is.
    pub status: RunState,
    /// The user's input.
    pub input: String,
    /// The answer, once `completed`.
    pub result: Option<String>,
    /// The error or reason, for any other end.
    pub error: Option<String>,
    /// Model tokens reported.
    pub usage: UsageView,
    /// Milliseconds it waited for a slot.
    pub queue_ms: u64,
    /// Milliseconds it ran.
    pub execution_ms: u64,
    /// The steps of a pipeline (empty otherwise).
    pub steps: Vec<StepView>,
    /// When it was accepted, microseconds since the Unix epoch.
    pub accepted_at_us: u64,
    /// When it ended.
    pub ended_at_us: Option<u64>,
}

impl RunView {
    /// The view of a stored record.
    pub(crate) fn from_record(r: &RunRecord) -> Self {
        Self {
            run_id: r.run_id.to_string(),
            thread_id: r.thread_id.to_string(),
            agent: r.agent_name.clone(),
            status: RunState::of(r.status),
            input: r.input.clone(),
            result: r.result.clone(),
            error: r.error.clone(),
            usage: UsageView {
                prompt_tokens: r.usage.prompt_tokens,
                completion_tokens: r.usage.completion_tokens,
            },
            queue_ms: r.queue_ms,
            execution_ms: r.execution_ms,
            steps: r
                .steps
                .iter()
                .map(|(agent, status)| StepView {
                    agent: agent.clone(),
                    status: status.map(|s| RunState::of(Some(s))),
                })
                .collect(),
            accepted_at_us: r.accepted_at_us,
            ended_at_us: r.ended_at_us,
        }
    }

    fn launched(l: &Launched) -> Self {
        Self {
            run_id: l.context.run_id().to_string(),
            thread_id: l.context.thread_id().to_string(),
            agent: l.agent_name.clone(),
            status: RunState::Running,
            input: l.input.clone(),
            result: None,
            error: None,
            usage: UsageView {
                prompt_tokens: 0,
                completion_tokens: 0,
            },
            queue_ms: 0,
            execution_ms: 0,
            steps: Vec::new(),
            accepted_at_us: l.accepted_at_us,
            ended_at_us: None,
        }
    }
}

/// A page of a run's stored events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// The run.
    pub run_id: String,
    /// In sequence order.
    pub events: Vec<EventView>,
    /// Stretches of sequence numbers after `after_seq` that were not stored.
    pub gaps: Vec<GapView>,
    /// Whether more stored events follow (ask again with `after_seq` = the last `seq`).
    pub more: bool,
}

/// One event of a run, as the socket's `event` frame carries it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// The caller.
    pub user_id: String,
    /// The run's thread.
    pub thread_id: String,
    /// The run.
    pub run_id: String,
    /// The agent that emitted it (a sub-agent's own request id for its events).
    pub request_id: String,
    /// 1, 2, 3.. within the run.
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// The event (`type`: `agent_started`, `answer_delta`, `agent_completed`, ..).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

impl EventView {
    fn of(e: &EventEnvelope) -> Self {
        Self {
            user_id: e.user_id.to_string(),
            thread_id: e.thread_id.to_string(),
            run_id: e.run_id.to_string(),
            request_id: e.request_id.to_string(),
            seq: e.seq,
            timestamp_us: e.timestamp_us,
            event: serde_json::to_value(&e.event).unwrap_or_default(),
        }
    }
}

/// One Server-Sent Event of a run's stream, as its fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct SseMessage {
    /// The event's `seq` (for a gap: the gap's last seq); a reconnect sends it back as
    /// `Last-Event-ID`.
    pub id: Option<String>,
    /// Absent for an event; `gap` for events that cannot be sent.
    pub event: Option<String>,
    /// JSON: a [`StreamData`] (an event of the run, or a gap's `from_seq` and `to_seq`).
    pub data: String,
}

/// The data of one Server-Sent Event of a run's stream: an event (`id:` its seq), or, for
/// `event: gap`, the seqs that cannot be sent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum StreamData {
    /// An event of the run.
    Event(EventView),
    /// Events `from_seq..=to_seq` not stored or no longer held (`event: gap`).
    Gap(GapView),
}

/// Sequence numbers `from_seq..=to_seq` not stored (or evicted).
#[derive(Debug, Serialize, ToSchema)]
pub struct GapView {
    /// The first.
    pub from_seq: u64,
    /// The last.
    pub to_seq: u64,
}

/// What to do when the thread already has a run in progress.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Multitask {
    /// Start after it (the default).
    Enqueue,
    /// Cancel it first.
    Interrupt,
    /// Refuse with `thread_busy`.
    Reject,
    /// Run beside it.
    Parallel,
}

/// A run to start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRunBody {
    /// The user's message.
    pub text: String,
    /// The served agent that answers (default: the gateway's default agent).
    #[serde(default)]
    pub agent: Option<String>,
    /// What to do if the thread has a run in progress.
    #[serde(default)]
    pub multitask: Option<Multitask>,
}

/// A decision on a tool call waiting for approval.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run the tool.
    Approve,
    /// Do not.
    Deny,
}

/// The body of an approval.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// `approve` or `deny`.
    pub decision: Decision,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest.as_str(),
            message,
        )
    }

    fn no_thread(thread: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownThread.as_str(),
            format!("no thread {thread} of yours"),
        )
    }

    fn no_run(run: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownRun.as_str(),
            format!("no run {run} of yours"),
        )
    }

    fn store(e: &StoreError) -> Self {
        tracing::warn!(error = %e, "API: the run store could not be read");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable.as_str(),
            "the run store cannot be read right now; retry",
        )
    }

    /// The answer for a socket error frame.
    fn from_frame(frame: ServerFrame) -> Self {
        let ServerFrame::Error { code, message } = frame else {
            return Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal.as_str(),
                "unexpected answer",
            );
        };
        let status = match code {
            ErrorCode::BadFrame | ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited | ErrorCode::TooManyRuns | ErrorCode::TooManyEngines => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::ThreadBusy => StatusCode::CONFLICT,
            ErrorCode::UnknownRun | ErrorCode::UnknownApproval | ErrorCode::UnknownThread => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::ShuttingDown
            | ErrorCode::ClusterUnavailable
            | ErrorCode::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, code.as_str(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            error: ApiErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn rejected(status: StatusCode, text: String) -> ApiError {
    let status = if status.is_client_error() {
        status
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, ErrorCode::BadRequest.as_str(), text)
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(v)| v)
        .map_err(|e| rejected(e.status(), e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v)
        .map_err(|e| rejected(e.status(), e.body_text()))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    b.map(|Json(v)| v)
        .map_err(|e| rejected(e.status(), e.body_text()))
}

// ---------------------------------------------------------------------------------------------
// The caller, the store

impl Gateway {
    /// The user of the request's bearer token (the same validation as the socket's).
    fn caller(&self, headers: &HeaderMap) -> ApiResult<UserId> {
        let unauthorized = |message: String| {
            GatewayMetrics::refused(&self.inner.metrics.limit_hits, "unauthorized");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized.as_str(),
                message,
            )
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                unauthorized("send `Authorization: Bearer <token>` (a JWT from your login)".into())
            })?;
        self.inner
            .keys
            .verify(token.trim())
            .map_err(|e| unauthorized(e.to_string()))
    }

    fn api_store(&self) -> ApiResult<&Arc<dyn RunStore>> {
        self.inner.factory.run_store().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::StoreUnavailable.as_str(),
                "this gateway keeps no run store (--database-url memory); threads and run records need one",
            )
        })
    }
}

/// `call` within [`STORE_TIMEOUT`], a store error or timeout as `503`.
async fn read<T>(call: impl std::future::Future<Output = Result<T, StoreError>>) -> ApiResult<T> {
    match tokio::time::timeout(STORE_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::store(&e)),
        Err(_) => Err(ApiError::store(&StoreError::Unavailable(format!(
            "no answer within {STORE_TIMEOUT:?}"
        )))),
    }
}

fn thread_id(raw: &str) -> ApiResult<ThreadId> {
    ThreadId::new(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn run_id(raw: &str) -> ApiResult<RunId> {
    RunId::new(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `raw` (a query parameter) as a number in `range`, or `default` when absent.
fn bounded(
    name: &str,
    raw: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> ApiResult<usize> {
    let v = raw.unwrap_or(default);
    if !range.contains(&v) {
        return Err(ApiError::bad_request(format!(
            "`{name}` must be between {} and {}",
            range.start(),
            range.end()
        )));
    }
    Ok(usize::try_from(v).unwrap_or(usize::MAX))
}

// ---------------------------------------------------------------------------------------------
// Threads

/// Query of `GET /v1/threads`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u64>,
    cursor: Option<String>,
}

/// The caller's threads, most recently updated first.
#[utoipa::path(
    get,
    path = "/v1/threads",
    tag = "threads",
    params(
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 100, description = "Threads per page (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")
    ),
    responses(
        (status = 200, description = "A page of threads", body = ThreadPage),
        (status = 400, description = "A bad parameter", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token", body = ApiErrorBody),
        (status = 503, description = "The run store cannot be read", body = ApiErrorBody)
    )
)]
async fn list_threads(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<ThreadPage>> {
    let user = gw.caller(&headers)?;
    let q = query(q)?;
    let limit = bounded("limit", q.limit, 20, 1..=100)?;
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let store = gw.api_store()?;
    let threads = read(store.threads(&user, limit, cursor.as_ref())).await?;
    let next_cursor = (threads.len() == limit)
        .then(|| {
            threads
                .last()
                .map(|t| encode_cursor(&ThreadCursor::after(t)))
        })
        .flatten();
    Ok(Json(ThreadPage {
        threads: threads
            .into_iter()
            .map(|t| ThreadView {
                thread_id: t.thread_id.to_string(),
                created_at_us: t.created_at_us,
                updated_at_us: t.updated_at_us,
                run_count: t.run_count,
                preview: t.preview,
            })
            .collect(),
        next_cursor,
    }))
}

/// The opaque `next_cursor` of a page ending at `cursor`: base64url of `<updated_at_us>:<id>`.
fn encode_cursor(cursor: &ThreadCursor) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{}", cursor.updated_at_us, cursor.thread_id))
}

fn decode_cursor(raw: &str) -> ApiResult<ThreadCursor> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("`cursor` is not a `next_cursor` of this API");
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let (updated, thread) = text.split_once(':').ok_or_else(bad)?;
    let updated = updated.parse::<u64>().map_err(|_| bad())?;
    let thread = ThreadId::new(thread).map_err(|_| bad())?;
    Ok(ThreadCursor::new(updated, thread))
}

/// Query of `GET /v1/threads/{thread_id}`.
#[derive(Debug, Deserialize)]
struct MessagesQuery {
    limit: Option<u64>,
}

/// The thread's last messages (each run's input and answer), oldest first.
#[utoipa::path(
    get,
    path = "/v1/threads/{thread_id}",
    tag = "threads",
    params(
        ("thread_id" = String, Path, min_length = 1, max_length = 256, description = "The thread: 1 to 256 bytes, no control or invisible characters, no surrounding spaces, not a placeholder such as `undefined`"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 500, description = "The last this many messages (default 50)")
    ),
    responses(
        (status = 200, description = "The thread's messages", body = ThreadDetail),
        (status = 400, description = "A bad parameter", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token", body = ApiErrorBody),
        (status = 404, description = "No such thread of the caller's", body = ApiErrorBody),
        (status = 503, description = "The run store cannot be read", body = ApiErrorBody)
    )
)]
async fn get_thread(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<MessagesQuery>, QueryRejection>,
) -> ApiResult<Json<ThreadDetail>> {
    let user = gw.caller(&headers)?;
    let raw = path(p)?;
    let thread = thread_id(&raw)?;
    let limit = bounded("limit", query(q)?.limit, 50, 1..=500)?;
    let store = gw.api_store()?;
    let messages = read(store.thread_messages(&user, &thread, limit)).await?;
    // Every stored thread has its first run's input: no message, no thread of this user.
    if messages.is_empty() {
        return Err(ApiError::no_thread(&raw));
    }
    Ok(Json(ThreadDetail {
        thread_id: thread.to_string(),
        messages: messages
            .into_iter()
            .map(|m| MessageView {
                role: m.role.as_str().to_owned(),
                content: m.content,
                run_id: m.run_id.to_string(),
                created_at_us: m.created_at_us,
            })
            .collect(),
    }))
}

/// The thread's runs, oldest first.
#[utoipa::path(
    get,
    path = "/v1/threads/{thread_id}/runs",
    tag = "threads",
    params(("thread_id" = String, Path, min_length = 1, max_length = 256, description = "The thread: 1 to 256 bytes, no control or invisible characters, no surrounding spaces, not a placeholder such as `undefined`")),
    responses(
        (status = 200, description = "The thread's runs", body = RunList),
        (status = 400, description = "A bad parameter", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token", body = ApiErrorBody),
        (status = 404, description = "No such thread of the caller's", body = ApiErrorBody),
        (status = 503, description = "The run store cannot be read", body = ApiErrorBody)
    )
)]
async fn thread_runs(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RunList>> {
    let user = gw.caller(&headers)?;
    let raw = path(p)?;
    let thread = thread_id(&raw)?;
    let store = gw.api_store()?;
    let runs = read(store.thread_runs(&user, &thread)).await?;
    if runs.is_empty() {
        return Err(ApiError::no_thread(&raw));
    }
    Ok(Json(RunList {
        runs: runs.iter().map(RunView::from_record).collect(),
    }))
}

/// Deletes the thread: its messages, runs, events and approvals. A run still going on it is
/// cancelled and waited for (up to 10 s) first.
#[utoipa::path(
    delete,
    path = "/v1/threads/{thread_id}",
    tag = "threads",
    params(("thread_id" = String, Path, min_length = 1, max_length = 256, description = "The thread: 1 to 256 bytes, no control or invisible characters, no surrounding spaces, not a placeholder such as `undefined`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad parameter", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token", body = ApiErrorBody),
        (status = 404, description = "No such thread of the caller's", body = ApiErrorBody),
        (status = 409, description = "A run of the thread did not end in time; retry", body = ApiErrorBody),
        (status = 503, description = "The run store cannot be reached", body = ApiErrorBody)
    )
)]
async fn delete_thread(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let user = gw.caller(&headers)?;
    let raw = path(p)?;
    let thread = thread_id(&raw)?;
    let store = gw.api_store()?;
    // Every run accepted so far is in the store before its runs are read (a run accepted a
    // moment ago is cancelled too, not left to write into a deleted thread).
    read(async {
        store.flush().await;
        Ok(())
    })
    .await?;
    let runs = read(store.thread_runs(&user, &thread)).await?;
    if runs.is_empty() {
        return Err(ApiError::no_thread(&raw));
    }
    let running: Vec<RunId> = runs
        .iter()
        .filter(|r| r.status.is_none())
        .map(|r| r.run_id.clone())
        .collect();
    if !running.is_empty() {
        let session = gw.session(&user);
        for run in &running {
            // A run that ended meanwhile is `unknown_run` here: nothing to cancel.
            let _ = gw.cancel(&session, run).await;
        }
        let deadline = tokio::time::Instant::now() + DELETE_WAIT;
        for run in &running {
            loop {
                let ended = read(store.run(&user, run))
                    .await?
                    .is_none_or(|r| r.status.is_some());
                if ended {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        ErrorCode::ThreadBusy.as_str(),
                        format!("run {run} of this thread did not end within {DELETE_WAIT:?} of its cancel; retry the delete"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let deleted = tokio::time::timeout(DELETE_WAIT, store.delete_thread(&user, &thread))
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "no answer within {DELETE_WAIT:?}"
            )))
        })
        .map_err(|e| ApiError::store(&e))?;
    if !deleted {
        return Err(ApiError::no_thread(&raw));
    }
    // This node's replay buffer forgets the runs too (a resume or stream of them is `404`).
    {
        let session = gw.session(&user);
        let mut replay = lock(&session.replay);
        for r in &runs {
            replay.forget(&r.run_id);
        }
    }
    tracing::info!(user_id = %user, thread_id = %thread, "thread deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Runs

/// Query of `POST /v1/threads/{thread_id}/runs`.
#[derive(Debug, Deserialize)]
struct StartQuery {
    #[serde(default)]
    stream: bool,
}

/// Starts a run on the thread (a new thread if it has none), with the socket's admission,
/// limits and multitask policy; its events reach the caller's sockets as any run's.
#[utoipa::path(
    post,
    path = "/v1/threads/{thread_id}/runs",
    tag = "runs",
    params(
        ("thread_id" = String, Path, min_length = 1, max_length = 256, description = "The thread (created by its first run): 1 to 256 bytes, no control or invisible characters, no surrounding spaces, not a placeholder such as `undefined`"),
        ("stream" = Option<bool>, Query, description = "Answer with the run's Server-Sent Events instead of its record")
    ),
    request_body = StartRunBody,
    responses(
        (status = 202, description = "Accepted: the run's record (`running`)", body = RunView),
        (status = 200, description = "With `stream=true`: the run's events until its terminal event",
         content_type = "text/event-stream", body = SseMessage),
        (status = 400, description = "A bad parameter, body or agent", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token", body = ApiErrorBody),
        (status = 409, description = "The thread is busy and `multitask` is `reject`", body = ApiErrorBody),
        (status = 413, description = "The text is larger than the gateway's frame limit", body = ApiErrorBody),
        (status = 415, description = "The body is not JSON", body = ApiErrorBody),
        (status = 422, description = "The body does not have the expected fields", body = ApiErrorBody),
        (status = 429, description = "A per-user limit (messages per minute, runs, engines)", body = ApiErrorBody),
        (status = 503, description = "Shutting down, or the cluster is unreachable", body = ApiErrorBody)
    )
)]
async fn start_run(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<StartQuery>, QueryRejection>,
    b: Result<Json<StartRunBody>, JsonRejection>,
) -> ApiResult<Response> {
    let user = gw.caller(&headers)?;
    let raw = path(p)?;
    let thread = thread_id(&raw)?;
    let stream = query(q)?.stream;
    let b = body(b)?;
    let cfg = &gw.inner.config;
    if gw
        .inner
        .shutting_down
        .load(std::sync::atomic::Ordering::Acquire)
    {
        return Err(ApiError::from_frame(ServerFrame::error(
            ErrorCode::ShuttingDown,
            "the server is shutting down; retry later",
        )));
    }
    if b.text.len() > cfg.max_frame_bytes {
        return Err(ApiError::from_frame(ServerFrame::error(
            ErrorCode::FrameTooLarge,
            format!(
                "text of {} bytes exceeds the limit of {} bytes",
                b.text.len(),
                cfg.max_frame_bytes
            ),
        )));
    }
    let multitask = b.multitask.map(|m| match m {
        Multitask::Enqueue => MultitaskPolicy::Enqueue,
        Multitask::Interrupt => MultitaskPolicy::Interrupt,
        Multitask::Reject => MultitaskPolicy::Reject,
        Multitask::Parallel => MultitaskPolicy::Parallel,
    });
    let agent = b.agent.unwrap_or_else(|| cfg.default_agent.clone());
    let session = gw.session(&user);
    let start = Start {
        thread_id: thread.to_string(),
        text: b.text,
        client_request_id: None,
        options: options(multitask),
        work: Work::Agent(agent),
    };
    if !stream {
        let launched = gw
            .launch(&session, start, Origin::Http)
            .await
            .map_err(ApiError::from_frame)?;
        return Ok((StatusCode::ACCEPTED, Json(RunView::launched(&launched))).into_response());
    }
    // The stream is the run's from its first event: the replay buffer holds it from the start.
    let launched = gw
        .launch(&session, start, Origin::Http)
        .await
        .map_err(ApiError::from_frame)?;
    let run = launched.context.run_id().clone();
    Ok(event_stream(gw.clone(), session, run, 0, Source::Live)
        .await?
        .into_response())
}

/// The run's record.
#[utoipa::path(
    get,
    path = "/v1/runs/{run_id}",
    tag = "runs",
    params(("run_id" = String, Path, pattern = "^run_[0-9a-f]{32}$", description = "The run (the id the gateway gave it)")),
    responses(
        (status = 200, description = "The run's record", body = RunView),
        (status = 400, description = "A bad parameter", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token", body = ApiErrorBody),
        (status = 404, description = "No such run of the caller's", body = ApiErrorBody),
        (status = 503, description = "The run store cannot be read", body = ApiErrorBody)
    )
)]
async fn get_run(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RunView>> {
    let user = gw.caller(&headers)?;
    let raw = path(p)?;
    let run = run_id(&raw)?;
    let store = gw.api_store()?;
    match read(store.run(&user, &run)).await? {
        Some(record) => Ok(Json(RunView::from_record(&record))),
        None => Err(ApiError::no_run(&raw)),
    }
}

/// Query of `GET /v1/runs/{run_id}/events`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    after_seq: Option<u64>,
    limit: Option<u64>,
}

/// The run's events after `after_seq`: a page of stored events as JSON, or with
/// `Accept: text/event-stream` a live stream of Server-Sent Events (`id:` is the event's
/// `seq`; `event: gap` names events that cannot be sent) that ends after the run's terminal
/// event and resumes after the `Last-Event-ID` header's seq, on any node, after a restart.
#[utoipa::path(
    get,
    path = "/v1/runs/{run_id}/events",
    tag = "runs",
    params(
        ("run_id" = String, Path, pattern = "^run_[0-9a-f]{32}$", description = "The run (the id the gateway gave it)"),
        ("after_seq" = Option<u64>, Query, maximum = 9_223_372_036_854_775_807_u64, description = "Events after this seq (default 0)"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Events per page (default 100; JSON only)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Server-Sent Events: resume after this seq (takes precedence over `after_seq`)")
    ),
    responses(
        (status = 200, description = "The run's events",
         content(
            (EventPage = "application/json"),
            (SseMessage = "text/event-stream")
         )),
        (status = 400, description = "A bad parameter", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token", body = ApiErrorBody),
        (status = 404, description = "No such run of the caller's", body = ApiErrorBody),
        (status = 429, description = "More reads than `resumes_per_minute`", body = ApiErrorBody),
        (status = 503, description = "The run store cannot be read", body = ApiErrorBody)
    )
)]
async fn run_events(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let user = gw.caller(&headers)?;
    let raw = path(p)?;
    let run = run_id(&raw)?;
    let q = query(q)?;
    let limit = bounded("limit", q.limit, 100, 1..=1000)?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("Last-Event-ID must be a seq (a number)"))
        })
        .transpose()?;
    let after_seq = last_event_id.or(q.after_seq).unwrap_or(0);
    if after_seq > MAX_SEQ {
        return Err(ApiError::bad_request(format!(
            "`after_seq` and Last-Event-ID are at most {MAX_SEQ}"
        )));
    }
    let session = gw.session(&user);
    let cfg = &gw.inner.config;
    if !session.allow_resume(cfg.resumes_per_minute) {
        GatewayMetrics::refused(
            &gw.inner.metrics.limit_hits,
            ErrorCode::RateLimited.as_str(),
        );
        return Err(ApiError::from_frame(ServerFrame::error(
            ErrorCode::RateLimited,
            format!(
                "at most {} event reads per minute; wait and retry",
                cfg.resumes_per_minute
            ),
        )));
    }
    if sse {
        return Ok(
            event_stream(gw.clone(), session, run, after_seq, Source::Any)
                .await?
                .into_response(),
        );
    }
    let store = gw.api_store()?;
    let Some(page) = read(store.events_after(&user, &run, after_seq, limit)).await? else {
        return Err(ApiError::no_run(&raw));
    };
    Ok(Json(EventPage {
        run_id: run.to_string(),
        events: page.events.iter().map(EventView::of).collect(),
        gaps: page
            .gaps
            .iter()
            .map(|(from_seq, to_seq)| GapView {
                from_seq: *from_seq,
                to_seq: *to_seq,
            })
            .collect(),
        more: page.more,
    })
    .into_response())
}

/// Cancels the run (wherever it runs, in cluster mode).
#[utoipa::path(
    post,
    path = "/v1/runs/{run_id}/cancel",
    tag = "runs",
    params(("run_id" = String, Path, pattern = "^run_[0-9a-f]{32}$", description = "The run (the id the gateway gave it)")),
    responses(
        (status = 202, description = "Cancel requested: the run ends `cancelled` (its terminal event follows)"),
        (status = 400, description = "A bad parameter", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token", body = ApiErrorBody),
        (status = 404, description = "No run of the caller's in progress with this id", body = ApiErrorBody),
        (status = 503, description = "The cluster cannot reach the run's node", body = ApiErrorBody)
    )
)]
async fn cancel_run(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let user = gw.caller(&headers)?;
    let run = run_id(&path(p)?)?;
    let session = gw.session(&user);
    gw.cancel(&session, &run)
        .await
        .map_err(ApiError::from_frame)?;
    Ok(StatusCode::ACCEPTED)
}

/// Decides a tool call of the run that waits for approval.
#[utoipa::path(
    post,
    path = "/v1/runs/{run_id}/approvals/{call_id}",
    tag = "runs",
    params(
        ("run_id" = String, Path, pattern = "^run_[0-9a-f]{32}$", description = "The run (the id the gateway gave it)"),
        ("call_id" = u32, Path, description = "The tool call (`call_id` of its `approval_requested` event)")
    ),
    request_body = ApprovalBody,
    responses(
        (status = 204, description = "Decided"),
        (status = 400, description = "A bad parameter", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token", body = ApiErrorBody),
        (status = 404, description = "No such run, or no such call waiting", body = ApiErrorBody),
        (status = 413, description = "The body is larger than the server takes", body = ApiErrorBody),
        (status = 415, description = "The body is not JSON", body = ApiErrorBody),
        (status = 422, description = "The body does not have the expected fields", body = ApiErrorBody),
        (status = 503, description = "The cluster cannot reach the run's node", body = ApiErrorBody)
    )
)]
async fn approve(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    p: Result<Path<(String, u32)>, PathRejection>,
    b: Result<Json<ApprovalBody>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let user = gw.caller(&headers)?;
    let (raw, call_id) = path(p)?;
    let run = run_id(&raw)?;
    let decision = match body(b)?.decision {
        Decision::Approve => ApprovalDecision::Approve,
        Decision::Deny => ApprovalDecision::Deny,
    };
    let session = gw.session(&user);
    gw.approve(&session, &run, call_id, decision)
        .await
        .map_err(ApiError::from_frame)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events

/// What a catch-up read found.
struct CaughtUp {
    /// Events and gaps after the seq asked for, in order.
    frames: Vec<ServerFrame>,
    /// Whether the run has ended (its terminal event is among `frames` or before them).
    ended: bool,
    /// Whether the store holds more than this read took (read again after sending these).
    more: bool,
}

/// Where a stream's first read looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Every source (a run of any node or process).
    Any,
    /// A run this node just started: its replay buffer has it from its first event.
    Live,
}

impl Gateway {
    /// `user`'s run `run` after `after_seq`, from every source: the store (complete up to what
    /// it committed), then this node's replay buffer or the cluster's stream (what is newer).
    /// `None` when no source knows the run.
    async fn catch_up(
        &self,
        session: &UserSession,
        run: &RunId,
        after_seq: u64,
        source: Source,
    ) -> ApiResult<Option<CaughtUp>> {
        let mut last = after_seq;
        let mut frames = Vec::new();
        let mut known = false;
        let mut ended = false;
        // The store had more than this read took: the stream reads again once it sent them.
        let mut more = false;
        let store = match source {
            Source::Any => self.inner.factory.run_store(),
            Source::Live => None,
        };
        if let Some(store) = store {
            if let Some(record) = read(store.run(&session.user, run)).await? {
                known = true;
                ended = record.status.is_some();
                for page_number in 0..CATCH_UP_PAGES {
                    let Some(page) =
                        read(store.events_after(&session.user, run, last, CATCH_UP_PAGE)).await?
                    else {
                        break;
                    };
                    if page.more && page_number + 1 == CATCH_UP_PAGES {
                        more = true;
                    }
                    let mut gaps = page.gaps.iter().peekable();
                    for e in page.events {
                        while let Some((from_seq, to_seq)) = gaps.next_if(|(_, to)| *to < e.seq) {
                            frames.push(ServerFrame::Gap {
                                run_id: run.clone(),
                                from_seq: *from_seq,
                                to_seq: *to_seq,
                            });
                        }
                        last = e.seq;
                        frames.push(ServerFrame::Event {
                            envelope: Arc::new(e),
                        });
                    }
                    if !page.more {
                        break;
                    }
                }
            }
        }
        // A run that ended is whole in the store; otherwise newer events are in memory or in
        // the cluster's stream. A run this node just started is in its replay buffer (it was
        // registered there before it started), also in cluster mode.
        // When the store holds more than this read took, the rest comes with the next read
        // (not from memory, ahead of it).
        let newer = match source {
            _ if more => Err(()),
            Source::Live => lock(&session.replay).resume(run, last).ok_or(()),
            Source::Any if !ended => self.resume(session, run, last).await.map_err(|_| ()),
            Source::Any => Err(()),
        };
        if let Ok(newer) = newer {
            known = true;
            for f in newer {
                match f {
                    ServerFrame::Event { envelope } if envelope.seq > last => {
                        last = envelope.seq;
                        frames.push(ServerFrame::Event { envelope });
                    }
                    ServerFrame::Gap {
                        run_id,
                        from_seq,
                        to_seq,
                    } if to_seq > last => {
                        frames.push(ServerFrame::Gap {
                            run_id,
                            from_seq: from_seq.max(last.saturating_add(1)),
                            to_seq,
                        });
                        last = to_seq;
                    }
                    _ => {}
                }
            }
        }
        if !known {
            return Ok(None);
        }
        let terminal_seen = frames.iter().any(|f| match f {
            ServerFrame::Event { envelope } => envelope.event.is_terminal(),
            _ => false,
        });
        let replay_ended = lock(&session.replay)
            .terminal_seq(run)
            .is_some_and(|t| t <= last);
        Ok(Some(CaughtUp {
            frames,
            ended: !more && (ended || terminal_seen || replay_ended),
            more,
        }))
    }
}

/// The run's events after `after_seq` as Server-Sent Events, live until its terminal event.
/// `404` before the stream starts when the caller has no such run.
async fn event_stream(
    gw: Gateway,
    session: Arc<UserSession>,
    run: RunId,
    after_seq: u64,
    source: Source,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>> {
    session.wait_live().await;
    // Watching before the first read: an event between the read and the watch is in one or
    // the other (duplicates are dropped by seq).
    let watch = session.watch(&run);
    let Some(first) = gw.catch_up(&session, &run, after_seq, source).await? else {
        return Err(ApiError::no_run(run.as_str()));
    };
    let mut streaming = Streaming {
        gw,
        session,
        run,
        watch,
        last: after_seq,
        queue: std::collections::VecDeque::new(),
        done: false,
        read_again: false,
        quiet: STREAM_RECHECK,
    };
    streaming.enqueue(first);
    // Polled by the response body itself (no task between the pump and the socket); dropped,
    // with its watch, when the client goes away.
    let stream = futures_util::stream::unfold(streaming, |mut s| async move {
        s.next().await.map(|e| (Ok(e), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One run's event stream: what is read back and not yet sent, then the live events.
struct Streaming {
    gw: Gateway,
    session: Arc<UserSession>,
    run: RunId,
    watch: crate::session::RunWatch,
    /// The last seq sent (or announced in a gap).
    last: u64,
    queue: std::collections::VecDeque<SseEvent>,
    /// The terminal event is queued (or the run cannot be read any more): end after the queue.
    done: bool,
    /// The last read stopped at its page limit: read again once the queue is sent.
    read_again: bool,
    /// How long a quiet spell lasts before the run's end is checked (doubling to 30 s).
    quiet: Duration,
}

impl Streaming {
    fn enqueue(&mut self, caught: CaughtUp) {
        for frame in &caught.frames {
            if let Some(event) = sse_of(frame, &mut self.last) {
                self.queue.push_back(event);
            }
        }
        self.done |= caught.ended;
        self.read_again = caught.more;
    }

    /// Reads the run back from its sources after `last`.
    async fn read_back(&mut self) {
        match self
            .gw
            .catch_up(&self.session, &self.run, self.last, Source::Any)
            .await
        {
            Ok(Some(caught)) => self.enqueue(caught),
            Ok(None) => self.done = true,
            Err(e) => {
                tracing::warn!(run_id = %self.run, error = e.message, "event stream: cannot read the run back; ending the stream (reconnect with Last-Event-ID)");
                self.done = true;
            }
        }
    }

    /// After a quiet spell: whether the run has ended where this stream cannot see it live
    /// (a dead node's `interrupted`, a terminal event this stream missed). One cheap read: the
    /// replay buffer, else the store's record.
    async fn ended_elsewhere(&self) -> bool {
        if lock(&self.session.replay).terminal_seq(&self.run).is_some() {
            return true;
        }
        match self.gw.inner.factory.run_store() {
            Some(store) => matches!(
                tokio::time::timeout(STORE_TIMEOUT, store.run(&self.session.user, &self.run)).await,
                Ok(Ok(Some(record))) if record.status.is_some()
            ),
            None => false,
        }
    }

    /// The next event to send; `None` once the terminal event was sent.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            if self.read_again {
                self.read_back().await;
                continue;
            }
            let next = tokio::select! {
                e = self.watch.rx.recv() => e,
                () = tokio::time::sleep(self.quiet) => None,
            };
            match next {
                Some(e) if e.seq <= self.last => {}
                Some(e) if e.seq == self.last.saturating_add(1) => {
                    self.quiet = STREAM_RECHECK;
                    self.done = e.event.is_terminal();
                    let frame = ServerFrame::Event { envelope: e };
                    if let Some(event) = sse_of(&frame, &mut self.last) {
                        self.queue.push_back(event);
                    }
                }
                // A jump: events this stream missed; read them back.
                Some(_) => self.read_back().await,
                // A quiet spell: one cheap look for an end this stream cannot see live.
                None => {
                    if self.ended_elsewhere().await {
                        self.read_back().await;
                    } else {
                        self.quiet = (self.quiet * 2).min(STREAM_RECHECK_MAX);
                    }
                }
            }
        }
    }
}

/// The Server-Sent Event of `frame` (an event with `id:` = its seq, or a `gap`), moving
/// `last` past it; `None` for what was already sent.
fn sse_of(frame: &ServerFrame, last: &mut u64) -> Option<SseEvent> {
    match frame {
        ServerFrame::Event { envelope } if envelope.seq > *last => {
            *last = envelope.seq;
            // The envelope's own serialization is exactly an `EventView`.
            let data = serde_json::to_string(&**envelope).ok()?;
            Some(SseEvent::default().id(envelope.seq.to_string()).data(data))
        }
        ServerFrame::Gap {
            from_seq, to_seq, ..
        } if *to_seq > *last => {
            *last = *to_seq;
            let data = serde_json::json!({ "from_seq": from_seq, "to_seq": to_seq }).to_string();
            // The gap's last seq as the id: a reconnect resumes after it.
            Some(
                SseEvent::default()
                    .event("gap")
                    .id(to_seq.to_string())
                    .data(data),
            )
        }
        _ => None,
    }
}
