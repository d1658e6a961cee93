//! Soak: 1,000 users x 10 runs with random delays, failures, panics, cancellations and
//! supervisor runs (sub-agents fanned out), all at once through one factory. Every invariant is
//! checked on what each user received, and afterwards nothing is left behind: no engine, no hub
//! channel, no subscription.
//!
//! Size and seed: `SOAK_USERS` (default 1000), `SOAK_RUNS` (default 10), `SOAK_SEED`
//! (default 7), e.g. `SOAK_USERS=10000 cargo test -p engine-tests --release --test soak`.

use std::sync::Arc;
use std::time::Duration;

use engine_core::{EventEnvelope, RunOutcome, RunStatus, UserExecutionContext, UserId};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, RunStore, Seams};
use engine_store::{SqlStore, StoreConfig};
use engine_tests::{by_run, check_run, drain, script_registry, terminal_status};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
enum Fate {
    Complete,
    Fail,
    Panic,
    Cancel,
    /// A supervisor-style run: sub-agents fanned out, one nested.
    Supervise,
}

fn quiet_soak_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("");
        if !msg.contains("soak-panic") {
            default(info);
        }
    }));
}

#[test]
fn soak_many_users_random_fates_nothing_leaks() {
    soak(
        env("SOAK_USERS", 1000) as usize,
        env("SOAK_RUNS", 10) as usize,
        false,
    );
}

/// The same with a SQLite run store on (fewer users: every event is also written): what the
/// store holds of each run is exactly what its user received live, and its record's status is
/// the run's outcome.
#[test]
fn soak_with_a_run_store_keeps_exactly_what_each_user_saw() {
    soak(
        env("SOAK_STORE_USERS", 300) as usize,
        env("SOAK_RUNS", 10) as usize,
        true,
    );
}

fn soak(users: usize, runs: usize, with_store: bool) {
    quiet_soak_panics();
    let seed = env("SOAK_SEED", 7);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async move {
        let (registry, _) = script_registry();
        let store = if with_store {
            let url = format!("sqlite://{}", dir.path().join("soak.db").display());
            Some(SqlStore::open(StoreConfig::new(url)).await.expect("the store opens"))
        } else {
            None
        };
        let seams = match &store {
            Some(store) => Seams::default().run_store(Arc::new(store.clone())),
            None => Seams::default(),
        };
        let factory = ExecutionEngineFactory::with_seams(
            FactoryConfig::builder().subscriber_buffer(1024).build().unwrap(),
            registry,
            seams,
        ).expect("factory");
        let tasks: Vec<_> = (0..users)
            .map(|u| {
                let f = factory.clone();
                tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003) + u as u64);
                    let user = format!("soak-user-{u:05}");
                    let uid = UserId::new(&user).unwrap();
                    let mut sub = f.subscribe(&uid);
                    let base = UserExecutionContext::new(&user, "thread", "run-0").unwrap();
                    let engine = f.create_for_user(&base).unwrap();
                    let mut expected = Vec::new();
                    // Runs go two at a time so queueing and cancellation overlap.
                    for pair in 0..runs.div_ceil(2) {
                        let mut pending = Vec::new();
                        for k in 0..2.min(runs - pair * 2) {
                            let fate = match rng.random_range(0..10) {
                                0 => Fate::Fail,
                                1 => Fate::Panic,
                                2 | 3 => Fate::Cancel,
                                4 => Fate::Supervise,
                                _ => Fate::Complete,
                            };
                            let delay = rng.random_range(0..4);
                            let script = match fate {
                                Fate::Complete => format!("think:{user} {pair}/{k};sleep:{delay};tool:echo:{{\"u\":\"{user}\"}}"),
                                Fate::Fail => format!("sleep:{delay};fail:{user} failed"),
                                Fate::Panic => format!("sleep:{delay};panic:soak-panic {user}"),
                                Fate::Cancel => "think:waiting;wait_cancel".to_owned(),
                                Fate::Supervise => format!("fanout:3:think:{user}|tool:echo;sub:sleep:{delay}|think:{user}"),
                            };
                            let ctx = base.new_run();
                            let h = engine.spawn(&ctx, "script", script).unwrap();
                            pending.push((h, fate, rng.random_range(0..3u64)));
                        }
                        for (h, fate, cancel_after) in pending {
                            if matches!(fate, Fate::Cancel) {
                                tokio::time::sleep(Duration::from_millis(cancel_after)).await;
                                h.cancel();
                            }
                            let out = h.outcome().await.unwrap();
                            expected.push((out, fate));
                        }
                    }
                    engine.close().await;
                    let events = drain(&mut sub);
                    (uid, expected, events)
                })
            })
            .collect();
        let mut total = 0;
        if let Some(store) = &store {
            store.flush().await;
        }
        for t in tasks {
            let (uid, expected, events) = t.await.unwrap();
            if let Some(store) = &store {
                check_stored(store, &uid, &expected, &events).await;
            }
            assert!(events.iter().all(|e| e.user_id == uid), "event crossed into {uid}");
            let per_run = by_run(&events);
            assert_eq!(per_run.len(), expected.len(), "{uid}: one stream per run");
            for (out, fate) in &expected {
                let want = match fate {
                    Fate::Complete | Fate::Supervise => RunStatus::Completed,
                    Fate::Fail | Fate::Panic => RunStatus::Failed,
                    Fate::Cancel => RunStatus::Cancelled,
                };
                assert_eq!(out.status(), want, "{uid}: {fate:?} -> {out:?}");
                let stream = &per_run[&out.run_id];
                check_run(stream).unwrap_or_else(|e| panic!("{uid} run {}: {e}", out.run_id));
                assert_eq!(terminal_status(stream), Some(want));
                if let Some(answer) = out.result() {
                    assert!(answer.contains(uid.as_str()), "{uid} got {answer}");
                }
            }
            total += expected.len();
        }
        assert_eq!(total, users * runs);
        let m = factory.metrics();
        assert_eq!(m.active_engines, 0, "engines left behind");
        assert_eq!(m.events_dropped, 0);
        assert_eq!((m.hub_users, m.subscribers), (0, 0), "hub state left behind: {m:?}");
        assert_eq!(m.engines_created, users as u64);
        assert_eq!(m.engines_cleaned, users as u64);
        if let Some(store) = &store {
            assert_eq!(store.health().events_dropped, 0, "every event was stored");
        }
    });
}

/// Each run of `uid` in the store: exactly the events `uid` received, and the outcome's status.
async fn check_stored(
    store: &SqlStore,
    uid: &UserId,
    expected: &[(RunOutcome, Fate)],
    events: &[EventEnvelope],
) {
    store.flush().await;
    let per_run = by_run(events);
    for (out, _) in expected {
        let record = store
            .run(uid, &out.run_id)
            .await
            .unwrap()
            .expect("a record");
        assert_eq!(record.status, Some(out.status()), "{uid} {}", out.run_id);
        let stored = store
            .events_after(uid, &out.run_id, 0, 100_000)
            .await
            .unwrap()
            .expect("the user's run");
        assert_eq!(
            stored.events, per_run[&out.run_id],
            "{uid} {}: stored = received",
            out.run_id
        );
    }
}
