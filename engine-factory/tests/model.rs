//! Model checking of admission and slot release with `shuttle`.
//!
//! Build with `cargo test -p engine-factory --features model-check --test model` (CI does).
//! The feature swaps the factory's state lock for shuttle's, so shuttle controls every
//! acquisition and explores the interleavings of the real `create_for_user`, handle drop /
//! `close`, `cleanup_user` and `reap_now` code. Small scenarios are explored exhaustively (DFS);
//! larger ones with PCT, which finds ordering bugs of depth 3 with high probability.
#![cfg(feature = "model-check")]

use std::sync::Arc;

use engine_core::{AgentRegistry, UserExecutionContext, UserId};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, FactoryError};

fn factory(limit: usize) -> ExecutionEngineFactory {
    ExecutionEngineFactory::new(
        FactoryConfig::builder()
            .max_engines_per_user(limit)
            .build()
            .unwrap(),
        AgentRegistry::builder().build().unwrap(),
    )
    .expect("factory")
}

fn ctx(user: &str, run: usize) -> UserExecutionContext {
    UserExecutionContext::new(user, "thread", format!("run-{run}")).unwrap()
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

/// Two concurrent creates against a limit of one, explored exhaustively: in every interleaving
/// exactly one wins, the other gets `UserLimitReached`, and after the drop no slot is left.
#[test]
fn concurrent_creates_never_exceed_the_limit_exhaustive() {
    shuttle::check_dfs(
        || {
            let f = factory(1);
            let threads: Vec<_> = (0..2)
                .map(|i| {
                    let f = f.clone();
                    shuttle::thread::spawn(move || f.create_for_user(&ctx("alice", i)))
                })
                .collect();
            let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
            assert_eq!(f.active_engines(&uid("alice")), 1);
            for r in &results {
                if let Err(e) = r {
                    assert!(
                        matches!(e, FactoryError::UserLimitReached { limit: 1, .. }),
                        "{e}"
                    );
                }
            }
            drop(results);
            assert_eq!(f.active_engines(&uid("alice")), 0, "a slot leaked");
            let m = f.metrics();
            assert_eq!(
                (m.engines_created, m.engines_cleaned, m.limit_rejections),
                (1, 1, 1)
            );
        },
        None,
    );
}

/// A release racing with a create, explored exhaustively: the create sees the slot free or
/// not, but the count never goes above the limit, nothing leaks, and a freed slot is reusable.
#[test]
fn release_racing_a_create_never_leaks_or_overshoots_exhaustive() {
    shuttle::check_dfs(
        || {
            let f = factory(1);
            let first = f.create_for_user(&ctx("alice", 0)).unwrap();
            let releaser = shuttle::thread::spawn(move || drop(first));
            let creator = {
                let f = f.clone();
                shuttle::thread::spawn(move || f.create_for_user(&ctx("alice", 1)).ok())
            };
            releaser.join().unwrap();
            let held = creator.join().unwrap();
            assert_eq!(f.active_engines(&uid("alice")), usize::from(held.is_some()));
            drop(held);
            assert_eq!(f.active_engines(&uid("alice")), 0, "a slot leaked");
            assert!(
                f.create_for_user(&ctx("alice", 9)).is_ok(),
                "the slot is reusable"
            );
        },
        None,
    );
}

/// Three creators against a limit of two, with the limit checked from inside every thread
/// after each create (PCT, bug depth 3).
#[test]
fn three_creators_limit_two_pct() {
    shuttle::check_pct(
        || {
            let f = factory(2);
            let threads: Vec<_> = (0..3)
                .map(|i| {
                    let f = f.clone();
                    shuttle::thread::spawn(move || {
                        let r = f.create_for_user(&ctx("alice", i));
                        assert!(f.active_engines(&uid("alice")) <= 2, "limit exceeded");
                        r.ok()
                    })
                })
                .collect();
            let held: Vec<_> = threads
                .into_iter()
                .filter_map(|t| t.join().unwrap())
                .collect();
            assert_eq!(held.len(), 2);
            drop(held);
            assert_eq!(f.active_engines(&uid("alice")), 0, "a slot leaked");
        },
        1_000,
        3,
    );
}

/// Several users, creates, drops, `cleanup_user` and `reap_now` interleaved: per-user counts
/// never exceed the limit, one user's activity never changes another's count, and at the end
/// the factory tracks nothing.
#[test]
fn mixed_operations_over_users_pct() {
    shuttle::check_pct(
        || {
            let f = factory(2);
            let bob_engine = Arc::new(f.create_for_user(&ctx("bob", 100)).unwrap());
            let threads: Vec<_> = (0..3)
                .map(|t| {
                    let f = f.clone();
                    let bob = bob_engine.clone();
                    shuttle::thread::spawn(move || {
                        for i in 0..3 {
                            let run = t * 10 + i;
                            let h = f.create_for_user(&ctx("alice", run));
                            assert!(f.active_engines(&uid("alice")) <= 2);
                            match (t, i) {
                                (0, 1) => {
                                    shuttle::future::block_on(f.cleanup_user(&uid("alice")));
                                }
                                (1, 2) => {
                                    f.reap_now();
                                }
                                _ => {}
                            }
                            drop(h);
                            assert!(bob.is_active(), "alice's cleanup touched bob");
                            assert_eq!(f.active_engines(&uid("bob")), 1);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(f.active_engines(&uid("alice")), 0);
            drop(bob_engine);
            let m = f.metrics();
            assert_eq!(m.active_engines, 0);
            assert_eq!(
                m.engines_created, m.engines_cleaned,
                "every created engine was cleaned once"
            );
        },
        1_000,
        3,
    );
}
