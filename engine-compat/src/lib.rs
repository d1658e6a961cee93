//! `engine-compat`: the legacy engine names, kept as deprecated aliases, and nothing else.
//!
//! Downstream code that still names a legacy engine keeps compiling, and gets a warning at every
//! use that says exactly what to write instead. This crate holds **zero implementation**: every
//! item is a `#[deprecated]` type alias of a canonical type in `engine-core` or
//! `engine-factory` (a test parses this file and fails on anything else).
//!
//! # Migration in three phases
//!
//! 1. **Compile with warnings.** Depend on `engine-compat`; legacy names resolve to the
//!    canonical types through these aliases, and each use warns with the replacement.
//! 2. **Rewrite.** Run `cargo ssot migrate --fix` (`--dry-run` shows the diff): every use of an
//!    `engine_compat` path is rewritten to its canonical path, imports merged. `cargo xtask
//!    migrate --check` then reports no `SSOT001` finding.
//! 3. **Remove the dependency.** Delete `engine-compat` from `Cargo.toml` and set
//!    `[lints.rust] deprecated = "deny"` so no legacy name can come back.
//!
//! ```
//! # #![allow(deprecated)]
//! // Phase 1: legacy code compiles (each alias use warns, silenced here).
//! use engine_compat::{ExecutionEngine, UnifiedExecutionEngineFactory};
//!
//! fn engine_user(engine: &ExecutionEngine) -> &str {
//!     engine.user_id().as_str()
//! }
//! fn limit(factory: &UnifiedExecutionEngineFactory) -> usize {
//!     factory.config().max_engines_per_user()
//! }
//! ```
//!
//! ```
//! // Phase 2, after `cargo ssot migrate --fix`: the same code on canonical paths.
//! use engine_core::UserExecutionEngine;
//! use engine_factory::ExecutionEngineFactory;
//!
//! fn engine_user(engine: &UserExecutionEngine) -> &str {
//!     engine.user_id().as_str()
//! }
//! fn limit(factory: &ExecutionEngineFactory) -> usize {
//!     factory.config().max_engines_per_user()
//! }
//! ```
//!
//! # Aliases: legacy name -> what to write now
//!
//! | legacy name | canonical type |
//! |---|---|
//! | `ExecutionEngine` | [`engine_core::UserExecutionEngine`] |
//! | `SupervisorExecutionEngine` | [`engine_core::UserExecutionEngine`] |
//! | `ConsolidatedExecutionEngine` | [`engine_core::UserExecutionEngine`] |
//! | `RequestScopedExecutionEngine` | [`engine_core::UserExecutionEngine`] |
//! | `ExecutionEngineWithWebSocketEvents` | [`engine_core::UserExecutionEngine`] |
//! | `MCPEnhancedExecutionEngine` | [`engine_core::UserExecutionEngine`] |
//! | `SupervisorExecutionEngineAdapter` | [`engine_core::UserExecutionEngine`] |
//! | `ConsolidatedExecutionEngineWrapper` | [`engine_core::UserExecutionEngine`] |
//! | `GenericExecutionEngineAdapter` | [`engine_core::UserExecutionEngine`] |
//! | `ExecutionEngineAdapter` | [`engine_core::UserExecutionEngine`] |
//! | `UnifiedExecutionEngineFactory` | [`engine_factory::ExecutionEngineFactory`] |
//! | `UserExecutionEngineFactory` | [`engine_factory::ExecutionEngineFactory`] |
//! | `UserScopedEngineFactory` | [`engine_factory::ExecutionEngineFactory`] |
//! | `ToolExecutionEngine` | [`engine_core::ToolDispatcher`] |
//! | `UnifiedToolExecutionEngine` | [`engine_core::ToolDispatcher`] |
//! | `UnifiedToolDispatcher` | [`engine_core::ToolDispatcher`] |
//! | `RequestScopedToolDispatcher` | [`engine_core::ToolDispatcher`] |
//! | `UserExecutionEngineError` | [`engine_core::EngineError`] |
//! | `ExecutionEngineFactoryError` | [`engine_factory::FactoryError`] |
//! | `UserExecutionContextFactory` | [`engine_core::UserExecutionContextBuilder`] |
//! | `UserContextFactory` | [`engine_core::UserExecutionContextBuilder`] |
//! | `EngineConfig` | [`engine_core::EngineConfig`] |
//!
//! # Legacy names with no alias: legacy name -> what to write now
//!
//! These were traits or free functions; a type alias cannot stand in for them and a shim would
//! be implementation, so none is kept. Rewrite them by hand:
//!
//! | legacy name | what to write now |
//! |---|---|
//! | `IExecutionEngine` (trait) | take [`engine_core::UserExecutionEngine`] directly: it is the only engine. For test doubles, implement [`engine_core::Agent`] / [`engine_core::Tool`] and run them through a real engine. |
//! | `ExecutionEngineInterface` (trait) | as `IExecutionEngine`. |
//! | `create_execution_engine(...)` | `factory.create_for_user(&ctx)?` ([`engine_factory::ExecutionEngineFactory::create_for_user`]) |
//! | `create_request_scoped_engine(...)` | `factory.create_for_user(&ctx)?`; drop or `close()` the handle when the request ends |
//! | `get_execution_engine_factory()` | build one [`engine_factory::ExecutionEngineFactory::new`] at start-up and pass clones of it; there is no global factory |
//! | `user_execution_engine(ctx)` (context manager) | `factory.scope(&ctx, \|engine\| async move { ... }).await` ([`engine_factory::ExecutionEngineFactory::scope`]) |

// Engines: every legacy engine, adapter and wrapper is the one per-user engine.

/// Legacy name of the generic legacy engine: now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type ExecutionEngine = engine_core::UserExecutionEngine;

/// Legacy name of the supervisor's engine: now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type SupervisorExecutionEngine = engine_core::UserExecutionEngine;

/// Legacy name of the "consolidated" engine: now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type ConsolidatedExecutionEngine = engine_core::UserExecutionEngine;

/// Legacy name of the request-scoped engine: now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type RequestScopedExecutionEngine = engine_core::UserExecutionEngine;

/// Legacy name of the engine with WebSocket events (events now go through the factory's hub): now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type ExecutionEngineWithWebSocketEvents = engine_core::UserExecutionEngine;

/// Legacy name of the MCP-enhanced engine (register MCP tools as `engine_core::Tool`s): now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type MCPEnhancedExecutionEngine = engine_core::UserExecutionEngine;

/// Legacy name of the supervisor adapter: now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type SupervisorExecutionEngineAdapter = engine_core::UserExecutionEngine;

/// Legacy name of the consolidated wrapper: now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type ConsolidatedExecutionEngineWrapper = engine_core::UserExecutionEngine;

/// Legacy name of the generic adapter: now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type GenericExecutionEngineAdapter = engine_core::UserExecutionEngine;

/// Legacy name of the engine adapter: now `engine_core::UserExecutionEngine`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionEngine` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type ExecutionEngineAdapter = engine_core::UserExecutionEngine;

// Factories: the one factory.

/// Legacy name of the unified factory: now `engine_factory::ExecutionEngineFactory`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_factory::ExecutionEngineFactory` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type UnifiedExecutionEngineFactory = engine_factory::ExecutionEngineFactory;

/// Legacy name of the per-user factory: now `engine_factory::ExecutionEngineFactory`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_factory::ExecutionEngineFactory` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type UserExecutionEngineFactory = engine_factory::ExecutionEngineFactory;

/// Legacy name of the user-scoped factory: now `engine_factory::ExecutionEngineFactory`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_factory::ExecutionEngineFactory` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type UserScopedEngineFactory = engine_factory::ExecutionEngineFactory;

// Tool execution: the per-run tool dispatcher (reached through `RunContext::call_tool`).

/// Legacy name of the tool execution engine: now `engine_core::ToolDispatcher`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::ToolDispatcher` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type ToolExecutionEngine = engine_core::ToolDispatcher;

/// Legacy name of the unified tool execution engine: now `engine_core::ToolDispatcher`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::ToolDispatcher` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type UnifiedToolExecutionEngine = engine_core::ToolDispatcher;

/// Legacy name of the unified tool dispatcher: now `engine_core::ToolDispatcher`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::ToolDispatcher` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type UnifiedToolDispatcher = engine_core::ToolDispatcher;

/// Legacy name of the request-scoped tool dispatcher: now `engine_core::ToolDispatcher`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::ToolDispatcher` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type RequestScopedToolDispatcher = engine_core::ToolDispatcher;

// Errors.

/// Legacy name of the engine error type: now `engine_core::EngineError`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::EngineError` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type UserExecutionEngineError = engine_core::EngineError;

/// Legacy name of the factory error type: now `engine_factory::FactoryError`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_factory::FactoryError` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type ExecutionEngineFactoryError = engine_factory::FactoryError;

// Contexts: the legacy context factories are the context builder.

/// Legacy name of the context factory; call `engine_core::UserExecutionContext::builder()`: now `engine_core::UserExecutionContextBuilder`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionContextBuilder` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type UserExecutionContextFactory = engine_core::UserExecutionContextBuilder;

/// Legacy name of the context factory; call `engine_core::UserExecutionContext::builder()`: now `engine_core::UserExecutionContextBuilder`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::UserExecutionContextBuilder` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type UserContextFactory = engine_core::UserExecutionContextBuilder;

// Configuration.

/// Legacy name of the engine configuration (same name, canonical path in engine-core; factory limits are in `engine_factory::FactoryConfig`): now `engine_core::EngineConfig`.
#[deprecated(
    since = "0.1.0",
    note = "use `engine_core::EngineConfig` instead; `cargo ssot migrate --fix` rewrites this"
)]
pub type EngineConfig = engine_core::EngineConfig;
