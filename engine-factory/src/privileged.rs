//! The one file of engine-factory that uses `engine_core::factory_only`: it takes the process's
//! one [`FactoryKey`] and keeps the three things the key unlocks (building, stopping, and
//! waiting for an engine) behind crate-private functions.
#![expect(
    deprecated,
    reason = "engine_core::factory_only is deprecated for every crate but this one"
)]

use std::sync::Arc;

use engine_core::factory_only::{self, EngineKit, FactoryKey, KeyTaken};
use engine_core::{
    AgentRegistry, EngineConfig, EngineError, EventSink, UserExecutionContext, UserExecutionEngine,
};
use once_cell::sync::Lazy;

/// Taken the first time any factory is created, then shared by every factory of the process.
static KEY: Lazy<Result<&'static FactoryKey, KeyTaken>> =
    Lazy::new(|| factory_only::take_factory_key());

/// The process's key, or where somebody else took it.
pub(crate) fn key() -> Result<&'static FactoryKey, KeyTaken> {
    *KEY
}

/// The configuration and agents shared by every engine of one factory.
pub(crate) fn kit(
    key: &'static FactoryKey,
    config: EngineConfig,
    registry: AgentRegistry,
) -> EngineKit {
    factory_only::engine_kit(key, config, registry)
}

/// Builds an engine for `context`'s user with `sink`.
pub(crate) fn assemble(
    key: &'static FactoryKey,
    context: UserExecutionContext,
    kit: &EngineKit,
    sink: Arc<dyn EventSink>,
) -> Result<UserExecutionEngine, EngineError> {
    factory_only::assemble_engine(key, context, kit, sink)
}

/// Deactivates `engine` and cancels its runs without waiting.
pub(crate) fn begin_shutdown(key: &'static FactoryKey, engine: &UserExecutionEngine) {
    factory_only::begin_shutdown(key, engine);
}

/// Stops `engine` and waits until each of its runs has emitted its terminal event.
pub(crate) async fn shutdown(key: &'static FactoryKey, engine: &UserExecutionEngine) {
    factory_only::shutdown(key, engine).await;
}
