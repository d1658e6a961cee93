//! What only `engine-factory` may do: take the process's one [`FactoryKey`], build engines with
//! it, and stop them with it.
//!
//! Rust has no "friend crate" visibility, so these items must be `pub` for the factory to reach
//! them. Two locks keep everybody else out:
//!
//! - **compile time**: every function here is `#[deprecated]`, so a call from any crate warns,
//!   and fails to build under `RUSTFLAGS="-D deprecated"` (phase 2 of the migration).
//!   `engine-factory` calls them under `#[expect(deprecated)]`;
//! - **run time**: each needs a `&'static FactoryKey`, and one process has exactly one key.
//!   `engine-factory` takes it the first time a factory is created and shares it between all
//!   its factories; any later [`take_factory_key`] gets [`KeyTaken`]. If other code took it
//!   first, creating a factory fails with an error that names where it was taken.
//!
//! `cargo ssot migrate --check` (rule SSOT003) also reports any use of this module outside
//! `engine-factory`.

use std::panic::Location;
use std::sync::Arc;

use once_cell::sync::OnceCell;

use crate::run::RunKit;
use crate::{
    AgentRegistry, EngineConfig, EngineError, EventSink, UserExecutionContext, UserExecutionEngine,
};

/// Proof of being the engine factory. One exists per process; it cannot be built, cloned or
/// copied, only borrowed from [`take_factory_key`] by its first caller.
#[derive(Debug)]
pub struct FactoryKey {
    _private: (),
}

/// The key had already been taken when [`take_factory_key`] was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine factory key was already taken at {taken_at}; engines are built only by engine_factory::ExecutionEngineFactory, so remove the code at {taken_at} that calls engine_core::factory_only")]
#[non_exhaustive]
pub struct KeyTaken {
    /// Where the key was taken (file:line:column of the first caller).
    pub taken_at: &'static Location<'static>,
}

static KEY: FactoryKey = FactoryKey { _private: () };
static TAKEN_AT: OnceCell<&'static Location<'static>> = OnceCell::new();

/// Takes the process's one [`FactoryKey`]. Only the first call, ever, gets it.
///
/// # Errors
/// [`KeyTaken`] naming the first caller's source location on every later call.
#[deprecated(
    note = "reserved for engine-factory: obtain engines from engine_factory::ExecutionEngineFactory::create_for_user"
)]
#[track_caller]
pub fn take_factory_key() -> Result<&'static FactoryKey, KeyTaken> {
    let caller = Location::caller();
    match TAKEN_AT.try_insert(caller) {
        Ok(_) => Ok(&KEY),
        Err((taken_at, _)) => Err(KeyTaken { taken_at }),
    }
}

/// The configuration and agents every engine of one factory shares, built once per factory
/// with [`engine_kit`] (engines hold it by reference count instead of a copy each).
#[derive(Debug, Clone)]
pub struct EngineKit(pub(crate) Arc<RunKit>);

/// The kit the engines of one factory share.
#[deprecated(
    note = "engines are built only by the factory: use engine_factory::ExecutionEngineFactory::create_for_user"
)]
pub fn engine_kit(
    _key: &'static FactoryKey,
    config: EngineConfig,
    registry: AgentRegistry,
) -> EngineKit {
    EngineKit(Arc::new(RunKit { registry, config }))
}

/// Builds an engine for `context`'s user with `sink`.
///
/// # Errors
/// [`EngineError::SinkUserMismatch`] when `sink` is bound to another user.
#[deprecated(
    note = "engines are built only by the factory: use engine_factory::ExecutionEngineFactory::create_for_user"
)]
pub fn assemble_engine(
    _key: &'static FactoryKey,
    context: UserExecutionContext,
    kit: &EngineKit,
    sink: Arc<dyn EventSink>,
) -> Result<UserExecutionEngine, EngineError> {
    UserExecutionEngine::assemble(context, Arc::clone(&kit.0), sink)
}

/// Deactivates `engine` and cancels its runs without waiting; `true` if this call deactivated
/// it. Later `execute`/`spawn` calls get [`EngineError::EngineInactive`].
#[deprecated(
    note = "engines are stopped only through their EngineHandle (close or drop) or the factory (cleanup_user, shutdown)"
)]
pub fn begin_shutdown(_key: &'static FactoryKey, engine: &UserExecutionEngine) -> bool {
    engine.begin_shutdown()
}

/// Stops `engine`: cancels its runs, waits until each has emitted its terminal event, clears its
/// history. Idempotent.
#[deprecated(
    note = "engines are stopped only through their EngineHandle (close or drop) or the factory (cleanup_user, shutdown)"
)]
pub async fn shutdown(_key: &'static FactoryKey, engine: &UserExecutionEngine) {
    engine.shutdown().await;
}
