//! What a running agent sees: the [`RunContext`] (thinking, tool calls, cancellation). The run's
//! task lifecycle is in [`task`], event stamping in [`emit`], tool calls in [`tools`].

pub(crate) mod control;
pub(crate) mod emit;
pub(crate) mod task;
pub(crate) mod tools;

use std::sync::Arc;

use serde_json::Value;

use crate::config::EngineConfig;
use crate::context::UserExecutionContext;
use crate::error::ToolError;
use crate::event::{AgentEvent, ToolStatus};
use crate::registry::AgentRegistry;
use crate::sink::EventSink;

use self::control::RunControl;
use self::emit::Emitter;
pub use self::tools::ToolDispatcher;

/// What an [`Agent`](crate::Agent) sees of its run: its context, a way to report thinking, the
/// tools, and cancellation. Owned by the run; events emitted through it carry this run's ids and
/// reach only this run's user.
pub struct RunContext {
    agent_name: Arc<str>,
    emitter: Emitter,
    tools: ToolDispatcher,
    control: Arc<RunControl>,
    /// The answer text streamed so far (see [`stream`](Self::stream)).
    streamed: String,
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
        control: Arc<RunControl>,
        config: &EngineConfig,
    ) -> Self {
        Self {
            agent_name,
            emitter: Emitter::new(sink, context.clone(), config.delivery_timeout()),
            tools: ToolDispatcher {
                registry,
                context,
                control: Arc::clone(&control),
                tool_timeout: config.tool_timeout(),
                approval_timeout: config.approval_timeout(),
                next_call_id: 0,
                open: None,
                calls: 0,
            },
            control,
            streamed: String::new(),
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

    /// Streams the next piece of the answer to the user as an `answer_delta` event, as it is
    /// produced (a model's tokens, say). An agent that streams should return the same text as
    /// its answer, or a text that starts with it (the engine then streams the rest itself);
    /// returning anything else ends the run `failed`, so the deltas a user saw always add up to
    /// the answer of a completed run. Empty pieces are not sent.
    ///
    /// ```
    /// use engine_core::{async_trait, Agent, BoxError, RunContext};
    ///
    /// struct Typist;
    /// #[async_trait]
    /// impl Agent for Typist {
    ///     async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
    ///         for word in ["Hello", ", ", "world"] {
    ///             ctx.stream(word).await;
    ///         }
    ///         Ok(ctx.streamed().to_owned())
    ///     }
    /// }
    /// ```
    pub async fn stream(&mut self, delta: impl Into<String>) {
        let delta = delta.into();
        if delta.is_empty() {
            return;
        }
        self.streamed.push_str(&delta);
        self.emitter.emit(AgentEvent::AnswerDelta { delta }).await;
    }

    /// The answer text streamed so far.
    pub fn streamed(&self) -> &str {
        &self.streamed
    }

    /// Whether the run was cancelled (by id, by shutdown, or by the engine closing).
    pub fn is_cancelled(&self) -> bool {
        self.control.cancel.is_cancelled()
    }
    /// Resolves when the run is cancelled.
    pub async fn cancelled(&self) {
        self.control.cancel.cancelled().await;
    }

    pub(crate) fn emitter(&mut self) -> &mut Emitter {
        &mut self.emitter
    }

    /// Ends the streamed text for an agent that answered `answer`: streams whatever part of
    /// the answer was not streamed yet, or says why the answer cannot be the streamed text.
    pub(crate) async fn finish_stream(&mut self, answer: &str) -> Result<(), String> {
        if self.streamed.is_empty() {
            return Ok(());
        }
        match answer.strip_prefix(self.streamed.as_str()) {
            Some("") => Ok(()),
            Some(rest) => {
                let rest = rest.to_owned();
                self.stream(rest).await;
                Ok(())
            }
            None => Err(format!(
                "agent `{}` answered with a text that does not start with the {} bytes it streamed; an agent that streams must answer with the streamed text",
                self.agent_name,
                self.streamed.len()
            )),
        }
    }

    /// Closes a tool call left open when the agent future was abandoned (cancellation or run
    /// timeout), so every `tool_executing` still gets its `tool_completed`.
    pub(crate) async fn close_open_call(&mut self, status: ToolStatus, error: &str) {
        self.tools
            .complete_open(&mut self.emitter, status, None, Some(error.to_owned()))
            .await;
    }
}
