//! A crate that tries to build and stop an engine without engine-factory, in a workspace that
//! denies deprecated items (migration phase 2). Every step must fail to compile.
#![deny(deprecated)]

use std::sync::Arc;

use engine_core::factory_only::{assemble_engine, engine_kit, shutdown, take_factory_key};
use engine_core::{
    AgentRegistry, Delivery, EngineConfig, EventEnvelope, EventSink, UserExecutionContext, UserId,
};

struct Discard(UserId);

impl EventSink for Discard {
    fn user_id(&self) -> &UserId {
        &self.0
    }
    fn deliver(&self, _event: EventEnvelope) -> Delivery<'_> {
        Delivery::ready(Ok(()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let ctx = UserExecutionContext::new("alice", "thread-1", "run-1").unwrap();
    let key = take_factory_key().unwrap();
    let sink = Arc::new(Discard(ctx.user_id().clone()));
    let registry = AgentRegistry::builder().build().unwrap();
    let kit = engine_kit(key, EngineConfig::default(), registry);
    let engine = assemble_engine(key, ctx, &kit, sink).unwrap();
    shutdown(key, &engine).await;
}
