//! Typed errors. Every message names what was wrong and, where it helps, what to do instead.

use crate::ids::{IdError, RunId, ThreadId, UserId};

/// A [`UserExecutionContext`](crate::UserExecutionContext) could not be built or derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// One of the ids is invalid.
    #[error("invalid context: {0}")]
    InvalidId(#[from] IdError),
    /// A required id was never set on the builder.
    #[error("invalid context: {field} is required")]
    Missing {
        /// The missing field.
        field: &'static str,
    },
    /// A metadata map used a key reserved for the context's own fields.
    #[error("invalid context: metadata key `{key}` in {map} is reserved for the context itself; rename it")]
    ReservedMetadataKey {
        /// Which map (`agent_context` or `audit_metadata`).
        map: &'static str,
        /// The offending key.
        key: String,
    },
    /// `child()` was called on a context already at the maximum operation depth.
    #[error("operation depth limit reached: a context may nest at most {max} levels (operation `{operation}`)")]
    MaxDepthExceeded {
        /// The maximum depth.
        max: u32,
        /// The operation that asked for the child.
        operation: String,
    },
}

/// A configuration value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field} = {value} is outside the allowed range {range}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The field name, as on the builder.
    pub field: &'static str,
    /// The rejected value, rendered.
    pub value: String,
    /// The allowed range, rendered (for example `1..=10`).
    pub range: String,
}

/// An engine refused a request. Failures *inside* a run are not errors: they end the run with a
/// [`RunStatus`](crate::RunStatus) and a terminal event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[doc(alias("UserExecutionEngineError"))]
pub enum EngineError {
    /// The engine was shut down, closed or reaped; obtain a new one from the factory.
    #[error("engine for user {user} is inactive (shut down or closed); create a new engine through the factory")]
    EngineInactive {
        /// The engine's user.
        user: UserId,
    },
    /// The context belongs to another user than the engine.
    #[error("user mismatch: engine belongs to user {engine_user} but the context is for user {context_user}")]
    UserMismatch {
        /// The user the engine is bound to.
        engine_user: UserId,
        /// The user named by the rejected context.
        context_user: UserId,
    },
    /// An event sink bound to another user was handed to the engine.
    #[error("sink user mismatch: engine belongs to user {engine_user} but the sink delivers to user {sink_user}")]
    SinkUserMismatch {
        /// The user the engine is bound to.
        engine_user: UserId,
        /// The user the sink is bound to.
        sink_user: UserId,
    },
    /// No agent with that name is registered.
    #[error("unknown agent `{name}`; registered agents: {available}")]
    UnknownAgent {
        /// The requested agent name.
        name: String,
        /// The registered names, comma separated.
        available: String,
    },
    /// A run with this id is already active in the engine; give each message its own run id.
    #[error("run {run_id} is already active on this engine; use a new run id per message (UserExecutionContext::new_run)")]
    DuplicateRun {
        /// The run id in use.
        run_id: RunId,
    },
    /// The engine already holds its most runs (`max_concurrent_runs` executing plus
    /// `max_queued_runs` waiting); the run was refused before anything was emitted.
    #[error("too many runs: this engine already holds {max_concurrent_runs} running and {max_queued_runs} queued runs (max_concurrent_runs + max_queued_runs); wait for one to finish or cancel one")]
    QueueFull {
        /// The engine's `max_concurrent_runs`.
        max_concurrent_runs: usize,
        /// The engine's `max_queued_runs`.
        max_queued_runs: usize,
    },
    /// The thread already has a live run and the run asked for
    /// [`MultitaskPolicy::Reject`](crate::MultitaskPolicy::Reject); nothing was emitted.
    #[error("thread {thread_id} already has {live_runs} run(s) in progress; wait for the answer, or send with multitask `enqueue` or `interrupt`")]
    ThreadBusy {
        /// The busy thread.
        thread_id: ThreadId,
        /// Its live runs.
        live_runs: usize,
    },
    /// The run is active but has no tool call with this id waiting for approval.
    #[error("run {run_id} has no tool call {call_id} waiting for approval (already decided, timed out, or never asked)")]
    UnknownApproval {
        /// The run.
        run_id: RunId,
        /// The call number.
        call_id: u32,
    },
    /// A pipeline cannot run as given.
    #[error("invalid pipeline: {reason}")]
    InvalidPipeline {
        /// What is wrong with it.
        reason: String,
    },
    /// No active run has this id.
    #[error("no active run {run_id} on this engine (finished, never started, or another user's)")]
    UnknownRun {
        /// The requested run id.
        run_id: RunId,
    },
    /// `spawn` was called outside a tokio runtime, which the run needs to execute.
    #[error("no tokio runtime: call execute/spawn from within a tokio runtime")]
    NoRuntime,
    /// The run's task ended without producing an outcome (the runtime is shutting down).
    #[error("run {run_id} was aborted before it produced an outcome: {reason}")]
    RunAborted {
        /// The run.
        run_id: RunId,
        /// What the runtime reported.
        reason: String,
    },
}

/// Why a tool call made by an agent did not return a value. Each case is also reported to the
/// user as a `tool_completed` event with the matching [`ToolStatus`](crate::ToolStatus).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// No tool with this name is registered.
    #[error("Tool {name} not found")]
    NotFound {
        /// The requested tool.
        name: String,
    },
    /// The permission policy denied this user the tool.
    #[error("permission denied: user {user} may not call tool {name}")]
    PermissionDenied {
        /// The tool.
        name: String,
        /// The user.
        user: UserId,
    },
    /// The tool did not finish within the tool timeout.
    #[error("tool {name} timed out after {timeout_ms} ms")]
    Timeout {
        /// The tool.
        name: String,
        /// The timeout that elapsed, in milliseconds.
        timeout_ms: u64,
    },
    /// The user denied the call; the tool did not run.
    #[error("the user denied the call of tool {name}")]
    Denied {
        /// The tool.
        name: String,
    },
    /// Nobody approved or denied the call within the approval timeout; the tool did not run.
    #[error("tool {name} waited {timeout_ms} ms for the user's approval and did not run")]
    ApprovalTimeout {
        /// The tool.
        name: String,
        /// The approval timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// The run was cancelled while the tool ran.
    #[error("tool {name} was cancelled with its run")]
    Cancelled {
        /// The tool.
        name: String,
    },
    /// The tool returned an error.
    #[error("tool {name} failed: {message}")]
    Failed {
        /// The tool.
        name: String,
        /// The tool's error message.
        message: String,
    },
    /// A tool guardrail tripped on this call: on its arguments (the tool did not run) or on
    /// its result (withheld from the agent).
    #[error("guardrail {guardrail} denied the call of tool {name}: {reason}")]
    GuardrailDenied {
        /// The tool.
        name: String,
        /// The guardrail.
        guardrail: String,
        /// Why.
        reason: String,
    },
    /// The tool panicked; the panic was contained to this call.
    #[error("tool {name} panicked: {message}")]
    Panicked {
        /// The tool.
        name: String,
        /// The panic payload, if it was a string.
        message: String,
    },
}

/// Renders a panic payload caught with `catch_unwind`.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
