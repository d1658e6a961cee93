//! Golden path and isolation: many users at once through one factory, asserting on what each
//! user actually received (events, results, history, stats).

use std::time::Duration;

use engine_core::{AgentEvent, EventEnvelope, RunStatus, ToolStatus, UserExecutionContext, UserId};
use engine_factory::{ExecutionEngineFactory, FactoryConfig};
use engine_tests::{by_run, check_run, demo_registry, drain, script_registry, terminal_status};

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn user_name(i: usize) -> String {
    format!("user-{i:03}-z")
}

/// Everything of one user, rendered, for "does any other user's marker appear?" checks.
fn contains_other_user(text: &str, me: usize, users: usize) -> Option<String> {
    (0..users)
        .filter(|&o| o != me)
        .map(user_name)
        .find(|o| text.contains(o.as_str()))
}

fn kinds(events: &[EventEnvelope], kind: &str) -> usize {
    events.iter().filter(|e| e.event.kind() == kind).count()
}

/// 1. 15 users x 10 runs: each receives exactly its own events and results, every run
/// succeeds, and nothing of one user appears in another's events, results, history or stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_users_ten_runs_each_see_only_their_own_data() {
    const USERS: usize = 15;
    let (registry, _) = script_registry();
    let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry).expect("factory");
    let tasks: Vec<_> = (0..USERS)
        .map(|u| {
            let f = factory.clone();
            tokio::spawn(async move {
                let user = user_name(u);
                let mut sub = f.subscribe(&uid(&user));
                let base = UserExecutionContext::new(&user, format!("thread-{user}"), "run-0").unwrap();
                let engine = f.create_for_user(&base).unwrap();
                let mut outcomes = Vec::new();
                for i in 0..10 {
                    let ctx = base.new_run();
                    let script = format!(
                        "think:planning for {user} #{i};tool:echo:{{\"secret\":\"secret-{user}-{i}\"}};think:done"
                    );
                    outcomes.push(engine.execute(&ctx, "script", script).await.unwrap());
                }
                let history = engine.history();
                let stats = engine.stats();
                engine.close().await;
                (u, drain(&mut sub), outcomes, history, stats)
            })
        })
        .collect();
    let mut total_runs = 0;
    for t in tasks {
        let (u, events, outcomes, history, stats) = t.await.unwrap();
        let user = user_name(u);
        assert_eq!(events.len(), 10 * 6, "{user}: 6 events per run");
        assert!(events.iter().all(|e| e.user_id.as_str() == user));
        let runs = by_run(&events);
        assert_eq!(runs.len(), 10);
        for run in runs.values() {
            check_run(run).unwrap();
            assert_eq!(terminal_status(run), Some(RunStatus::Completed));
        }
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(o.status(), RunStatus::Completed);
            let answer = o.result().unwrap();
            assert!(answer.contains(&format!("answer for {user}")), "{answer}");
            assert!(answer.contains(&format!("secret-{user}-{i}")), "{answer}");
            assert!(
                runs.contains_key(&o.run_id),
                "result's run is in this user's stream"
            );
        }
        total_runs += outcomes.len();
        assert_eq!(history.len(), 10);
        assert_eq!((stats.total_runs, stats.completed_runs), (10, 10));
        assert_eq!(stats.events_delivered, 60);
        let everything = format!(
            "{}\n{outcomes:?}\n{history:?}\n{stats:?}",
            serde_json::to_string(&events).unwrap()
        );
        assert_eq!(
            contains_other_user(&everything, u, USERS),
            None,
            "{user} saw another user's data"
        );
    }
    assert_eq!(total_runs, 150, "100% of runs completed");
    let m = factory.metrics();
    assert_eq!(
        (m.active_engines, m.events_dropped, m.events_delivered),
        (0, 0, 900)
    );
}

/// 2. 8 users x 6 tool-calling runs: each user sees exactly its own tool pairs and results; one
/// user's failing and panicking tools do not affect anybody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_users_six_tool_runs_and_one_users_failing_tool_stays_its_own() {
    const USERS: usize = 8;
    let (registry, _) = script_registry();
    let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry).expect("factory");
    let tasks: Vec<_> = (0..USERS)
        .map(|u| {
            let f = factory.clone();
            tokio::spawn(async move {
                let user = user_name(u);
                let mut sub = f.subscribe(&uid(&user));
                let base = UserExecutionContext::new(&user, "thread", "run-0").unwrap();
                let engine = f.create_for_user(&base).unwrap();
                let mut outcomes = Vec::new();
                for i in 0..6 {
                    let second = if u == 0 { "fail" } else { "echo" };
                    let third = if u == 0 { "panic" } else { "echo" };
                    let script = format!(
                        "tool:echo:{{\"n\":{i},\"who\":\"{user}\"}};tool:{second};tool:{third}"
                    );
                    outcomes.push(
                        engine
                            .execute(&base.new_run(), "script", script)
                            .await
                            .unwrap(),
                    );
                }
                engine.close().await;
                (u, drain(&mut sub), outcomes)
            })
        })
        .collect();
    for t in tasks {
        let (u, events, outcomes) = t.await.unwrap();
        let user = user_name(u);
        assert_eq!(kinds(&events, "tool_executing"), 18, "{user}");
        assert_eq!(kinds(&events, "tool_completed"), 18, "{user}");
        let statuses: Vec<ToolStatus> = events
            .iter()
            .filter_map(|e| match &e.event {
                AgentEvent::ToolCompleted { status, result, .. } => {
                    if let Some(r) = result {
                        assert_eq!(r["user"], user.as_str(), "tool result of another user");
                    }
                    Some(*status)
                }
                _ => None,
            })
            .collect();
        let errors = statuses.iter().filter(|s| **s == ToolStatus::Error).count();
        assert_eq!(errors, if u == 0 { 12 } else { 0 }, "{user}: {statuses:?}");
        for run in by_run(&events).values() {
            check_run(run).unwrap();
        }
        for o in &outcomes {
            assert_eq!(
                o.status(),
                RunStatus::Completed,
                "tool failures do not fail the run"
            );
            let answer = o.result().unwrap();
            assert!(answer.contains(&format!("\"who\":\"{user}\"")), "{answer}");
            assert_eq!(contains_other_user(answer, u, USERS), None);
        }
    }
}

/// 3. 150 users x 30 events each: no event crosses users, no ordering violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_fifty_users_thirty_events_each_in_order() {
    const USERS: usize = 150;
    let (registry, _) = script_registry();
    let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry).expect("factory");
    // agent_started + 28 thoughts + agent_completed = 30 events.
    let script: String = (0..28).map(|i| format!("think:step {i};")).collect();
    let mut subs: Vec<_> = (0..USERS)
        .map(|u| factory.subscribe(&uid(&user_name(u))))
        .collect();
    let tasks: Vec<_> = (0..USERS)
        .map(|u| {
            let f = factory.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let user = user_name(u);
                let ctx = UserExecutionContext::new(&user, "thread", "run-1").unwrap();
                let engine = f.create_for_user(&ctx).unwrap();
                let out = engine.execute(&ctx, "script", script).await.unwrap();
                engine.close().await;
                out
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status(), RunStatus::Completed);
    }
    for (u, sub) in subs.iter_mut().enumerate() {
        let events = drain(sub);
        assert_eq!(events.len(), 30, "{}", user_name(u));
        assert!(
            events.iter().all(|e| e.user_id.as_str() == user_name(u)),
            "event crossed users"
        );
        check_run(&events).unwrap();
    }
    assert_eq!(factory.metrics().events_delivered, 150 * 30);
}

/// 4. Golden path with 4 agents: 4 started, 4 completed, at least 8 thinking, tool pairs equal,
/// every run well-formed.
#[tokio::test]
async fn golden_path_with_four_agents() {
    let factory =
        ExecutionEngineFactory::new(FactoryConfig::default(), demo_registry()).expect("factory");
    let mut all = Vec::new();
    for (u, message) in [
        "what is 6 * 7?",
        "what time is it?",
        "hello there",
        "2 + 2 please",
    ]
    .iter()
    .enumerate()
    {
        let user = user_name(u);
        let mut sub = factory.subscribe(&uid(&user));
        let ctx = UserExecutionContext::new(&user, "thread", "run-1").unwrap();
        let out = factory
            .scope(&ctx, |engine| {
                let ctx = ctx.clone();
                async move { engine.execute(&ctx, "assistant", *message).await }
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status(), RunStatus::Completed);
        let events = drain(&mut sub);
        check_run(&events).unwrap();
        all.extend(events);
    }
    assert_eq!(kinds(&all, "agent_started"), 4);
    assert_eq!(kinds(&all, "agent_completed"), 4);
    assert!(kinds(&all, "agent_thinking") >= 8);
    assert_eq!(kinds(&all, "tool_executing"), kinds(&all, "tool_completed"));
    assert!(all.iter().any(|e| matches!(&e.event, AgentEvent::AgentCompleted { result: Some(r), .. } if r.contains("6 * 7 = 42"))));
}

/// 5. Delivery failure: a subscriber that never reads, one that goes away mid-run, and no
/// subscriber at all never stop runs; drops are counted and visible as sequence gaps.
#[tokio::test(start_paused = true)]
async fn slow_gone_or_absent_consumers_never_stop_runs() {
    let (registry, _) = script_registry();
    let factory = ExecutionEngineFactory::new(
        FactoryConfig::builder()
            .subscriber_buffer(4)
            .backpressure_deadline(Duration::from_millis(5))
            .build()
            .unwrap(),
        registry,
    )
    .expect("factory");
    let script: String = (0..10).map(|i| format!("think:{i};")).collect();

    // Never reads: the first 4 events are buffered, the other 8 are dropped.
    let mut stuck = factory.subscribe(&uid("reader-never"));
    let ctx = UserExecutionContext::new("reader-never", "t", "run-1").unwrap();
    let engine = factory.create_for_user(&ctx).unwrap();
    let out = engine
        .execute(&ctx, "script", script.clone())
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Completed);
    assert_eq!((out.events_delivered, out.events_dropped), (4, 8));
    let seqs: Vec<u64> = drain(&mut stuck).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // The next run's events arrive again once the reader catches up: a visible gap, not silence.
    let next = ctx.new_run();
    let out = engine
        .execute(&next, "script", "think:again")
        .await
        .unwrap();
    assert_eq!(out.events_dropped, 0);
    let again = drain(&mut stuck);
    assert_eq!(again.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);

    // Goes away mid-stream: its receiver is dropped; the run completes.
    let gone = factory.subscribe(&uid("reader-gone"));
    let ctx = UserExecutionContext::new("reader-gone", "t", "run-1").unwrap();
    let engine2 = factory.create_for_user(&ctx).unwrap();
    let h = engine2
        .spawn(&ctx, "script", "think:a;sleep:10;think:b")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(gone);
    let out = h.outcome().await.unwrap();
    assert_eq!(out.status(), RunStatus::Completed);
    assert!(out.events_dropped >= 2, "{out:?}");

    // Nobody subscribed: every event is counted as dropped.
    let ctx = UserExecutionContext::new("reader-absent", "t", "run-1").unwrap();
    let engine3 = factory.create_for_user(&ctx).unwrap();
    let out = engine3.execute(&ctx, "script", "think:x").await.unwrap();
    assert_eq!(
        (out.status(), out.events_delivered, out.events_dropped),
        (RunStatus::Completed, 0, 3)
    );

    let m = factory.metrics();
    assert!(m.events_dropped >= 8 + 2 + 3, "{m:?}");
}
