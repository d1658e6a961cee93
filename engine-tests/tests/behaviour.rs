//! Factory and engine behaviour through the public API: limits, config ranges, queueing,
//! timeouts, failures, cancellation, history, shutdown, reaping and context validation.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use engine_core::limits::{
    ALLOWED_DEFAULTS, FORBIDDEN_PREFIXES, FORBIDDEN_VALUES, MAX_OPERATION_DEPTH, QUEUED_NOTICE,
};
use engine_core::{
    AgentEvent, ContextError, EngineConfig, EngineError, IdRejection, MultitaskPolicy, RunStatus,
    ToolStatus, UserExecutionContext, UserId,
};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, FactoryError};
use engine_tests::{by_run, check_run, drain, script_registry, terminal_status, Observations};

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn ctx(user: &str, run: &str) -> UserExecutionContext {
    UserExecutionContext::new(user, "thread", run).unwrap()
}

fn factory_with(config: FactoryConfig) -> (ExecutionEngineFactory, Arc<Observations>) {
    let (registry, observed) = script_registry();
    (
        ExecutionEngineFactory::new(config, registry).expect("factory"),
        observed,
    )
}

fn engine_config(
    f: impl FnOnce(engine_core::EngineConfigBuilder) -> engine_core::EngineConfigBuilder,
) -> FactoryConfig {
    FactoryConfig::builder()
        .engine(f(EngineConfig::builder()).build().unwrap())
        .build()
        .unwrap()
}

/// 6. Per-user limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limits_are_exact_independent_and_released() {
    let (f, _) = factory_with(FactoryConfig::default());
    let a1 = f.create_for_user(&ctx("alice", "r1")).unwrap();
    let a2 = f.create_for_user(&ctx("alice", "r2")).unwrap();
    let err = f.create_for_user(&ctx("alice", "r3")).unwrap_err();
    assert!(matches!(
        &err,
        FactoryError::UserLimitReached { limit: 2, .. }
    ));
    assert!(err.to_string().contains("2/2"), "names the limit: {err}");
    let bob = f.create_for_user(&ctx("bob", "r1")).unwrap();
    assert!(bob.is_active(), "bob unaffected by alice's limit");
    a1.close().await;
    let a3 = f.create_for_user(&ctx("alice", "r3")).unwrap();
    a2.close().await; // a closed engine does not count either
    let _a4 = f.create_for_user(&ctx("alice", "r4")).unwrap();
    drop((a3, bob));

    // Five users hit their limits at once, independently.
    let tasks: Vec<_> = (0..5)
        .flat_map(|u| (0..6).map(move |r| (u, r)))
        .map(|(u, r)| {
            let f = f.clone();
            tokio::spawn(async move {
                f.create_for_user(&ctx(&format!("five-{u}"), &format!("r{r}")))
                    .map(|h| (u, h))
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        if let Ok(h) = t.await.unwrap() {
            held.push(h);
        }
    }
    for u in 0..5 {
        assert_eq!(
            held.iter().filter(|(x, _)| *x == u).count(),
            2,
            "user five-{u}"
        );
        assert_eq!(f.active_engines(&uid(&format!("five-{u}"))), 2);
    }

    // 100 concurrent creates for one user yield exactly the limit.
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (f, b) = (f.clone(), barrier.clone());
            tokio::spawn(async move {
                b.wait().await;
                f.create_for_user(&ctx("hundred", &format!("r{i}")))
            })
        })
        .collect();
    let mut ok = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(h) => ok.push(h),
            Err(FactoryError::UserLimitReached { limit, .. }) => {
                assert_eq!(limit, 2);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok.len(), refused), (2, 98));
}

/// 7. Configuration ranges are refused with a message naming the field.
#[test]
fn config_ranges_are_refused_naming_the_field() {
    let s = Duration::from_secs;
    let cases = [
        (
            FactoryConfig::builder()
                .max_engines_per_user(0)
                .build()
                .unwrap_err(),
            "max_engines_per_user",
        ),
        (
            FactoryConfig::builder()
                .max_engines_per_user(11)
                .build()
                .unwrap_err(),
            "max_engines_per_user",
        ),
        (
            FactoryConfig::builder()
                .engine_ttl(s(59))
                .build()
                .unwrap_err(),
            "engine_ttl",
        ),
        (
            FactoryConfig::builder()
                .engine_ttl(s(3601))
                .build()
                .unwrap_err(),
            "engine_ttl",
        ),
        (
            FactoryConfig::builder()
                .reaper_interval(s(9))
                .build()
                .unwrap_err(),
            "reaper_interval",
        ),
        (
            FactoryConfig::builder()
                .reaper_interval(s(301))
                .build()
                .unwrap_err(),
            "reaper_interval",
        ),
        (
            EngineConfig::builder()
                .max_concurrent_runs(0)
                .build()
                .unwrap_err(),
            "max_concurrent_runs",
        ),
        (
            EngineConfig::builder()
                .run_timeout(Duration::ZERO)
                .build()
                .unwrap_err(),
            "run_timeout",
        ),
        (
            EngineConfig::builder()
                .history_limit(0)
                .build()
                .unwrap_err(),
            "history_limit",
        ),
    ];
    for (err, field) in cases {
        let msg = err.to_string();
        assert!(
            msg.contains(field) && msg.contains("allowed range"),
            "{msg}"
        );
    }
}

/// A flood of 10,000 messages to an engine with one slot and two queue places: three are
/// accepted, every other is refused with `QueueFull` before emitting anything, and the engine
/// never holds more than its limit. After the flood the engine accepts runs again.
#[tokio::test(start_paused = true)]
async fn a_flood_of_runs_is_bounded_by_the_queue_limit() {
    let (f, _) = factory_with(engine_config(|b| {
        b.max_concurrent_runs(1).max_queued_runs(2)
    }));
    let base = ctx("alice", "r0");
    let mut sub = f.subscribe(base.user_id());
    let engine = f.create_for_user(&base).unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..10_000 {
        match engine.spawn(&base.new_run(), "script", "sleep:1000") {
            Ok(h) => accepted.push(h),
            Err(EngineError::QueueFull {
                max_concurrent_runs,
                max_queued_runs,
            }) => {
                assert_eq!((max_concurrent_runs, max_queued_runs), (1, 2));
                refused += 1;
            }
            Err(e) => panic!("unexpected refusal: {e}"),
        }
        assert!(
            engine.active_run_count() <= 3,
            "the engine holds at most 1 + 2 runs"
        );
    }
    assert_eq!((accepted.len(), refused), (3, 9_997));
    let err = engine
        .spawn(&base.new_run(), "script", "x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_concurrent_runs + max_queued_runs"),
        "{err}"
    );
    assert_eq!(engine.stats().rejected_runs, 9_998);
    let accepted_ids: Vec<_> = accepted.iter().map(|h| h.run_id().clone()).collect();
    for h in accepted {
        assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Completed);
    }
    // Only the accepted runs emitted anything.
    let runs = by_run(&drain(&mut sub));
    assert_eq!(runs.len(), 3);
    for id in &accepted_ids {
        check_run(&runs[id]).unwrap();
    }
    // Room again once the runs ended.
    let again = engine.execute(&base.new_run(), "script", "think:ok").await;
    assert_eq!(again.unwrap().status(), RunStatus::Completed);
}

/// 8. Concurrency limit 3 with 6 runs of 200 ms; the queued notice after 1 s.
#[tokio::test(start_paused = true)]
async fn concurrency_limit_queues_and_announces_long_waits() {
    // Runs of one thread side by side, so only the concurrency limit makes them wait.
    let (f, _) = factory_with(engine_config(|b| {
        b.max_concurrent_runs(3)
            .multitask(MultitaskPolicy::Parallel)
    }));
    let base = ctx("alice", "r0");
    let mut sub = f.subscribe(base.user_id());
    let engine = f.create_for_user(&base).unwrap();
    let start = tokio::time::Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            engine
                .spawn(&base.new_run(), "script", "sleep:200")
                .unwrap()
        })
        .collect();
    let mut waited = 0;
    for h in handles {
        let o = h.outcome().await.unwrap();
        waited += usize::from(o.queue_wait >= Duration::from_millis(200));
    }
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(waited, 3, "three runs waited for a slot");
    drop(drain(&mut sub));

    // One slot, a 1.5 s run ahead: the second run is told it is queued.
    let (f, _) = factory_with(engine_config(|b| {
        b.max_concurrent_runs(1)
            .multitask(MultitaskPolicy::Parallel)
    }));
    let mut sub = f.subscribe(base.user_id());
    let engine = f.create_for_user(&base).unwrap();
    let first = engine
        .spawn(&base.new_run(), "script", "sleep:1500")
        .unwrap();
    let second_ctx = base.new_run();
    let second = engine.spawn(&second_ctx, "script", "think:go").unwrap();
    first.outcome().await.unwrap();
    second.outcome().await.unwrap();
    let runs = by_run(&drain(&mut sub));
    let second_events = &runs[second_ctx.run_id()];
    check_run(second_events).unwrap();
    assert!(
        matches!(&second_events[1].event, AgentEvent::AgentThinking { reasoning } if reasoning == QUEUED_NOTICE)
    );
    assert_eq!(runs.values().flatten().filter(|e| matches!(&e.event, AgentEvent::AgentThinking { reasoning } if reasoning == QUEUED_NOTICE)).count(), 1);
}

/// 9. Timeouts, agent errors and panics, tool timeouts and panics.
#[tokio::test(start_paused = true)]
async fn timeouts_errors_and_panics_end_with_the_right_status() {
    let (f, _) = factory_with(engine_config(|b| {
        b.run_timeout(Duration::from_millis(300))
            .tool_timeout(Duration::from_millis(100))
    }));
    let base = ctx("alice", "r0");
    let mut sub = f.subscribe(base.user_id());
    let engine = f.create_for_user(&base).unwrap();

    let out = engine
        .execute(&base.new_run(), "script", "sleep:5000")
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::TimedOut);
    assert!(out.error().unwrap().contains("timed out"));
    assert_eq!(engine.stats().timed_out_runs, 1);

    for script in ["fail:model refused", "panic:agent bug"] {
        let out = engine
            .execute(&base.new_run(), "script", script)
            .await
            .unwrap();
        assert_eq!(out.status(), RunStatus::Failed, "{script}");
        assert!(out
            .error()
            .unwrap()
            .contains(script.split(':').nth(1).unwrap()));
    }
    assert_eq!(engine.stats().failed_runs, 2);
    let out = engine
        .execute(&base.new_run(), "script", "think:still here")
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Completed, "engine still usable");

    let out = engine
        .execute(
            &base.new_run(),
            "script",
            "tool:slow:{\"ms\":1000};tool:panic",
        )
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Completed);
    let runs = by_run(&drain(&mut sub));
    let statuses: Vec<ToolStatus> = runs[&out.run_id]
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::ToolCompleted { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [ToolStatus::Timeout, ToolStatus::Error]);
    for run in runs.values() {
        check_run(run).unwrap();
    }
    let s = engine.stats();
    assert_eq!(
        (
            s.total_runs,
            s.completed_runs,
            s.failed_runs,
            s.timed_out_runs
        ),
        (5, 2, 2, 1)
    );
}

/// 10. Cancellation of a running run, a queued run and an unknown run.
#[tokio::test(start_paused = true)]
async fn cancellation_running_queued_and_unknown() {
    let (f, observed) = factory_with(engine_config(|b| b.max_concurrent_runs(1)));
    let base = ctx("alice", "r0");
    let mut sub = f.subscribe(base.user_id());
    let engine = f.create_for_user(&base).unwrap();

    let running = base.new_run();
    let h = engine.spawn(&running, "script", "tool:slow").unwrap();
    let queued = base.new_run();
    let q = engine.spawn(&queued, "script", "think:never").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    engine.cancel(queued.run_id()).unwrap();
    engine.cancel(running.run_id()).unwrap();
    assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Cancelled);
    assert_eq!(q.outcome().await.unwrap().status(), RunStatus::Cancelled);
    assert_eq!(
        observed.tool_saw_cancel.load(Ordering::SeqCst),
        1,
        "the tool saw it"
    );
    assert_eq!(
        observed.agent_starts.load(Ordering::SeqCst),
        1,
        "the queued agent never started"
    );

    let waiting = base.new_run();
    let w = engine.spawn(&waiting, "script", "wait_cancel").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    w.cancel();
    assert_eq!(w.outcome().await.unwrap().status(), RunStatus::Cancelled);
    assert_eq!(
        observed.agent_saw_cancel.load(Ordering::SeqCst),
        1,
        "the agent saw it"
    );

    let unknown = engine_core::RunId::new("run-nope").unwrap();
    assert!(matches!(
        engine.cancel(&unknown),
        Err(EngineError::UnknownRun { .. })
    ));

    let runs = by_run(&drain(&mut sub));
    for ctx in [&running, &queued, &waiting] {
        let events = &runs[ctx.run_id()];
        check_run(events).unwrap();
        assert_eq!(terminal_status(events), Some(RunStatus::Cancelled));
    }
    assert_eq!(
        runs[queued.run_id()].len(),
        2,
        "queued: started and completed only"
    );
}

/// 11. History keeps the newest 100 of 110 runs; stats match what happened.
#[tokio::test]
async fn history_and_stats() {
    let (f, _) = factory_with(FactoryConfig::default());
    let base = ctx("alice", "r0");
    let engine = f.create_for_user(&base).unwrap();
    let mut ids = Vec::new();
    for i in 0..110 {
        let c = base.new_run();
        let script = if i % 10 == 0 {
            "fail:bad".to_owned()
        } else {
            format!("think:{i}")
        };
        engine.execute(&c, "script", script).await.unwrap();
        ids.push(c.run_id().clone());
    }
    let history = engine.history();
    assert_eq!(history.len(), 100);
    assert_eq!(
        history.iter().map(|o| o.run_id.clone()).collect::<Vec<_>>(),
        ids[10..]
    );
    let s = engine.stats();
    assert_eq!(
        (s.total_runs, s.completed_runs, s.failed_runs, s.history_len),
        (110, 99, 11, 100)
    );
}

/// 12. Shutdown with runs in flight; the reaper.
#[tokio::test(start_paused = true)]
async fn shutdown_and_reaper() {
    let (f, _) = factory_with(
        FactoryConfig::builder()
            .engine_ttl(Duration::from_secs(60))
            .reaper_interval(Duration::from_secs(10))
            .engine(
                EngineConfig::builder()
                    .run_timeout(Duration::from_secs(3000))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap(),
    );
    let mut subs = Vec::new();
    let mut handles = Vec::new();
    for u in 0..4 {
        let c = ctx(&format!("user-{u}"), "r1");
        subs.push(f.subscribe(c.user_id()));
        let e = f.create_for_user(&c).unwrap();
        handles.push((e.spawn(&c, "script", "sleep:100000").unwrap(), e));
    }
    // An engine closed by its owner leaves at once; the reaper removes an expired idle one.
    let dead = f.create_for_user(&ctx("dead", "r1")).unwrap();
    dead.close().await;
    assert_eq!(f.active_engines(&uid("dead")), 0);
    let idle = f.create_for_user(&ctx("idle", "r1")).unwrap();
    tokio::time::sleep(Duration::from_secs(75)).await;
    assert_eq!(f.active_engines(&uid("dead")), 0);
    assert_eq!(f.active_engines(&uid("idle")), 0);
    assert!(!idle.is_active());
    assert_eq!(f.metrics().timeout_cleanups, 1);
    for u in 0..4 {
        assert_eq!(
            f.active_engines(&uid(&format!("user-{u}"))),
            1,
            "busy engines are kept"
        );
    }

    let report = f.shutdown().await;
    assert_eq!(report.engines_closed, 4);
    for (h, e) in handles {
        assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Cancelled);
        assert!(!e.is_active());
    }
    for sub in &mut subs {
        let mut events = Vec::new();
        while let Some(e) = sub.recv().await {
            events.push(e);
        }
        check_run(&events).unwrap();
        assert_eq!(terminal_status(&events), Some(RunStatus::Cancelled));
    }
    assert_eq!(f.metrics().active_engines, 0);
    assert_eq!(
        f.create_for_user(&ctx("late", "r1")).unwrap_err(),
        FactoryError::ShutDown
    );
}

/// 13. Context validation.
#[test]
fn context_validation_rules() {
    for v in FORBIDDEN_VALUES {
        for field in 0..3 {
            let mut ids = ["alice", "thread", "run"];
            ids[field] = v;
            let e = UserExecutionContext::new(ids[0], ids[1], ids[2]).unwrap_err();
            match e {
                ContextError::InvalidId(id) => {
                    assert_eq!(id.reason, IdRejection::Placeholder);
                    assert_eq!(id.field, ["user_id", "thread_id", "run_id"][field]);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            UserExecutionContext::new(v.to_uppercase(), "t", "r").is_err(),
            "case-insensitive"
        );
    }
    for p in FORBIDDEN_PREFIXES {
        let e = UserExecutionContext::new(format!("{p}abc"), "t", "r").unwrap_err();
        assert!(e.to_string().contains(p), "{e}");
    }
    for d in ALLOWED_DEFAULTS {
        assert!(UserExecutionContext::new(*d, "t", "r").is_ok(), "{d}");
    }
    let mut c = ctx("alice", "r1");
    for _ in 1..MAX_OPERATION_DEPTH {
        c = c.child("op").unwrap();
    }
    assert!(matches!(
        c.child("op"),
        Err(ContextError::MaxDepthExceeded { max: 10, .. })
    ));
}
