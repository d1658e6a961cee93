//! What a running agent sees: the [`RunContext`] (thinking, tool calls, cancellation) and the
//! per-run [`ToolDispatcher`]. Also the run's event emitter, which stamps every event with the
//! run's own ids and the next sequence number.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

use futures_util::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentRegistry, ToolContext};
use crate::context::UserExecutionContext;
use crate::error::{panic_message, ToolError};
use crate::event::{
    sanitize_arguments, sanitize_result, truncate_str, AgentEvent, EventEnvelope, ToolStatus,
    MAX_RESULT_CHARS,
};
use crate::sink::EventSink;

/// Emits the events of one run, in order, to the engine's user-bound sink.
pub(crate) struct Emitter {
    sink: Arc<dyn EventSink>,
    context: UserExecutionContext,
    delivery_timeout: Duration,
    seq: u64,
    last_timestamp_us: u64,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
}

impl Emitter {
    pub(crate) fn new(
        sink: Arc<dyn EventSink>,
        context: UserExecutionContext,
        delivery_timeout: Duration,
    ) -> Self {
        Self {
            sink,
            context,
            delivery_timeout,
            seq: 0,
            last_timestamp_us: 0,
            delivered: 0,
            dropped: 0,
        }
    }

    /// Sends one event. Never fails: an error, panic or timeout in the sink counts the event as
    /// dropped, and the sequence number is consumed so the consumer sees the gap.
    pub(crate) async fn emit(&mut self, event: AgentEvent) {
        self.seq += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last_timestamp_us = self.last_timestamp_us.max(now);
        let envelope = Arc::new(EventEnvelope {
            user_id: self.context.user_id().clone(),
            thread_id: self.context.thread_id().clone(),
            run_id: self.context.run_id().clone(),
            seq: self.seq,
            timestamp_us: self.last_timestamp_us,
            event,
        });
        // Counted as dropped until the sink confirms, so a delivery abandoned half-way (the run
        // future dropped on cancellation) is never counted as delivered.
        self.dropped += 1;
        let sink = &self.sink;
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| sink.deliver(envelope)));
        let outcome = match started {
            Ok(delivery) => {
                within(
                    self.delivery_timeout,
                    AssertUnwindSafe(delivery).catch_unwind(),
                )
                .await
            }
            Err(panic) => Ok(Err(panic)),
        };
        match outcome {
            Ok(Ok(Ok(()))) => {
                self.dropped -= 1;
                self.delivered += 1;
            }
            Ok(Ok(Err(error))) => {
                tracing::debug!(seq = self.seq, %error, "event dropped by sink");
            }
            Ok(Err(panic)) => {
                tracing::warn!(seq = self.seq, panic = %panic_message(&*panic), "event sink panicked; event dropped");
            }
            Err(_) => {
                tracing::debug!(seq = self.seq, "event delivery timed out; event dropped");
            }
        }
    }
}

/// Like `tokio::time::timeout`, but polls `fut` once first and only arms the timer if it is not
/// ready: most deliveries complete at once, and reading the clock for each would cost more
/// than the delivery.
pub(crate) async fn within<F: std::future::Future>(
    limit: Duration,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(out) => Ok(out),
        std::task::Poll::Pending => tokio::time::timeout(limit, fut).await,
    }
}

/// A tool call that has emitted `tool_executing` but not yet `tool_completed`.
struct OpenCall {
    call_id: u32,
    tool_name: Arc<str>,
    started: Instant,
}

/// The per-run tool dispatcher: resolves tool names, applies the permission policy, the tool
/// timeout and cancellation, contains panics, and emits the `tool_executing` /
/// `tool_completed` pair of every call. One exists per run and is dropped with it.
pub struct ToolDispatcher {
    registry: AgentRegistry,
    context: UserExecutionContext,
    cancel: CancellationToken,
    tool_timeout: Duration,
    next_call_id: u32,
    open: Option<OpenCall>,
    calls: u32,
}

impl std::fmt::Debug for ToolDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolDispatcher")
            .field("run_id", self.context.run_id())
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl ToolDispatcher {
    /// Names of the tools this run may see (registered tools, sorted; the permission policy is
    /// applied per call).
    pub fn tool_names(&self) -> Vec<&str> {
        self.registry.tool_names().collect()
    }
    /// Whether a tool of this name is registered.
    pub fn has_tool(&self, name: &str) -> bool {
        self.registry.tool(name).is_some()
    }
    /// Whether the run's user may call this tool under the permission policy.
    pub fn is_allowed(&self, name: &str) -> bool {
        self.registry.is_allowed(self.context.user_id(), name)
    }
    /// Tool calls made so far in this run.
    pub fn calls_made(&self) -> u32 {
        self.calls
    }

    async fn dispatch(
        &mut self,
        emitter: &mut Emitter,
        name: &str,
        args: Value,
    ) -> Result<Value, ToolError> {
        self.next_call_id += 1;
        self.calls += 1;
        let call_id = self.next_call_id;
        // The registry's shared name when the tool exists; unknown names are copied once.
        let entry = self.registry.tool_entry(name);
        let tool_name = entry
            .as_ref()
            .map_or_else(|| Arc::from(name), |(n, _)| Arc::clone(n));
        self.open = Some(OpenCall {
            call_id,
            tool_name: Arc::clone(&tool_name),
            started: Instant::now(),
        });
        emitter
            .emit(AgentEvent::ToolExecuting {
                tool_name,
                call_id,
                arguments: sanitize_arguments(&args),
            })
            .await;
        let outcome = self.invoke(name, entry.map(|(_, t)| t), args).await;
        let (status, result, error) = match &outcome {
            Ok(v) => (ToolStatus::Success, Some(sanitize_result(v)), None),
            Err(e) => {
                let status = match e {
                    ToolError::PermissionDenied { .. } => ToolStatus::PermissionDenied,
                    ToolError::Timeout { .. } => ToolStatus::Timeout,
                    ToolError::Cancelled { .. } => ToolStatus::Cancelled,
                    _ => ToolStatus::Error,
                };
                (
                    status,
                    None,
                    Some(truncate_str(&e.to_string(), MAX_RESULT_CHARS)),
                )
            }
        };
        self.complete_open(emitter, status, result, error).await;
        outcome
    }

    async fn invoke(
        &self,
        name: &str,
        tool: Option<Arc<dyn crate::Tool>>,
        args: Value,
    ) -> Result<Value, ToolError> {
        let Some(tool) = tool else {
            return Err(ToolError::NotFound { name: name.into() });
        };
        if !self.is_allowed(name) {
            return Err(ToolError::PermissionDenied {
                name: name.into(),
                user: self.context.user_id().clone(),
            });
        }
        if self.cancel.is_cancelled() {
            return Err(ToolError::Cancelled { name: name.into() });
        }
        let tool_ctx = ToolContext::new(self.context.clone(), self.cancel.clone());
        let call = AssertUnwindSafe(tool.call(args, &tool_ctx)).catch_unwind();
        let call = within(self.tool_timeout, call);
        // Biased toward the tool: a tool that watches its ToolContext sees the cancellation and
        // may return before the call is abandoned.
        let result = tokio::select! {
            biased;
            r = call => r,
            () = self.cancel.cancelled() => return Err(ToolError::Cancelled { name: name.into() }),
        };
        match result {
            Err(_) => Err(ToolError::Timeout {
                name: name.into(),
                timeout_ms: u64::try_from(self.tool_timeout.as_millis()).unwrap_or(u64::MAX),
            }),
            Ok(Err(panic)) => Err(ToolError::Panicked {
                name: name.into(),
                message: panic_message(&*panic),
            }),
            Ok(Ok(Err(e))) if self.cancel.is_cancelled() => {
                tracing::debug!(tool = name, error = %e, "tool returned after cancellation");
                Err(ToolError::Cancelled { name: name.into() })
            }
            Ok(Ok(Err(e))) => Err(ToolError::Failed {
                name: name.into(),
                message: e.to_string(),
            }),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }

    async fn complete_open(
        &mut self,
        emitter: &mut Emitter,
        status: ToolStatus,
        result: Option<Value>,
        error: Option<String>,
    ) {
        if let Some(open) = self.open.take() {
            emitter
                .emit(AgentEvent::ToolCompleted {
                    tool_name: open.tool_name,
                    call_id: open.call_id,
                    status,
                    result,
                    error,
                    duration_ms: millis(open.started.elapsed()),
                })
                .await;
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What an [`Agent`](crate::Agent) sees of its run: its context, a way to report thinking, the
/// tools, and cancellation. Owned by the run; events emitted through it carry this run's ids and
/// reach only this run's user.
pub struct RunContext {
    agent_name: Arc<str>,
    emitter: Emitter,
    tools: ToolDispatcher,
    cancel: CancellationToken,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("agent_name", &self.agent_name)
            .field("context", &self.tools.context)
            .finish_non_exhaustive()
    }
}

impl RunContext {
    pub(crate) fn new(
        agent_name: Arc<str>,
        context: UserExecutionContext,
        registry: AgentRegistry,
        sink: Arc<dyn EventSink>,
        cancel: CancellationToken,
        tool_timeout: Duration,
        delivery_timeout: Duration,
    ) -> Self {
        Self {
            agent_name,
            emitter: Emitter::new(sink, context.clone(), delivery_timeout),
            tools: ToolDispatcher {
                registry,
                context,
                cancel: cancel.clone(),
                tool_timeout,
                next_call_id: 0,
                open: None,
                calls: 0,
            },
            cancel,
        }
    }

    /// The run's context (user, thread, run and request ids, metadata).
    pub fn context(&self) -> &UserExecutionContext {
        &self.tools.context
    }
    /// The name the agent was started under.
    pub fn agent_name(&self) -> &str {
        &self.agent_name
    }
    /// The run's tool dispatcher (to list or check tools).
    pub fn tools(&self) -> &ToolDispatcher {
        &self.tools
    }

    /// Reports progress as an `agent_thinking` event (a `&'static str` is not copied).
    pub async fn think(&mut self, reasoning: impl Into<std::borrow::Cow<'static, str>>) {
        self.emitter
            .emit(AgentEvent::AgentThinking {
                reasoning: reasoning.into(),
            })
            .await;
    }

    /// Calls a tool by name with JSON arguments. Emits `tool_executing` then `tool_completed`
    /// (with the status of the outcome) whatever happens.
    ///
    /// # Errors
    /// [`ToolError`] when the tool is unknown, denied, times out, fails, panics or the run is
    /// cancelled.
    pub async fn call_tool(&mut self, name: &str, args: Value) -> Result<Value, ToolError> {
        self.tools.dispatch(&mut self.emitter, name, args).await
    }

    /// Whether the run was cancelled (by id, by shutdown, or by the engine closing).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    /// Resolves when the run is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    pub(crate) fn emitter(&mut self) -> &mut Emitter {
        &mut self.emitter
    }

    /// Closes a tool call left open when the agent future was abandoned (cancellation or run
    /// timeout), so every `tool_executing` still gets its `tool_completed`.
    pub(crate) async fn close_open_call(&mut self, status: ToolStatus, error: &str) {
        self.tools
            .complete_open(&mut self.emitter, status, None, Some(error.to_owned()))
            .await;
    }
}
