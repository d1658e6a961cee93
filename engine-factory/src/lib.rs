//! `engine-factory`: the sole constructor of [`UserExecutionEngine`]s.
//!
//! [`ExecutionEngineFactory`] validates contexts, admits engines under per-user limits, hands
//! each engine an event sink bound to its own user, routes events to per-user
//! [`Subscription`]s through its event hub, reaps idle and expired engines, and shuts down
//! gracefully.
//!
//! ```
//! use engine_core::{async_trait, Agent, AgentRegistry, BoxError, RunContext, UserExecutionContext};
//! use engine_factory::{ExecutionEngineFactory, FactoryConfig};
//!
//! struct Echo;
//! #[async_trait]
//! impl Agent for Echo {
//!     async fn run(&mut self, _ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
//!         Ok(input.to_owned())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let factory = ExecutionEngineFactory::new(
//!     FactoryConfig::builder().max_engines_per_user(2).build()?,
//!     AgentRegistry::builder().agent("echo", || Echo).build()?,
//! )?;
//! let ctx = UserExecutionContext::new("alice", "thread-1", "run-1")?;
//! let run = ctx.clone();
//! let answer = factory
//!     .scope(&ctx, |engine| async move { engine.execute(&run, "echo", "hi").await })
//!     .await??;
//! assert_eq!(answer.result(), Some("hi"));
//! assert_eq!(factory.metrics().active_engines, 0, "scope closed the engine");
//! # Ok(())
//! # }
//! ```
//!
//! Several factories (several gateway nodes) can share per-user limits and event streams
//! through the two [`Seams`]: an [`Admission`] that reserves a user's engine slots across
//! nodes (engines are then created with the async
//! [`ExecutionEngineFactory::create`]) and an [`EventBus`] that carries each user's events
//! between nodes and feeds them back into this factory's hub. `engine-redis` implements both
//! on Redis; by default both stay in memory and nothing changes.
//!
//! [`UserExecutionEngine`]: engine_core::UserExecutionEngine

mod cluster;
mod config;
mod factory;
mod hub;
mod privileged;
mod queue;
mod store;
mod sync;
mod users;

pub use cluster::{
    Admission, AdmissionError, BoxFuture, BusError, EventBus, Replayed, Seams, UserFeed,
};
pub use config::{FactoryConfig, FactoryConfigBuilder};
pub use factory::{
    EngineHandle, ExecutionEngineFactory, FactoryError, FactoryMetrics, ShutdownReport,
};
pub use hub::Subscription;
pub use store::{
    now_us, Durability, Role, RunAccepted, RunEnded, RunRecord, RunStore, StoreError, StoreHealth,
    StoredEvents, ThreadCursor, ThreadMessage, ThreadSummary, WebhookDue,
};
