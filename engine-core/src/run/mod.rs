//! What a running agent sees: the [`RunContext`] (thinking, tool calls, cancellation). The run's
//! task lifecycle is in [`task`], event stamping in [`emit`], tool calls in [`tools`].

pub(crate) mod emit;
pub(crate) mod task;
pub(crate) mod tools;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::context::UserExecutionContext;
use crate::error::ToolError;
use crate::event::{AgentEvent, ToolStatus};
use crate::registry::AgentRegistry;
use crate::sink::EventSink;

use self::emit::Emitter;
pub use self::tools::ToolDispatcher;

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
