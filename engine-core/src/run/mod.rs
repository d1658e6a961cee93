//! What a running agent sees: the [`RunContext`] (thinking, streaming, tool calls, sub-agents,
//! cleanup actions, cancellation). The run's task lifecycle is in [`task`], a run awaited by
//! its caller in [`attached`], event stamping in
//! [`emit`], time limits and cancellation around agents and tools in [`guard`], tool calls in [`tools`], sub-agents in [`sub`], what the agents of a run share in
//! [`control`].

pub(crate) mod attached;
pub(crate) mod chain;
pub(crate) mod checks;
pub(crate) mod control;
pub(crate) mod emit;
pub(crate) mod guard;
pub(crate) mod sub;
pub(crate) mod task;
pub(crate) mod tools;

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use crate::agent::BoxError;
use crate::config::EngineConfig;
use crate::context::UserExecutionContext;
use crate::error::ToolError;
use crate::event::AgentEvent;
use crate::guardrail::Guards;
use crate::handoff::{Handoff, HandoffError};
use crate::registry::AgentRegistry;
use crate::sink::EventSink;

use self::control::{Cleanup, RunControl};
use self::emit::{Emitter, EmitterSlot};
pub use self::sub::{SubAgentCall, SubAgentError};
pub use self::tools::ToolDispatcher;

/// What an [`Agent`](crate::Agent) sees of its run: its context, a way to report thinking and
/// stream its answer, the tools, sub-agents, cleanup actions, and cancellation. Owned by the
/// run (a sub-agent gets its own, with a child context); events emitted through it carry this
/// run's ids and reach only this run's user.
pub struct RunContext {
    agent_name: Arc<str>,
    emitter: EmitterSlot,
    /// The tools, and the run's control and kit (shared with them, held once).
    tools: ToolDispatcher,
    /// The answer text streamed so far (see [`stream`](Self::stream)).
    streamed: String,
    /// 0 for the top-level agent; only its stream reaches the user.
    depth: u32,
    /// The agent's deltas are held back until its answer passes a hold-mode output guardrail.
    hold: bool,
    /// Handoffs of the run (only once the agent asks for one: most runs never do).
    handoffs: Option<Box<chain::Handoffs>>,
}

/// The engine-wide pieces every agent context of a run is built from (one per engine).
#[derive(Debug)]
pub(crate) struct RunKit {
    pub(crate) registry: AgentRegistry,
    pub(crate) config: EngineConfig,
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
    /// The top-level agent's context.
    pub(crate) fn new(
        agent_name: Arc<str>,
        context: UserExecutionContext,
        sink: Arc<dyn EventSink>,
        control: Arc<RunControl>,
        kit: Arc<RunKit>,
        guards: Option<Arc<Guards>>,
    ) -> Self {
        let emitter = Emitter::new(context.clone(), kit.config.delivery_timeout());
        Self::for_agent(
            agent_name,
            context,
            EmitterSlot::new(sink, emitter),
            control,
            kit,
            0,
            guards,
        )
    }

    /// The context of one agent of the run (top-level or sub-agent).
    pub(crate) fn for_agent(
        agent_name: Arc<str>,
        context: UserExecutionContext,
        emitter: EmitterSlot,
        control: Arc<RunControl>,
        kit: Arc<RunKit>,
        depth: u32,
        guards: Option<Arc<Guards>>,
    ) -> Self {
        let hold = depth == 0 && guards.as_ref().is_some_and(|g| g.hold);
        Self {
            agent_name,
            emitter,
            tools: ToolDispatcher {
                kit,
                context,
                control,
                calls: 0,
                guards,
                depth,
            },
            streamed: String::new(),
            depth,
            hold,
            handoffs: None,
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

    /// Whether a guardrail ended the run: from then on nothing an agent does reaches the user
    /// (no event, no tool call, no sub-agent), as if it had been stopped at the trip.
    fn tripped(&self) -> bool {
        self.tools.control.trip().is_some()
    }

    /// Sends one event of this agent.
    pub(crate) fn emit(&mut self, event: AgentEvent) -> emit::Emit<'_> {
        self.emitter.emit(self.tools.context.request_id(), event)
    }

    /// Reports progress as an `agent_thinking` event (a `&'static str` is not copied). After a
    /// guardrail ended the run, nothing is sent (so for [`stream`](Self::stream),
    /// [`call_tool`](Self::call_tool) and sub-agents: a tripped run hears nothing more of its
    /// agents).
    pub async fn think(&mut self, reasoning: impl Into<std::borrow::Cow<'static, str>>) {
        if self.tripped() {
            return;
        }
        self.emit(AgentEvent::AgentThinking {
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
        if self.tripped() {
            return Err(ToolError::Cancelled { name: name.into() });
        }
        self.tools
            .dispatch(&mut self.emitter, &self.agent_name, name, args)
            .await
    }

    /// Streams the next piece of the answer to the user as an `answer_delta` event, as it is
    /// produced (a model's tokens, say). An agent that streams should return the same text as
    /// its answer, or a text that starts with it (the engine then streams the rest itself);
    /// returning anything else ends the run `failed`, so the deltas a user saw always add up to
    /// the answer of a completed run. Empty pieces are not sent. Only the top-level agent's
    /// stream reaches the user: a sub-agent's answer goes to the agent that called it. Under a
    /// hold-mode [`OutputGuardrail`](crate::OutputGuardrail) the pieces are held back and sent
    /// as one once the answer passes.
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
        if delta.is_empty() || self.tripped() {
            return;
        }
        self.streamed.push_str(&delta);
        if self.depth == 0 && !self.hold {
            self.emit(AgentEvent::AnswerDelta { delta }).await;
        }
    }

    /// The text the user has seen of this agent's answer (none for a sub-agent, or while
    /// held back).
    pub(crate) fn shown(&self) -> &str {
        if self.depth == 0 && !self.hold {
            &self.streamed
        } else {
            ""
        }
    }

    /// Hands the run off to `agent` with `input`: once this agent returns from
    /// [`Agent::run`](crate::Agent::run) (right away: its answer is dropped), `agent` takes the
    /// run over, as its top-level agent, in the same run: a `handoff` event (from, to), then the
    /// new agent's events; the run's terminal event names the agent that answered. Text this
    /// agent streamed is retracted (`answer_retracted`), and what it left open (tool calls,
    /// approvals, sub-agents) is closed. Only the run's top-level agent can hand off, only to
    /// the targets the registry allows
    /// ([`AgentRegistryBuilder::handoffs`](crate::AgentRegistryBuilder::handoffs)), and at most
    /// [`max_handoffs`](crate::AgentRegistryBuilder::max_handoffs) times per run.
    ///
    /// ```
    /// use engine_core::{async_trait, Agent, BoxError, RunContext};
    ///
    /// struct Triage;
    /// #[async_trait]
    /// impl Agent for Triage {
    ///     async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
    ///         if input.contains("invoice") {
    ///             return Ok(ctx.handoff("billing", input)?);
    ///         }
    ///         Ok("how can I help?".into())
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    /// [`HandoffError`]: the target is not allowed, the run reached its handoff limit (the run
    /// then ends `failed` whatever the agent returns), the agent is a sub-agent, or it already
    /// asked for a handoff. Returns `Ok` with an empty text, for the agent to return.
    pub fn handoff(
        &mut self,
        agent: &str,
        input: impl Into<String>,
    ) -> Result<String, HandoffError> {
        self.handoff_with(Handoff::to(agent, input))
    }

    /// [`handoff`](Self::handoff) with a reason (the `handoff` event's `reason`).
    ///
    /// # Errors
    /// As [`handoff`](Self::handoff).
    pub fn handoff_with(&mut self, handoff: Handoff) -> Result<String, HandoffError> {
        if self.depth != 0 {
            return Err(HandoffError::NotTopLevel {
                agent: self.agent_name.to_string(),
            });
        }
        let registry = &self.tools.kit.registry;
        let state = self.handoffs.get_or_insert_with(Default::default);
        state.ask(&self.agent_name, registry, handoff)
    }

    /// The agents this agent may hand the run off to (none for a sub-agent).
    pub fn handoff_targets(&self) -> Vec<&str> {
        if self.depth != 0 {
            return Vec::new();
        }
        self.tools
            .kit
            .registry
            .handoff_targets(&self.agent_name)
            .collect()
    }

    /// Adds model tokens used by this agent (a sub-agent's count with the run's) to the run's
    /// [`RunOutcome::usage`](crate::RunOutcome::usage).
    pub fn record_usage(&self, usage: crate::TokenUsage) {
        self.tools.control.add_usage(usage);
    }

    /// The answer text streamed so far.
    pub fn streamed(&self) -> &str {
        &self.streamed
    }

    /// Whether the run was cancelled (by id, by shutdown, or by the engine closing).
    pub fn is_cancelled(&self) -> bool {
        self.tools.control.cancel.is_set()
    }
    /// Resolves when the run is cancelled.
    pub async fn cancelled(&self) {
        self.tools.control.cancel.wait().await;
    }

    /// Registers an action to run when the run ends, however it ends (completed, failed,
    /// timed out, cancelled, shut down). Actions run newest first, before the run's terminal
    /// event, each within the tool timeout; one that fails or panics is logged and the others
    /// still run.
    ///
    /// ```
    /// use engine_core::{async_trait, Agent, BoxError, RunContext};
    ///
    /// struct Booker;
    /// #[async_trait]
    /// impl Agent for Booker {
    ///     async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
    ///         // Hold a seat; give it back however the run ends.
    ///         ctx.on_cleanup("release the seat", || async { Ok(()) });
    ///         Ok("seat 12A is yours for 10 minutes".into())
    ///     }
    /// }
    /// ```
    pub fn on_cleanup<F, Fut>(&self, name: impl Into<String>, action: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.tools.control.on_cleanup(Cleanup {
            name: name.into(),
            action: Box::new(move || Box::pin(action())),
        });
    }

    /// Runs the registered agent `agent` on `input` as a sub-agent of this one, and returns its
    /// answer. It gets a fresh instance and a child context (new request id, depth + 1), and
    /// shares the run's cancellation, deadline, tool policy and approvals. Its events are
    /// framed by `sub_agent_started` / `sub_agent_completed` and carry its request id.
    ///
    /// # Errors
    /// [`SubAgentError`]: unknown agent, depth limit, or how the sub-agent failed (error,
    /// death, timeout, cancellation). The run goes on: the caller decides what to do.
    pub async fn run_agent(&mut self, agent: &str, input: &str) -> Result<String, SubAgentError> {
        let call = SubAgentCall::new(agent, input);
        let mut results = self.run_agents(vec![call], 1).await;
        results.pop().unwrap_or(Err(SubAgentError::Cancelled {
            agent: agent.to_owned(),
        }))
    }

    /// Runs several sub-agents, at most `max_concurrent` at a time (a supervisor's fan-out),
    /// and returns their results in the order of `calls`. One sub-agent failing or dying does
    /// not stop its siblings: they finish, and the caller sees every result.
    pub async fn run_agents(
        &mut self,
        calls: Vec<SubAgentCall>,
        max_concurrent: usize,
    ) -> Vec<Result<String, SubAgentError>> {
        if self.tripped() {
            return calls
                .iter()
                .map(|c| {
                    Err(SubAgentError::Cancelled {
                        agent: c.agent().to_owned(),
                    })
                })
                .collect();
        }
        let mut shared = self.emitter.share();
        let parent = sub::Parent {
            context: self.tools.context.clone(),
            depth: self.depth,
            control: Arc::clone(&self.tools.control),
            kit: Arc::clone(&self.tools.kit),
        };
        let results = sub::run_all(&parent, &mut shared, calls, max_concurrent.max(1)).await;
        drop(shared);
        self.emitter.reclaim();
        results
    }

    /// The run's emitter, owned again, for the run's last events.
    pub(crate) async fn last_emitter(&mut self) -> emit::EmitterGuard<'_> {
        self.emitter.last().await
    }

    /// Why an agent's answer cannot end its streamed text, if it cannot (it must start with
    /// the streamed text).
    pub(crate) fn check_stream(&self, answer: &str) -> Result<(), String> {
        if answer.starts_with(self.streamed.as_str()) {
            return Ok(());
        }
        Err(format!(
            "agent `{}` answered with a text that does not start with the {} bytes it streamed; an agent that streams must answer with the streamed text",
            self.agent_name,
            self.streamed.len()
        ))
    }

    /// Ends the streamed text for an agent that answered `answer`: streams whatever part of
    /// the answer was not streamed yet (all of it at once, if it was held back), or says why
    /// the answer cannot be the streamed text.
    pub(crate) async fn finish_stream(&mut self, answer: &str) -> Result<(), String> {
        if self.streamed.is_empty() {
            return Ok(());
        }
        if self.hold {
            self.check_stream(answer)?;
            self.hold = false;
            self.streamed.clear();
            self.stream(answer.to_owned()).await;
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

    /// The run passes to the agent `name` (a handoff): its guardrails, a fresh stream and
    /// call count; the emitter, context and handoff count stay the run's.
    pub(crate) fn become_agent(&mut self, name: Arc<str>, guards: Option<Arc<Guards>>) {
        self.hold = guards.as_ref().is_some_and(|g| g.hold);
        self.agent_name = name;
        self.tools.guards = guards;
        self.tools.calls = 0;
        self.streamed.clear();
    }

    /// Closes the tool calls the top-level agent started and abandoned (dropped futures),
    /// ending their waits for approval: before a handoff, so that the next agent starts with
    /// nothing of the last one open.
    pub(crate) async fn close_abandoned_calls(&mut self, error: &str) {
        let me = self.tools.context.request_id().clone();
        for open in self.tools.control.take_open_calls_of(&me) {
            if let control::OpenItem::Tool { call_id, .. } = &open.item {
                self.tools.control.end_approval(*call_id);
            }
            let event = tools::tool_completed(
                &open,
                crate::event::ToolStatus::Cancelled,
                None,
                Some(error.to_owned()),
            );
            self.emitter.emit(&me, event).await;
        }
    }

    /// Closes what was left open when an agent future was abandoned (cancellation, timeout):
    /// every tool call gets its `tool_completed` and every sub-agent its `sub_agent_completed`,
    /// innermost first.
    pub(crate) async fn close_open(
        &mut self,
        owner: Option<&crate::ids::RequestId>,
        tool: crate::event::ToolStatus,
        run: crate::event::RunStatus,
        error: &str,
    ) {
        for open in self.tools.control.take_open_of(owner) {
            let event = match &open.item {
                control::OpenItem::Tool { call_id, .. } => {
                    // A call abandoned while it waited for the user stops waiting.
                    self.tools.control.end_approval(*call_id);
                    tools::tool_completed(&open, tool, None, Some(error.to_owned()))
                }
                control::OpenItem::SubAgent {
                    agent_name,
                    request_id,
                } => AgentEvent::SubAgentCompleted {
                    agent_name: Arc::clone(agent_name),
                    request_id: request_id.clone(),
                    status: run,
                    result: None,
                    error: Some(error.to_owned()),
                    duration_ms: emit::millis(open.started.elapsed()),
                },
            };
            self.emitter.emit(&open.owner, event).await;
        }
    }
}
