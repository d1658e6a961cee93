//! `engine-core`: the one canonical per-user agent execution engine.
//!
//! A chat backend runs one agent *run* per user message; the run thinks, calls tools, answers,
//! and its lifecycle events go to the user who asked and to nobody else. This crate defines
//! everything a run needs and nothing that could be shared between users. A tour, in the order
//! data flows:
//!
//! 1. **Who asks.** A [`UserExecutionContext`] carries the validated [`UserId`], [`ThreadId`],
//!    [`RunId`] and [`RequestId`] of one request. Ids refuse placeholders, control and invisible
//!    characters ([`IdError`]); a context is immutable and cheap to clone.
//! 2. **What runs.** An [`Agent`] answers one message through its [`RunContext`], calling
//!    [`Tool`]s; both are registered in a read-only [`AgentRegistry`] that hands every run a
//!    fresh agent. Guardrails registered with it ([`InputGuardrail`], [`OutputGuardrail`],
//!    [`ToolGuardrail`]) check the message, the answer and each tool call, and stop the run
//!    (or one call) before harm; an agent can hand the run to another
//!    ([`RunContext::handoff`]).
//! 3. **Where it runs.** A [`UserExecutionEngine`] serves ONE user. It is built only by
//!    `engine_factory::ExecutionEngineFactory` (see [`factory_only`] for how that is enforced),
//!    within the limits of an [`EngineConfig`].
//! 4. **A run.** [`UserExecutionEngine::execute`] or [`spawn`](UserExecutionEngine::spawn) starts
//!    one; it ends with a [`RunOutcome`] whose [`RunEnd`] holds the answer or the error.
//! 5. **Its events.** Each [`AgentEvent`] travels in an [`EventEnvelope`] stamped with the run's
//!    own ids and sequence number, through the engine's [`EventSink`], bound to the engine's user.
//!    The factory's sink routes them to that user's subscriptions.
//!
//! A run end to end, through the factory:
//!
//! ```
//! use engine_core::{async_trait, Agent, AgentEvent, AgentRegistry, BoxError, RunContext, RunStatus, Tool,
//!     ToolContext, UserExecutionContext};
//! use engine_factory::{ExecutionEngineFactory, FactoryConfig};
//! use serde_json::{json, Value};
//!
//! struct Clock;
//! #[async_trait]
//! impl Tool for Clock {
//!     async fn call(&self, _args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
//!         Ok(json!("12:00"))
//!     }
//! }
//!
//! struct Assistant;
//! #[async_trait]
//! impl Agent for Assistant {
//!     async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
//!         ctx.think("looking up the time").await;
//!         let now = ctx.call_tool("clock", json!({})).await?;
//!         Ok(format!("You said {input:?}; it is {now}"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 2. what runs
//! let registry = AgentRegistry::builder()
//!     .agent("assistant", || Assistant)
//!     .tool("clock", Clock)
//!     .build()?;
//! // 3. where it runs: engines come only from the factory
//! let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry)?;
//! // 1. who asks
//! let ctx = UserExecutionContext::new("alice", "thread-1", "run-1")?;
//! let mut events = factory.subscribe(ctx.user_id());
//! let engine = factory.create_for_user(&ctx)?;
//! // 4. a run
//! let outcome = engine.execute(&ctx, "assistant", "hi").await?;
//! assert_eq!(outcome.status(), RunStatus::Completed);
//! assert_eq!(outcome.result(), Some("You said \"hi\"; it is \"12:00\""));
//! // 5. its events, to alice only
//! let mut kinds = Vec::new();
//! while let Some(envelope) = events.recv().await {
//!     assert_eq!(envelope.user_id, *ctx.user_id());
//!     kinds.push(envelope.event.kind());
//!     if envelope.event.is_terminal() {
//!         break;
//!     }
//! }
//! assert_eq!(
//!     kinds,
//!     ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]
//! );
//! engine.close().await;
//! factory.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//! - An engine serves one user: a context of another user is refused with
//!   [`EngineError::UserMismatch`] before anything runs, and its sink is bound to that user.
//! - Every accepted run emits `agent_started` first and exactly one `agent_completed` last,
//!   whatever happens (error, panic, timeout, cancellation, shutdown); sequence numbers are
//!   contiguous from 1 and timestamps never decrease within a run.
//! - An engine holds at most `max_concurrent_runs + max_queued_runs` runs; the next is refused
//!   with [`EngineError::QueueFull`] before any event.
//! - Event delivery never fails a run; dropped events are counted and leave sequence gaps.
//! - A guardrail trip that ends a run emits `guardrail_tripped` and then the one terminal
//!   event (status [`RunStatus::GuardrailTripped`]); a blocking input trip runs no tool and
//!   streams no text, a parallel one stops the agent before any further tool call starts, a
//!   tool-input trip never runs the tool.
//!
//! The rules and numbers behind these (id rules, payload limits) are in [`limits`].

mod agent;
mod config;
mod context;
mod engine;
mod error;
mod event;
pub mod factory_only;
mod guardrail;
mod handoff;
mod ids;
pub mod limits;
mod multitask;
mod outcome;
mod pipeline;
mod registry;
mod run;
mod sanitize;
mod sink;
mod sync;
mod tool;

pub use agent::{Agent, BoxError};
pub use async_trait::async_trait;
pub use config::{EngineConfig, EngineConfigBuilder};
pub use context::{UserExecutionContext, UserExecutionContextBuilder};
pub use engine::{RunHandle, UserExecutionEngine};
pub use error::{ConfigError, ContextError, EngineError, ToolError};
pub use event::{AgentEvent, ApprovalOutcome, EventEnvelope, RetractCause, RunStatus, ToolStatus};
pub use guardrail::{
    Check, Checked, Guardrail, GuardrailCheck, GuardrailInput, GuardrailKind, InputGuardrail,
    OutputGuardrail, ToolGuardrail, TripAction, Verdict, DEFAULT_GUARDRAIL_TIMEOUT,
};
pub use handoff::{Handoff, HandoffError, HandoffInput, DEFAULT_MAX_HANDOFFS};
pub use ids::{IdError, IdRejection, RequestId, RunId, ThreadId, UserId};
pub use multitask::{ApprovalDecision, MultitaskPolicy, RunOptions, UnknownPolicy};
pub use outcome::{EngineStats, RunEnd, RunOutcome, StepOutcome, TokenUsage};
pub use pipeline::{Pipeline, PipelineStep, StepInput};
pub use registry::{AgentRegistry, AgentRegistryBuilder, RegistryError};
pub use run::{RunContext, SubAgentCall, SubAgentError, ToolDispatcher};
pub use sink::{Delivery, DeliveryError, EventSink, RunEnding};
pub use tool::{SourcedTool, Tool, ToolContext, ToolPermissionPolicy, ToolSource, ToolSpec};
