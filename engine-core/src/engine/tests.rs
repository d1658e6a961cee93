//! Unit tests of the engine's rules, driven through a recording sink.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::*;
use crate::limits::{QUEUED_NOTICE, REDACTED};
use crate::multitask::MultitaskPolicy;
use crate::registry::AgentRegistry;
use crate::{
    Agent, AgentEvent, BoxError, Delivery, DeliveryError, EventEnvelope, RunContext, RunStatus,
    Tool, ToolContext, ToolError, ToolStatus, UserExecutionContext,
};

#[derive(Clone, Copy, PartialEq)]
enum SinkMode {
    Ok,
    Fail,
    Panic,
    Hang,
}

struct RecordingSink {
    user: UserId,
    mode: SinkMode,
    events: Mutex<Vec<EventEnvelope>>,
}

impl EventSink for RecordingSink {
    fn user_id(&self) -> &UserId {
        &self.user
    }
    fn deliver(&self, event: EventEnvelope) -> Delivery<'_> {
        match self.mode {
            SinkMode::Ok => {
                self.events.lock().unwrap().push(event);
                Delivery::ready(Ok(()))
            }
            SinkMode::Fail => Delivery::ready(Err(DeliveryError::Failed("broken pipe".into()))),
            SinkMode::Panic => panic!("sink exploded"),
            SinkMode::Hang => Delivery::pending(std::future::pending()),
        }
    }
}

impl RecordingSink {
    fn kinds(&self, run: &RunId) -> Vec<&'static str> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| &e.run_id == run)
            .map(|e| e.event.kind())
            .collect()
    }
    fn of_run(&self, run: &RunId) -> Vec<EventEnvelope> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| &e.run_id == run)
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
enum Step {
    Think(&'static str),
    Tool(&'static str, Value),
    Sleep(u64),
    Fail,
    Panic,
    AwaitCancel(Arc<AtomicUsize>),
}

struct Script {
    steps: Vec<Step>,
    starts: Arc<AtomicUsize>,
}

#[async_trait]
impl Agent for Script {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        let mut out = vec![input.to_owned()];
        for step in self.steps.clone() {
            match step {
                Step::Think(t) => ctx.think(t).await,
                Step::Tool(name, args) => match ctx.call_tool(name, args).await {
                    Ok(v) => out.push(v.to_string()),
                    Err(e) => out.push(format!("error: {e}")),
                },
                Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Step::Fail => return Err("the model refused".into()),
                Step::Panic => panic!("agent bug"),
                Step::AwaitCancel(seen) => {
                    ctx.cancelled().await;
                    seen.fetch_add(1, Ordering::SeqCst);
                    return Ok("stopped".into());
                }
            }
        }
        Ok(out.join("|"))
    }
}

struct Echo;
#[async_trait]
impl Tool for Echo {
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, BoxError> {
        Ok(json!({ "echo": args, "user": ctx.context().user_id().as_str() }))
    }
}

struct SlowTool {
    saw_cancel: Arc<AtomicUsize>,
}
#[async_trait]
impl Tool for SlowTool {
    async fn call(&self, _args: Value, ctx: &ToolContext) -> Result<Value, BoxError> {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => Ok(json!("done")),
            () = ctx.cancelled() => {
                self.saw_cancel.fetch_add(1, Ordering::SeqCst);
                Err("cancelled".into())
            }
        }
    }
}

struct PanicTool;
#[async_trait]
impl Tool for PanicTool {
    async fn call(&self, _args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        panic!("tool bug")
    }
}

struct FailTool;
#[async_trait]
impl Tool for FailTool {
    async fn call(&self, _args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        Err("upstream 503".into())
    }
}

struct Fixture {
    engine: UserExecutionEngine,
    sink: Arc<RecordingSink>,
    ctx: UserExecutionContext,
    starts: Arc<AtomicUsize>,
    tool_saw_cancel: Arc<AtomicUsize>,
}

fn fixture_with(steps: Vec<Step>, config: EngineConfig, mode: SinkMode) -> Fixture {
    let starts = Arc::new(AtomicUsize::new(0));
    let tool_saw_cancel = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let registry = AgentRegistry::builder()
        .agent("script", move || Script {
            steps: steps.clone(),
            starts: s.clone(),
        })
        .tool("echo", Echo)
        .tool(
            "slow",
            SlowTool {
                saw_cancel: tool_saw_cancel.clone(),
            },
        )
        .tool("panics", PanicTool)
        .tool("fails", FailTool)
        .tool("admin_only", Echo)
        .permission_policy(|u: &UserId, t: &str| t != "admin_only" || u.as_str() == "root-admin")
        .build()
        .unwrap();
    let ctx = UserExecutionContext::new("alice", "thread-a", "run-0").unwrap();
    let sink = Arc::new(RecordingSink {
        user: ctx.user_id().clone(),
        mode,
        events: Mutex::new(Vec::new()),
    });
    let engine =
        UserExecutionEngine::assemble(ctx.clone(), kit(config, registry), sink.clone()).unwrap();
    Fixture {
        engine,
        sink,
        ctx,
        starts,
        tool_saw_cancel,
    }
}

fn fixture(steps: Vec<Step>) -> Fixture {
    fixture_with(steps, EngineConfig::default(), SinkMode::Ok)
}

fn assert_well_formed(events: &[EventEnvelope]) {
    assert!(!events.is_empty());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "sequence numbers contiguous from 1");
        if i > 0 {
            assert!(e.timestamp_us >= events[i - 1].timestamp_us);
        }
    }
    assert_eq!(events[0].event.kind(), "agent_started");
    assert!(events.last().unwrap().event.is_terminal());
    assert_eq!(events.iter().filter(|e| e.event.is_terminal()).count(), 1);
    let exec = events
        .iter()
        .filter(|e| e.event.kind() == "tool_executing")
        .count();
    let done = events
        .iter()
        .filter(|e| e.event.kind() == "tool_completed")
        .count();
    assert_eq!(exec, done, "every tool_executing has its tool_completed");
}

fn terminal_status(events: &[EventEnvelope]) -> RunStatus {
    match &events.last().unwrap().event {
        AgentEvent::AgentCompleted { status, .. } => *status,
        other => panic!("not terminal: {other:?}"),
    }
}

fn tool_statuses(events: &[EventEnvelope]) -> Vec<ToolStatus> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::ToolCompleted { status, .. } => Some(*status),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn golden_run_emits_ordered_events_and_an_answer() {
    let f = fixture(vec![
        Step::Think("planning"),
        Step::Tool("echo", json!({"q": "hi", "api_token": "sekrit"})),
        Step::Think("answering"),
    ]);
    let out = f.engine.execute(&f.ctx, "script", "hello").await.unwrap();
    assert_eq!(out.status(), RunStatus::Completed);
    assert!(out.is_success());
    let answer = out.result().unwrap().to_owned();
    assert!(answer.starts_with("hello|"), "{answer}");
    assert!(answer.contains("\"user\":\"alice\""));
    assert_eq!(
        f.sink.kinds(f.ctx.run_id()),
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_thinking",
            "agent_completed"
        ]
    );
    let events = f.sink.of_run(f.ctx.run_id());
    assert_well_formed(&events);
    for e in &events {
        assert_eq!(e.user_id.as_str(), "alice");
        assert_eq!(e.thread_id.as_str(), "thread-a");
    }
    match &events[2].event {
        AgentEvent::ToolExecuting {
            arguments, call_id, ..
        } => {
            assert_eq!(arguments["api_token"], REDACTED);
            assert_eq!(*call_id, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out.events_delivered, 6);
    assert_eq!(out.events_dropped, 0);
    let stats = f.engine.stats();
    assert_eq!((stats.total_runs, stats.completed_runs), (1, 1));
    assert_eq!(stats.events_delivered, 6);
    assert_eq!(stats.active_runs, 0);
}

#[tokio::test]
async fn refusals_happen_before_anything_runs() {
    let f = fixture(vec![]);
    let bob = UserExecutionContext::new("bob", "thread-b", "run-b").unwrap();
    let err = f.engine.execute(&bob, "script", "x").await.unwrap_err();
    assert_eq!(
        err,
        EngineError::UserMismatch {
            engine_user: UserId::new("alice").unwrap(),
            context_user: UserId::new("bob").unwrap()
        }
    );
    assert!(err.to_string().contains("alice") && err.to_string().contains("bob"));
    let err = f.engine.execute(&f.ctx, "nope", "x").await.unwrap_err();
    assert!(matches!(err, EngineError::UnknownAgent { .. }));
    assert!(
        err.to_string().contains("script"),
        "lists registered agents: {err}"
    );
    assert!(f.sink.events.lock().unwrap().is_empty());
    assert_eq!(f.starts.load(Ordering::SeqCst), 0);
    assert_eq!(f.engine.stats().total_runs, 0);
}

#[tokio::test]
async fn a_sink_bound_to_another_user_is_refused() {
    let ctx = UserExecutionContext::new("alice", "t", "r").unwrap();
    let sink = Arc::new(RecordingSink {
        user: UserId::new("mallory").unwrap(),
        mode: SinkMode::Ok,
        events: Mutex::new(Vec::new()),
    });
    let registry = AgentRegistry::builder().build().unwrap();
    let err = UserExecutionEngine::assemble(ctx, kit(EngineConfig::default(), registry), sink)
        .unwrap_err();
    assert!(matches!(err, EngineError::SinkUserMismatch { .. }));
}

#[tokio::test(start_paused = true)]
async fn duplicate_active_run_is_refused_and_cancel_unknown_is_typed() {
    let f = fixture(vec![Step::Sleep(1000)]);
    let h = f.engine.spawn(&f.ctx, "script", "a").unwrap();
    let err = f.engine.spawn(&f.ctx, "script", "b").unwrap_err();
    assert!(matches!(err, EngineError::DuplicateRun { .. }));
    let unknown = RunId::new("run-unknown").unwrap();
    assert_eq!(
        f.engine.cancel(&unknown).unwrap_err(),
        EngineError::UnknownRun { run_id: unknown }
    );
    assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Completed);
    // Once finished, the run id may be used again.
    assert!(f.engine.execute(&f.ctx, "script", "c").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_queues_runs_and_reports_the_wait() {
    // Runs of one thread side by side, so only the concurrency limit makes them wait.
    let config = EngineConfig::builder()
        .max_concurrent_runs(3)
        .multitask(MultitaskPolicy::Parallel)
        .build()
        .unwrap();
    let f = fixture_with(vec![Step::Sleep(200)], config, SinkMode::Ok);
    let started = tokio::time::Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|_| f.engine.spawn(&f.ctx.new_run(), "script", "x").unwrap())
        .collect();
    let mut waited = 0;
    for h in handles {
        let out = h.outcome().await.unwrap();
        assert_eq!(out.status(), RunStatus::Completed);
        if out.queue_wait >= Duration::from_millis(150) {
            waited += 1;
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(waited, 3, "three runs waited for a slot");
    let stats = f.engine.stats();
    assert!(stats.max_queue_wait >= Duration::from_millis(200));
    assert!(stats.avg_execution_time >= Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn a_run_queued_over_a_second_gets_the_queued_notice() {
    let config = EngineConfig::builder()
        .max_concurrent_runs(1)
        .multitask(MultitaskPolicy::Parallel)
        .build()
        .unwrap();
    let f = fixture_with(vec![Step::Sleep(1500)], config, SinkMode::Ok);
    let first = f.engine.spawn(&f.ctx, "script", "1").unwrap();
    let second_ctx = f.ctx.new_run();
    let second = f.engine.spawn(&second_ctx, "script", "2").unwrap();
    first.outcome().await.unwrap();
    second.outcome().await.unwrap();
    let kinds = f.sink.kinds(second_ctx.run_id());
    assert_eq!(kinds[..2], ["agent_started", "agent_thinking"]);
    let events = f.sink.of_run(second_ctx.run_id());
    assert!(
        matches!(&events[1].event, AgentEvent::AgentThinking { reasoning } if reasoning == QUEUED_NOTICE)
    );
    assert!(!f.sink.of_run(f.ctx.run_id()).iter().any(
        |e| matches!(&e.event, AgentEvent::AgentThinking { reasoning } if reasoning == QUEUED_NOTICE)
    ));
}

#[tokio::test(start_paused = true)]
async fn timeout_ends_the_run_timed_out_and_closes_the_open_tool_call() {
    let config = EngineConfig::builder()
        .run_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let f = fixture_with(vec![Step::Tool("slow", json!({}))], config, SinkMode::Ok);
    let out = f.engine.execute(&f.ctx, "script", "x").await.unwrap();
    assert_eq!(out.status(), RunStatus::TimedOut);
    assert!(out.error().unwrap().contains("timed out after 0.1s"));
    let events = f.sink.of_run(f.ctx.run_id());
    assert_well_formed(&events);
    assert_eq!(tool_statuses(&events), [ToolStatus::Timeout]);
    assert!(events.iter().any(|e| e.event.kind() == "agent_error"));
    assert_eq!(f.engine.stats().timed_out_runs, 1);
}

#[tokio::test]
async fn agent_error_and_panic_fail_only_that_run() {
    for (step, needle) in [
        (Step::Fail, "the model refused"),
        (Step::Panic, "agent bug"),
    ] {
        let f = fixture(vec![step]);
        let out = f.engine.execute(&f.ctx, "script", "x").await.unwrap();
        assert_eq!(out.status(), RunStatus::Failed);
        assert!(out.error().unwrap().contains(needle), "{:?}", out.error());
        let events = f.sink.of_run(f.ctx.run_id());
        assert_well_formed(&events);
        assert_eq!(terminal_status(&events), RunStatus::Failed);
        assert_eq!(f.engine.stats().failed_runs, 1);
        // Still usable.
        let next = f.ctx.new_run();
        let out = f.engine.execute(&next, "script", "y").await.unwrap();
        assert_eq!(
            out.status(),
            RunStatus::Failed,
            "same script fails again, but runs"
        );
        assert!(f.engine.is_active());
    }
}

#[tokio::test(start_paused = true)]
async fn tool_failures_are_reported_with_their_status() {
    let config = EngineConfig::builder()
        .tool_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let f = fixture_with(
        vec![
            Step::Tool("slow", json!({})),
            Step::Tool("panics", json!({})),
            Step::Tool("fails", json!({})),
            Step::Tool("missing", json!({})),
            Step::Tool("admin_only", json!({})),
            Step::Tool("echo", json!({"n": 1})),
        ],
        config,
        SinkMode::Ok,
    );
    let out = f.engine.execute(&f.ctx, "script", "x").await.unwrap();
    assert_eq!(
        out.status(),
        RunStatus::Completed,
        "tool errors do not fail the run"
    );
    let answer = out.result().unwrap();
    assert!(
        answer.contains("tool slow timed out after 50 ms"),
        "{answer}"
    );
    assert!(
        answer.contains("tool panics panicked: tool bug"),
        "{answer}"
    );
    assert!(
        answer.contains("tool fails failed: upstream 503"),
        "{answer}"
    );
    assert!(answer.contains("Tool missing not found"), "{answer}");
    assert!(answer.contains("permission denied"), "{answer}");
    let events = f.sink.of_run(f.ctx.run_id());
    assert_well_formed(&events);
    assert_eq!(
        tool_statuses(&events),
        [
            ToolStatus::Timeout,
            ToolStatus::Error,
            ToolStatus::Error,
            ToolStatus::Error,
            ToolStatus::PermissionDenied,
            ToolStatus::Success
        ]
    );
}

#[tokio::test]
async fn tool_error_type_round_trip() {
    let e = ToolError::NotFound { name: "x".into() };
    assert_eq!(e.to_string(), "Tool x not found");
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_run_reaches_agent_and_tool() {
    let seen = Arc::new(AtomicUsize::new(0));
    let f = fixture(vec![Step::AwaitCancel(seen.clone())]);
    let h = f.engine.spawn(&f.ctx, "script", "x").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    f.engine.cancel(f.ctx.run_id()).unwrap();
    let out = h.outcome().await.unwrap();
    assert_eq!(out.status(), RunStatus::Cancelled);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the agent saw the cancellation"
    );
    let events = f.sink.of_run(f.ctx.run_id());
    assert_well_formed(&events);
    assert_eq!(terminal_status(&events), RunStatus::Cancelled);

    let g = fixture(vec![Step::Tool("slow", json!({}))]);
    let h = g.engine.spawn(&g.ctx, "script", "x").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.cancel();
    let out = h.outcome().await.unwrap();
    assert_eq!(out.status(), RunStatus::Cancelled);
    assert_eq!(
        g.tool_saw_cancel.load(Ordering::SeqCst),
        1,
        "the tool saw it"
    );
    let events = g.sink.of_run(g.ctx.run_id());
    assert_well_formed(&events);
    assert_eq!(tool_statuses(&events), [ToolStatus::Cancelled]);
    assert_eq!(g.engine.stats().cancelled_runs, 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_queued_run_never_starts_the_agent() {
    let config = EngineConfig::builder()
        .max_concurrent_runs(1)
        .build()
        .unwrap();
    let f = fixture_with(vec![Step::Sleep(500)], config, SinkMode::Ok);
    let first = f.engine.spawn(&f.ctx, "script", "1").unwrap();
    let queued_ctx = f.ctx.new_run();
    let queued = f.engine.spawn(&queued_ctx, "script", "2").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    f.engine.cancel(queued_ctx.run_id()).unwrap();
    let out = queued.outcome().await.unwrap();
    assert_eq!(out.status(), RunStatus::Cancelled);
    assert_eq!(out.execution_time, Duration::ZERO);
    assert_eq!(
        first.outcome().await.unwrap().status(),
        RunStatus::Completed
    );
    assert_eq!(
        f.starts.load(Ordering::SeqCst),
        1,
        "only the first agent started"
    );
    assert_eq!(
        f.sink.kinds(queued_ctx.run_id()),
        ["agent_started", "agent_completed"]
    );
}

#[tokio::test]
async fn history_keeps_the_newest_runs() {
    let f = fixture(vec![]);
    let mut last = None;
    for i in 0..110 {
        let ctx = f.ctx.new_run();
        f.engine
            .execute(&ctx, "script", format!("m{i}"))
            .await
            .unwrap();
        last = Some(ctx.run_id().clone());
    }
    let history = f.engine.history();
    assert_eq!(history.len(), 100);
    assert_eq!(history[0].result(), Some("m10"));
    assert_eq!(history.last().unwrap().run_id, last.unwrap());
    let stats = f.engine.stats();
    assert_eq!(stats.total_runs, 110);
    assert_eq!(stats.completed_runs, 110);
    assert_eq!(stats.history_len, 100);
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_runs_with_terminal_events_and_is_idempotent() {
    let f = fixture(vec![Step::Sleep(10_000)]);
    let runs: Vec<_> = (0..5)
        .map(|_| {
            let ctx = f.ctx.new_run();
            f.engine.spawn(&ctx, "script", "x").unwrap();
            ctx
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    f.engine.shutdown().await;
    for ctx in &runs {
        let events = f.sink.of_run(ctx.run_id());
        assert_well_formed(&events);
        assert_eq!(terminal_status(&events), RunStatus::Cancelled);
    }
    assert!(!f.engine.is_active());
    assert_eq!(f.engine.active_run_count(), 0);
    assert!(f.engine.history().is_empty());
    f.engine.shutdown().await;
    let err = f
        .engine
        .execute(&f.ctx.new_run(), "script", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::EngineInactive { .. }));
    assert!(!f.engine.begin_shutdown(), "second shutdown is a no-op");
}

#[tokio::test(start_paused = true)]
async fn delivery_failures_never_fail_a_run_and_are_counted() {
    for mode in [SinkMode::Fail, SinkMode::Panic, SinkMode::Hang] {
        let f = fixture_with(
            vec![Step::Think("a"), Step::Tool("echo", json!({}))],
            EngineConfig::default(),
            mode,
        );
        let out = f.engine.execute(&f.ctx, "script", "x").await.unwrap();
        assert_eq!(out.status(), RunStatus::Completed);
        assert_eq!(out.events_delivered, 0);
        assert_eq!(out.events_dropped, 5);
        assert_eq!(f.engine.stats().events_dropped, 5);
    }
}

/// A runtime of its own, for tests that drop one under the engine.
fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A run's task dropped with its runtime (before or after its first poll) still releases
/// the engine's shutdown and the thread's later runs: `Run`'s drop fires its done signal.
#[test]
fn shutdown_does_not_wait_for_runs_their_runtime_dropped() {
    let f = fixture(vec![Step::Sleep(10_000)]);
    let rt = current_thread_runtime();
    let handles = rt.block_on(async {
        // Started: asleep inside the agent when the runtime goes.
        let started = f.engine.spawn(&f.ctx.new_run(), "script", "x").unwrap();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        // Accepted, never polled.
        let queued = f.engine.spawn(&f.ctx.new_run(), "script", "x").unwrap();
        [started, queued]
    });
    assert_eq!(f.engine.active_run_count(), 2);
    drop(rt);
    let rt = current_thread_runtime();
    rt.block_on(async {
        // Their handles learn it as a typed error, not a hang.
        for handle in handles {
            let run_id = handle.run_id().clone();
            let outcome = tokio::time::timeout(Duration::from_secs(10), handle.outcome())
                .await
                .expect("a dropped run's handle returns");
            assert!(
                matches!(&outcome, Err(EngineError::RunAborted { run_id: r, .. }) if *r == run_id),
                "{outcome:?}"
            );
        }
        tokio::time::timeout(Duration::from_secs(10), f.engine.shutdown())
            .await
            .expect("shutdown returns once the dropped runs are done");
    });
}

/// `execute` polls the run in the caller's task; a caller that stops waiting (here a timeout
/// drops its future mid-run) hands the run to a task of its own, which finishes it with its
/// terminal event and releases it in the engine.
#[tokio::test(start_paused = true)]
async fn an_awaited_run_goes_on_when_its_caller_stops_waiting() {
    let f = fixture(vec![
        Step::Think("before"),
        Step::Sleep(500),
        Step::Think("after"),
    ]);
    let waited = tokio::time::timeout(
        Duration::from_millis(100),
        f.engine.execute(&f.ctx, "script", "x"),
    )
    .await;
    assert!(waited.is_err(), "the caller gave up before the run ended");
    assert_eq!(f.engine.active_run_count(), 1, "the run is still going");
    for _ in 0..100 {
        if f.engine.active_run_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.engine.active_run_count(), 0, "the run ended by itself");
    let run = f.ctx.run_id();
    assert_eq!(
        f.sink.kinds(run),
        [
            "agent_started",
            "agent_thinking",
            "agent_thinking",
            "agent_completed"
        ]
    );
    assert_well_formed(&f.sink.of_run(run));
    let history = f.engine.history();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].status(), RunStatus::Completed);
}

/// Runs that end without ever waiting still take the caller's task budget: a caller awaiting
/// one after another on a current-thread runtime lets the runtime's other tasks in.
#[tokio::test]
async fn a_caller_awaiting_quick_runs_back_to_back_lets_other_tasks_run() {
    let f = fixture(vec![Step::Think("quick")]);
    let ticks = Arc::new(AtomicUsize::new(0));
    let t = Arc::clone(&ticks);
    let other = tokio::spawn(async move {
        loop {
            t.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    });
    for _ in 0..500 {
        let out = f.engine.execute(&f.ctx.new_run(), "script", "x").await;
        assert_eq!(out.unwrap().status(), RunStatus::Completed);
    }
    assert!(
        ticks.load(Ordering::Relaxed) > 0,
        "500 runs awaited back to back never let another task run"
    );
    other.abort();
}

/// A caller whose runtime goes away while it awaits `execute` (the run inside its task) does
/// not leave the run behind: the engine's shutdown still returns.
#[test]
fn an_awaited_run_dropped_with_its_runtime_is_released() {
    let f = fixture(vec![Step::Sleep(10_000)]);
    let rt = current_thread_runtime();
    rt.block_on(async {
        let engine = f.engine.clone();
        let ctx = f.ctx.clone();
        tokio::spawn(async move { engine.execute(&ctx, "script", "x").await });
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
    });
    assert_eq!(f.engine.active_run_count(), 1);
    drop(rt);
    let rt = current_thread_runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), f.engine.shutdown())
            .await
            .expect("shutdown returns once the dropped run is done");
    });
}

#[test]
fn executing_outside_a_runtime_is_a_typed_error_not_a_panic() {
    let f = fixture(vec![]);
    let run = std::pin::pin!(f.engine.execute(&f.ctx, "script", "x"));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(run, &mut cx) {
        std::task::Poll::Ready(Err(EngineError::NoRuntime)) => {}
        other => panic!("expected NoRuntime, got {other:?}"),
    }
    assert_eq!(f.engine.active_run_count(), 0, "nothing registered");
}

#[test]
fn spawning_outside_a_runtime_is_a_typed_error_not_a_panic() {
    let f = fixture(vec![]);
    let err = f.engine.spawn(&f.ctx, "script", "x").unwrap_err();
    assert_eq!(err, EngineError::NoRuntime);
    assert_eq!(f.engine.active_run_count(), 0, "nothing registered");
    assert_eq!(f.engine.stats().total_runs, 0);
}

fn kit(config: EngineConfig, registry: AgentRegistry) -> Arc<crate::run::RunKit> {
    Arc::new(crate::run::RunKit { registry, config })
}
