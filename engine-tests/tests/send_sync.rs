//! Which public types may cross threads (tokio's `async_send_sync` habit): every public type of
//! engine-core, engine-factory and engine-gateway is `Send + Sync` (and `Unpin` where the docs
//! promise a handle or stream), and the futures of the engine's async methods are `Send`, so
//! they run on a multi-thread runtime. A change that loses one of these fails to compile here.

use std::future::Future;

use engine_core::*;
use engine_factory::*;
use engine_gateway::*;
use static_assertions::assert_impl_all;

assert_impl_all!(UserId: Send, Sync, Unpin, Clone);
assert_impl_all!(ThreadId: Send, Sync, Unpin, Clone);
assert_impl_all!(RunId: Send, Sync, Unpin, Clone);
assert_impl_all!(RequestId: Send, Sync, Unpin, Clone);
assert_impl_all!(IdError: Send, Sync, std::error::Error);
assert_impl_all!(IdRejection: Send, Sync, Copy);
assert_impl_all!(UserExecutionContext: Send, Sync, Unpin, Clone);
assert_impl_all!(UserExecutionContextBuilder: Send, Sync);
assert_impl_all!(EngineConfig: Send, Sync, Clone);
assert_impl_all!(EngineConfigBuilder: Send, Sync);
assert_impl_all!(ConfigError: Send, Sync, std::error::Error);
assert_impl_all!(ContextError: Send, Sync, std::error::Error);
assert_impl_all!(EngineError: Send, Sync, std::error::Error);
assert_impl_all!(ToolError: Send, Sync, std::error::Error);
assert_impl_all!(RegistryError: Send, Sync, std::error::Error);
assert_impl_all!(DeliveryError: Send, Sync, std::error::Error);
assert_impl_all!(AgentEvent: Send, Sync, Clone);
assert_impl_all!(EventEnvelope: Send, Sync, Clone);
assert_impl_all!(RunStatus: Send, Sync, Copy);
assert_impl_all!(ToolStatus: Send, Sync, Copy);
assert_impl_all!(RunEnd: Send, Sync, Clone);
assert_impl_all!(RunOutcome: Send, Sync, Clone);
assert_impl_all!(EngineStats: Send, Sync, Clone);
assert_impl_all!(AgentRegistry: Send, Sync, Unpin, Clone);
assert_impl_all!(AgentRegistryBuilder: Send, Sync);
assert_impl_all!(ToolContext: Send, Sync, Clone);
assert_impl_all!(RunContext: Send, Sync);
assert_impl_all!(ToolDispatcher: Send, Sync);
assert_impl_all!(UserExecutionEngine: Send, Sync, Unpin, Clone);
assert_impl_all!(RunHandle: Send, Sync, Unpin);
assert_impl_all!(Delivery<'static>: Send);
assert_impl_all!(factory_only::FactoryKey: Send, Sync);
assert_impl_all!(factory_only::KeyTaken: Send, Sync, std::error::Error);

assert_impl_all!(ExecutionEngineFactory: Send, Sync, Unpin, Clone);
assert_impl_all!(FactoryConfig: Send, Sync, Clone);
assert_impl_all!(FactoryConfigBuilder: Send, Sync);
assert_impl_all!(FactoryError: Send, Sync, std::error::Error);
assert_impl_all!(FactoryMetrics: Send, Sync, Clone);
assert_impl_all!(ShutdownReport: Send, Sync, Copy);
assert_impl_all!(EngineHandle: Send, Sync, Unpin);
assert_impl_all!(Subscription: Send, Sync, Unpin, futures_core::Stream);

assert_impl_all!(Gateway: Send, Sync, Clone);
assert_impl_all!(GatewayConfig: Send, Sync, Clone);
assert_impl_all!(TokenKeys: Send, Sync);
assert_impl_all!(Claims: Send, Sync);
assert_impl_all!(AuthError: Send, Sync, std::error::Error);
assert_impl_all!(ClientFrame: Send, Sync);
assert_impl_all!(ServerFrame: Send, Sync);

fn require_send<F: Future + Send>(_: &F) {}

/// The futures of the async methods are `Send` (never awaited: this only has to compile).
#[allow(dead_code, unused_must_use, clippy::let_underscore_future)]
fn async_methods_return_send_futures(
    engine: &UserExecutionEngine,
    handle: EngineHandle,
    factory: &ExecutionEngineFactory,
    ctx: &UserExecutionContext,
    run: RunHandle,
    mut sub: Subscription,
    run_ctx: &mut RunContext,
) {
    require_send(&engine.execute(ctx, "agent", "input"));
    require_send(&run.outcome());
    require_send(&handle.close());
    require_send(&factory.shutdown());
    require_send(&factory.cleanup_user(ctx.user_id()));
    require_send(&sub.recv());
    require_send(&run_ctx.think("thinking"));
    require_send(&run_ctx.call_tool("tool", serde_json::Value::Null));
}

/// The same promise at run time: a run's future moves to another worker of a multi-thread
/// runtime and completes there, with its events read on a third task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_future_runs_on_another_worker() {
    let (registry, _) = engine_tests::script_registry();
    let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry).unwrap();
    let ctx = UserExecutionContext::new("alice", "thread-1", "run-1").unwrap();
    let mut sub = factory.subscribe(ctx.user_id());
    let engine = factory.create_for_user(&ctx).unwrap();
    let run = {
        let (engine, ctx) = (engine.engine().clone(), ctx.clone());
        tokio::spawn(async move { engine.execute(&ctx, "script", "think:hi").await })
    };
    let reader = tokio::spawn(async move {
        let mut kinds = Vec::new();
        while let Some(e) = sub.recv().await {
            kinds.push(e.event.kind());
            if e.event.is_terminal() {
                break;
            }
        }
        kinds
    });
    assert_eq!(run.await.unwrap().unwrap().status(), RunStatus::Completed);
    assert_eq!(
        reader.await.unwrap(),
        ["agent_started", "agent_thinking", "agent_completed"]
    );
    engine.close().await;
}
