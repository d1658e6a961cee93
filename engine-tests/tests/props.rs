//! Property tests: random sequences of create / execute / spawn / cancel / close /
//! cleanup_user / shutdown over several users. Invariants: a user's live engines never exceed
//! the limit and match what the caller holds; no event reaches another user; every started run
//! has exactly one terminal event.

use std::time::Duration;

use engine_core::{RunHandle, RunId, UserExecutionContext, UserId};
use engine_factory::{EngineHandle, ExecutionEngineFactory, FactoryConfig, FactoryError};
use engine_tests::{by_run, check_run, drain, script_registry};
use proptest::prelude::*;

const USERS: usize = 3;
const LIMIT: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Execute(usize, usize, u8),
    Spawn(usize, usize, u8),
    Cancel(usize, usize),
    Close(usize, usize),
    CleanupUser(usize),
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..USERS).prop_map(Op::Create),
        4 => (0..USERS, 0..LIMIT, 0..4u8).prop_map(|(u, e, s)| Op::Execute(u, e, s)),
        4 => (0..USERS, 0..LIMIT, 0..4u8).prop_map(|(u, e, s)| Op::Spawn(u, e, s)),
        2 => (0..USERS, 0..8usize).prop_map(|(u, r)| Op::Cancel(u, r)),
        2 => (0..USERS, 0..LIMIT).prop_map(|(u, e)| Op::Close(u, e)),
        1 => (0..USERS).prop_map(Op::CleanupUser),
        1 => Just(Op::Shutdown),
    ]
}

fn script(kind: u8) -> &'static str {
    match kind {
        0 => "think:a;tool:echo",
        1 => "fail:nope",
        2 => "sleep:2;think:b",
        _ => "wait_cancel",
    }
}

fn user(u: usize) -> String {
    format!("prop-user-{u}")
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (registry, _) = script_registry();
    let f = ExecutionEngineFactory::new(
        FactoryConfig::builder()
            .max_engines_per_user(LIMIT)
            .subscriber_buffer(4096)
            .build()
            .unwrap(),
        registry,
    )
    .expect("factory");
    let mut subs: Vec<_> = (0..USERS)
        .map(|u| f.subscribe(&UserId::new(user(u)).unwrap()))
        .collect();
    let mut engines: Vec<Vec<EngineHandle>> = (0..USERS).map(|_| Vec::new()).collect();
    let mut spawned: Vec<Vec<RunHandle>> = (0..USERS).map(|_| Vec::new()).collect();
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
            Op::Execute(u, e, s) | Op::Spawn(u, e, s) => {
                let Some(engine) = engines[u].get(e) else {
                    continue;
                };
                next_run += 1;
                let ctx = engine
                    .context()
                    .with_run_id(RunId::new(format!("run-{next_run}")).unwrap());
                match engine.spawn(&ctx, "script", script(s)) {
                    Ok(h) => {
                        started[u].push(ctx.run_id().clone());
                        if matches!(op, Op::Execute(..)) && s != 3 {
                            h.outcome().await.unwrap();
                        } else {
                            spawned[u].push(h);
                        }
                    }
                    Err(engine_core::EngineError::EngineInactive { .. }) => {
                        prop_assert!(!engine.is_active())
                    }
                    Err(other) => prop_assert!(false, "unexpected {other}"),
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
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), run_ops(ops)).await
                .map_err(|_| TestCaseError::fail("operation sequence hung"))?
        })?;
    }
}
