//! `engine-core`: the one canonical per-user agent execution engine.
//!
//! A chat backend runs one agent run per user message. This crate defines everything a run
//! needs — validated ids and the per-request [`UserExecutionContext`], the lifecycle
//! [`AgentEvent`]s and their [`EventEnvelope`], the [`Agent`] and [`Tool`] traits, the
//! read-only [`AgentRegistry`], and the [`UserExecutionEngine`] itself — and nothing that could
//! be shared between users. Engines are built only by `engine-factory`.
//!
//! ```
//! use engine_core::{async_trait, Agent, AgentRegistry, BoxError, RunContext, UserExecutionContext};
//! use serde_json::json;
//!
//! struct Assistant;
//!
//! #[async_trait]
//! impl Agent for Assistant {
//!     async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
//!         ctx.think("looking up the time").await;
//!         let now = ctx.call_tool("clock", json!({})).await?;
//!         Ok(format!("You said {input:?}; it is {now}"))
//!     }
//! }
//!
//! let registry = AgentRegistry::builder().agent("assistant", || Assistant).build()?;
//! let ctx = UserExecutionContext::new("alice", "thread-1", "run-1")?;
//! assert!(registry.has_agent("assistant"));
//! assert_eq!(ctx.user_id().as_str(), "alice");
//! // Hand both to `engine_factory::ExecutionEngineFactory` to get an engine for alice.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//! - An engine serves one user: a context of another user is refused with
//!   [`EngineError::UserMismatch`] before anything runs, and its sink is bound to that user.
//! - Every accepted run emits `agent_started` first and exactly one `agent_completed` last,
//!   whatever happens (error, panic, timeout, cancellation, shutdown); sequence numbers are
//!   contiguous from 1 and timestamps never decrease within a run.
//! - Event delivery never fails a run; dropped events are counted and leave sequence gaps.

mod agent;
mod config;
mod context;
mod engine;
mod error;
mod event;
mod ids;
mod run;
mod sink;

pub use agent::{
    Agent, AgentRegistry, AgentRegistryBuilder, BoxError, RegistryError, Tool, ToolContext,
    ToolPermissionPolicy,
};
pub use async_trait::async_trait;
pub use config::{check_range, EngineConfig, EngineConfigBuilder};
pub use context::{
    UserExecutionContext, UserExecutionContextBuilder, MAX_OPERATION_DEPTH, RESERVED_METADATA_KEYS,
};
pub use engine::{EngineStats, RunHandle, RunOutcome, UserExecutionEngine, QUEUED_NOTICE};
pub use error::{ConfigError, ContextError, EngineError, IdError, IdRejection, ToolError};
pub use event::{
    sanitize_arguments, sanitize_result, truncate_str, AgentEvent, EventEnvelope, RunStatus,
    ToolStatus, MAX_ARGUMENT_CHARS, MAX_LIST_ITEMS, MAX_RESULT_CHARS, REDACTED, SECRET_KEY_MARKERS,
};
pub use ids::{
    RequestId, RunId, ThreadId, UserId, ALLOWED_DEFAULTS, FORBIDDEN_PREFIXES, FORBIDDEN_VALUES,
    MAX_ID_BYTES, SHORT_VALUE_CHARS,
};
pub use run::{RunContext, ToolDispatcher};
pub use sink::{Delivery, DeliveryError, EventSink};

/// The engine constructor, reserved for `engine-factory`.
///
/// Rust has no "friend crate" visibility, so this function has to be public for the factory
/// crate to call it. It is hidden from the docs, and `cargo xtask tidy` / `cargo xtask migrate
/// --check` (rule SSOT003, factory-bypass) fail CI on any call outside `engine-factory`. Use
/// `ExecutionEngineFactory::create_for_user` instead.
#[doc(hidden)]
pub mod factory_only {
    use std::sync::Arc;

    use crate::{
        AgentRegistry, EngineConfig, EngineError, EventSink, UserExecutionContext,
        UserExecutionEngine,
    };

    /// Builds an engine for `context`'s user. Only `engine-factory` may call this.
    ///
    /// # Errors
    /// [`EngineError::SinkUserMismatch`] when `sink` is bound to another user.
    pub fn assemble_engine(
        context: UserExecutionContext,
        config: EngineConfig,
        registry: AgentRegistry,
        sink: Arc<dyn EventSink>,
    ) -> Result<UserExecutionEngine, EngineError> {
        UserExecutionEngine::assemble(context, config, registry, sink)
    }
}
