//! Property tests: random sequences of create / execute / spawn (under every multitask policy,
//! with streamed text, tool calls that wait for approval, sub-agents fanned out or waiting,
//! cleanup actions, guardrails that trip (blocking input, streamed output retracted, a tool
//! call denied) and handoffs (chains, a target waiting for approval or cancellation, a
//! handoff while an approval is pending)) / pipelines / approve / approve another user's run / cancel / close /
//! cleanup_user / shutdown over several users. Invariants: a user's live
//! engines never exceed the limit and match what the caller holds; no event reaches another
//! user; another user's approval is refused; every started run has exactly one terminal event,
//! and its events pass `check_run` (sub-agents nested and ended before it, approvals inside
//! their calls, deltas adding up). The same sequences with a SQLite run store on: the store
//! holds every started run with one end and exactly the run's own events, one terminal event
//! each, and no read of one user reaches another user's runs.

use std::sync::Arc;
use std::time::Duration;

use engine_core::{
    ApprovalDecision, EngineError, MultitaskPolicy, Pipeline, PipelineStep, RunHandle, RunId,
    RunOptions, UserExecutionContext, UserExecutionEngine, UserId,
};
use engine_factory::{
    EngineHandle, ExecutionEngineFactory, FactoryConfig, FactoryError, RunStore, Seams,
};
use engine_store::{SqlStore, StoreConfig};
use engine_tests::{by_run, check_run, drain, script_registry};
use proptest::prelude::*;

const USERS: usize = 3;
const LIMIT: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Execute(usize, usize, u8),
    Spawn(usize, usize, u8, u8),
    Pipeline(usize, usize, bool),
    Approve(usize, usize, bool),
    ApproveOthers(usize, usize),
    Cancel(usize, usize),
    Close(usize, usize),
    CleanupUser(usize),
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..USERS).prop_map(Op::Create),
        4 => (0..USERS, 0..LIMIT, 0..SCRIPTS).prop_map(|(u, e, s)| Op::Execute(u, e, s)),
        4 => (0..USERS, 0..LIMIT, 0..SCRIPTS, 0..4u8).prop_map(|(u, e, s, p)| Op::Spawn(u, e, s, p)),
        2 => (0..USERS, 0..LIMIT, any::<bool>()).prop_map(|(u, e, c)| Op::Pipeline(u, e, c)),
        2 => (0..USERS, 0..8usize, any::<bool>()).prop_map(|(u, r, ok)| Op::Approve(u, r, ok)),
        1 => (0..USERS, 0..8usize).prop_map(|(u, r)| Op::ApproveOthers(u, r)),
        2 => (0..USERS, 0..8usize).prop_map(|(u, r)| Op::Cancel(u, r)),
        2 => (0..USERS, 0..LIMIT).prop_map(|(u, e)| Op::Close(u, e)),
        1 => (0..USERS).prop_map(Op::CleanupUser),
        1 => Just(Op::Shutdown),
    ]
}

/// How many scripts [`script`] has.
const SCRIPTS: u8 = 14;

fn script(kind: u8) -> &'static str {
    match kind {
        8 => "say:a ;think:forbidden_input",
        9 => "say:leak ;say:forbidden_output",
        10 => r#"tool:echo:{"a":"forbidden_arg"};tool:echo"#,
        11 => "say:hold on ;handoff:assistant:tool:guarded|say:done",
        12 => "handoff:script:handoff:assistant:wait_cancel",
        13 => "abandon:guarded;handoff:script:think:after",
        0 => "think:a;tool:echo",
        1 => "fail:nope",
        2 => "sleep:2;think:b",
        3 => "wait_cancel",
        4 => "say:checking ;tool:guarded;think:c",
        5 => "say:one ;sleep:1;say:two ",
        6 => "fanout:3:think:x|tool:echo;sub:fail:inner",
        _ => "sub:wait_cancel;cleanup:c",
    }
}

/// Scripts that may wait indefinitely (for cancellation or for an approval).
fn may_wait(kind: u8) -> bool {
    matches!(kind, 3 | 4 | 7 | 11 | 12)
}

fn policy(p: u8) -> MultitaskPolicy {
    MultitaskPolicy::ALL[usize::from(p) % MultitaskPolicy::ALL.len()]
}

fn user(u: usize) -> String {
    format!("prop-user-{u}")
}

async fn run_ops(ops: Vec<Op>, store: Option<SqlStore>) -> Result<(), TestCaseError> {
    let (registry, _) = script_registry();
    let seams = match &store {
        Some(store) => Seams::default().run_store(Arc::new(store.clone())),
        None => Seams::default(),
    };
    let f = ExecutionEngineFactory::with_seams(
        FactoryConfig::builder()
            .max_engines_per_user(LIMIT)
            .subscriber_buffer(4096)
            .build()
            .unwrap(),
        registry,
        seams,
    )
    .expect("factory");
    let mut subs: Vec<_> = (0..USERS)
        .map(|u| f.subscribe(&UserId::new(user(u)).unwrap()))
        .collect();
    let mut engines: Vec<Vec<EngineHandle>> = (0..USERS).map(|_| Vec::new()).collect();
    let mut spawned: Vec<Vec<RunHandle>> = (0..USERS).map(|_| Vec::new()).collect();
    // Each spawned run's id and engine, to answer its approvals.
    let mut owners: Vec<Vec<(RunId, UserExecutionEngine)>> =
        (0..USERS).map(|_| Vec::new()).collect();
    let mut started: Vec<Vec<RunId>> = (0..USERS).map(|_| Vec::new()).collect();
    let mut next_run = 0;
    let mut shut_down = false;
    for op in ops {
        match op {
            Op::Create(u) => {
                next_run += 1;
                let ctx =
                    UserExecutionContext::new(user(u), "t", format!("run-{next_run}")).unwrap();
                match f.create_for_user(&ctx) {
                    Ok(h) => engines[u].push(h),
                    Err(FactoryError::UserLimitReached { limit, .. }) => {
                        prop_assert_eq!(limit, LIMIT);
                        prop_assert_eq!(engines[u].iter().filter(|e| e.is_active()).count(), LIMIT);
                    }
                    Err(FactoryError::ShutDown) => prop_assert!(shut_down),
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
            Op::Execute(u, e, s) | Op::Spawn(u, e, s, _) => {
                let Some(engine) = engines[u].get(e) else {
                    continue;
                };
                next_run += 1;
                let ctx = engine
                    .context()
                    .with_run_id(RunId::new(format!("run-{next_run}")).unwrap());
                // A blocking execute runs beside the thread's other runs, so it never waits
                // behind a run that waits for cancellation or approval.
                let chosen = match op {
                    Op::Spawn(.., p) => policy(p),
                    _ => MultitaskPolicy::Parallel,
                };
                let options = RunOptions::new().multitask(chosen);
                match engine.spawn_with(&ctx, "script", script(s), options) {
                    Ok(h) => {
                        started[u].push(ctx.run_id().clone());
                        if matches!(op, Op::Execute(..)) && !may_wait(s) {
                            h.outcome().await.unwrap();
                        } else {
                            owners[u].push((ctx.run_id().clone(), engine.engine().clone()));
                            spawned[u].push(h);
                        }
                    }
                    Err(EngineError::EngineInactive { .. }) => prop_assert!(!engine.is_active()),
                    Err(EngineError::ThreadBusy { live_runs, .. }) => {
                        prop_assert_eq!(chosen, MultitaskPolicy::Reject);
                        prop_assert!(live_runs > 0);
                    }
                    Err(other) => prop_assert!(false, "unexpected {other}"),
                }
            }
            Op::Pipeline(u, e, go_on) => {
                let Some(engine) = engines[u].get(e) else {
                    continue;
                };
                next_run += 1;
                let ctx = engine
                    .context()
                    .with_run_id(RunId::new(format!("run-{next_run}")).unwrap());
                let pipeline = Pipeline::new([
                    PipelineStep::new("script").input("think:a;tool:echo"),
                    PipelineStep::new("script").input("fail:b"),
                    PipelineStep::new("script").input("sub:think:c"),
                ])
                .continue_on_error(go_on);
                let options = RunOptions::new().multitask(MultitaskPolicy::Parallel);
                match engine.spawn_pipeline(&ctx, pipeline, "", options) {
                    Ok(h) => {
                        started[u].push(ctx.run_id().clone());
                        let out = h.outcome().await.unwrap();
                        prop_assert_eq!(out.steps.len(), 3);
                    }
                    Err(EngineError::EngineInactive { .. }) => prop_assert!(!engine.is_active()),
                    Err(other) => prop_assert!(false, "unexpected {other}"),
                }
            }
            Op::Approve(u, r, ok) => {
                if let Some((run, engine)) = owners[u].get(r) {
                    let decision = if ok {
                        ApprovalDecision::Approve
                    } else {
                        ApprovalDecision::Deny
                    };
                    match engine.approve(run, 1, decision) {
                        Ok(())
                        | Err(EngineError::UnknownRun { .. })
                        | Err(EngineError::UnknownApproval { .. }) => {}
                        Err(other) => prop_assert!(false, "unexpected {other}"),
                    }
                }
            }
            Op::ApproveOthers(u, r) => {
                // Any engine of another user refuses this user's run id, whatever its state.
                let other = (u + 1) % USERS;
                if let (Some((run, _)), Some(engine)) = (owners[u].get(r), engines[other].first()) {
                    let refused = engine.approve(run, 1, ApprovalDecision::Approve);
                    prop_assert!(
                        matches!(refused, Err(EngineError::UnknownRun { .. })),
                        "another user's approval: {refused:?}"
                    );
                }
            }
            Op::Cancel(u, r) => {
                if let Some(h) = spawned[u].get(r) {
                    h.cancel();
                }
            }
            Op::Close(u, e) => {
                if e < engines[u].len() {
                    engines[u].remove(e).close().await;
                }
            }
            Op::CleanupUser(u) => {
                f.cleanup_user(&UserId::new(user(u)).unwrap()).await;
                engines[u].clear();
            }
            Op::Shutdown => {
                f.shutdown().await;
                shut_down = true;
            }
        }
        for (u, held) in engines.iter().enumerate() {
            let live = f.active_engines(&UserId::new(user(u)).unwrap());
            prop_assert!(live <= LIMIT, "user {u} has {live} engines");
            prop_assert_eq!(live, held.iter().filter(|e| e.is_active()).count());
        }
    }
    f.shutdown().await;
    for u in 0..USERS {
        for h in spawned[u].drain(..) {
            h.outcome().await.unwrap();
        }
        let events = drain(&mut subs[u]);
        prop_assert!(
            events.iter().all(|e| e.user_id.as_str() == user(u)),
            "cross-user event"
        );
        let runs = by_run(&events);
        prop_assert_eq!(runs.len(), started[u].len(), "one stream per started run");
        for run in &started[u] {
            let stream = runs
                .get(run)
                .ok_or_else(|| TestCaseError::fail(format!("no events for {run}")))?;
            check_run(stream).map_err(TestCaseError::fail)?;
        }
    }
    if let Some(store) = store {
        check_store(&store, &started).await?;
    }
    Ok(())
}

/// The store after the sequence: every started run of each user ended once, with its own
/// events (one terminal event, last), and invisible to every other user.
async fn check_store(store: &SqlStore, started: &[Vec<RunId>]) -> Result<(), TestCaseError> {
    store.flush().await;
    for (u, runs) in started.iter().enumerate() {
        let me = UserId::new(user(u)).unwrap();
        for run in runs {
            let record = store.run(&me, run).await.unwrap();
            let record =
                record.ok_or_else(|| TestCaseError::fail(format!("no record of {run}")))?;
            prop_assert!(record.status.is_some(), "{run} never ended in the store");
            let stored = store
                .events_after(&me, run, 0, 10_000)
                .await
                .unwrap()
                .unwrap();
            prop_assert!(stored
                .events
                .iter()
                .all(|e| e.user_id == me && e.run_id == *run));
            let terminal = stored
                .events
                .iter()
                .filter(|e| e.event.is_terminal())
                .count();
            prop_assert_eq!(terminal, 1, "one stored terminal event for {}", run);
            prop_assert!(stored.events.last().is_some_and(|e| e.event.is_terminal()));
            for other in (0..USERS).filter(|o| *o != u) {
                let them = UserId::new(user(other)).unwrap();
                prop_assert!(
                    store.run(&them, run).await.unwrap().is_none(),
                    "{run} readable by user {other}"
                );
                prop_assert!(store
                    .events_after(&them, run, 0, 10)
                    .await
                    .unwrap()
                    .is_none());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), run_ops(ops, None)).await
                .map_err(|_| TestCaseError::fail("operation sequence hung"))?
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_every_invariant_with_a_run_store(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("props.db").display());
        rt.block_on(async {
            let store = SqlStore::open(StoreConfig::new(url)).await.expect("the store opens");
            tokio::time::timeout(Duration::from_secs(30), run_ops(ops, Some(store))).await
                .map_err(|_| TestCaseError::fail("operation sequence hung"))?
        })?;
    }
}
