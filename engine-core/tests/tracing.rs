//! Every run has a `tracing` span carrying its user, thread and run ids, and message contents
//! never reach the logs. Its own test binary with a global subscriber: tracing caches callsite
//! interest process-wide, so a scoped subscriber in a binary whose other tests run in parallel
//! without one can miss spans.

use std::sync::{Arc, Mutex};

use engine_core::{
    async_trait, Agent, AgentRegistry, BoxError, RunContext, RunStatus, UserExecutionContext,
};
use engine_factory::{ExecutionEngineFactory, FactoryConfig};

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Refuses;

#[async_trait]
impl Agent for Refuses {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        ctx.think("considering").await;
        Err("the model refused".into())
    }
}

#[tokio::test]
async fn every_run_has_a_span_with_its_ids_and_message_contents_are_never_logged() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::NEW)
        .with_ansi(false)
        .init();
    let ctx = UserExecutionContext::new("alice", "thread-a", "run-0").unwrap();
    let registry = AgentRegistry::builder()
        .agent("refuses", || Refuses)
        .build()
        .unwrap();
    let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry).unwrap();
    let engine = factory.create_for_user(&ctx).unwrap();
    let out = engine
        .execute(&ctx, "refuses", "my password is hunter2")
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Failed);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("agent_run{user_id=alice thread_id=thread-a run_id=run-0 agent=\"refuses\"}"),
        "span with ids missing:\n{text}"
    );
    assert!(text.contains("run did not complete"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "message contents were logged:\n{text}"
    );
}
