//! `engine-store`: durable runs for the one engine. Threads, runs, events and approvals are
//! kept in SQLite (embedded: one file, one process) or Postgres (a cluster of gateway nodes),
//! behind engine-factory's [`RunStore`] seam, through `sqlx`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use engine_core::AgentRegistry;
//! use engine_factory::{ExecutionEngineFactory, FactoryConfig, RunStore, Seams};
//! use engine_store::{SqlStore, StoreConfig};
//!
//! # async fn start(registry: AgentRegistry) -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqlStore::open(StoreConfig::new("sqlite://.engine-gateway/gateway.db")).await?;
//! let seams = Seams::default().run_store(Arc::new(store.clone()));
//! let factory = ExecutionEngineFactory::with_seams(FactoryConfig::default(), registry, seams)?;
//! // ... runs of the factory's engines are recorded as they happen ...
//! let alice = engine_core::UserId::new("alice")?;
//! let threads = store.threads(&alice, 20, None).await?;
//! # let _ = (factory, threads);
//! # Ok(())
//! # }
//! ```
//!
//! What it keeps, and when:
//! - a run when it is accepted (user, thread, run, agent, request, input; the input is also the
//!   thread's next `user` message), every event of the run, approvals as they are requested and
//!   decided, and the run's end (status, answer or error, usage, timings, pipeline steps; the
//!   answer is the thread's next `assistant` message). Rows are only appended (a thread's
//!   history is never rewritten per turn) and every key starts with the user id.
//! - Writes go behind, in batches, one transaction per batch (the buffer rule: run
//!   records always queue; events queue up to the buffer, and an event that finds it full is
//!   recorded as a gap). A run's terminal record is committed before its handle resolves
//!   (`Durability::Batch`), or before its terminal event is delivered (`Durability::Sync`),
//!   each bounded by the commit timeout.
//! - A run whose process died gets exactly one terminal record and terminal event, status
//!   `interrupted`: on SQLite at the next start, on Postgres by any node once the dead node's
//!   heartbeat is older than the node lease. Exactly-once is a conditional `UPDATE` on the
//!   `running` row, not timing.
//! - Migrations are embedded (`sqlx::migrate!`) and run at open; on Postgres under sqlx's
//!   advisory lock, so nodes starting together end with one schema. A database migrated by a
//!   newer binary is refused with one line saying so, as is a SQLite file of another
//!   application or a file that is not a database.
//!
//! [`RunStore`]: engine_factory::RunStore

mod config;
mod db;
mod recover;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod writer;

pub use config::StoreConfig;
pub use db::OpenError;
pub use recover::INTERRUPTED;
pub use store::SqlStore;
