//! Criterion benchmarks: each group measures our path (`ours`) and a baseline built from raw
//! tokio in the same run. `cargo xtask bench` runs a short version and prints the ratios.
//!
//! Groups: `lifecycle`, `delivery`, `fanout` (baselines `raw_mpsc` and `broadcast`),
//! `runs_one_engine`, `runs_1000_users`, `admission`, `supervisor` (baseline `four_runs`). Every group declares its throughput in
//! elements (engines, events, runs, operations) so results compare per element. Measured
//! loops run on a runtime worker, as they would in a server.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine_bench::{bench_engines, bench_factory, bench_users, RunsAcrossUsers};
use engine_core::{AgentEvent, EventEnvelope, RunId, ThreadId, UserExecutionContext, UserId};
use engine_factory::{EngineHandle, ExecutionEngineFactory};
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, mpsc};

type Users = Arc<Vec<UserExecutionContext>>;
type Engines = Arc<Vec<(UserId, EngineHandle)>>;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs a measured loop on a runtime worker and returns the time it reports.
fn on_worker<F>(rt: &Runtime, f: F) -> Duration
where
    F: Future<Output = Duration> + Send + 'static,
{
    rt.block_on(async { tokio::spawn(f).await.expect("measured loop") })
}

fn envelope(user: &UserId, seq: u64) -> EventEnvelope {
    EventEnvelope {
        user_id: user.clone(),
        thread_id: ThreadId::new("thread").expect("id"),
        run_id: RunId::new("run-1").expect("id"),
        request_id: engine_core::RequestId::new("req-1").expect("id"),
        seq,
        timestamp_us: 0,
        event: AgentEvent::AgentThinking {
            reasoning: "step".into(),
        },
    }
}

/// One task per user's subscription, counting what arrives.
fn count_received(rt: &Runtime, factory: &ExecutionEngineFactory, users: &Users) -> Arc<AtomicU64> {
    let received = Arc::new(AtomicU64::new(0));
    for c in users.iter() {
        let mut sub = factory.subscribe(c.user_id());
        let received = received.clone();
        rt.spawn(async move {
            while sub.recv().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    received
}

/// Waits until the readers have counted `target` events. Callers pass what the engine reports
/// as delivered, so events dropped under backpressure cannot make this wait forever.
async fn wait_for(counter: &AtomicU64, target: u64) {
    while counter.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

/// Benchmark 1: create_for_user + one trivial run + close, vs the floor: a bounded channel and an Arc'd
/// context, one spawned task, one event sent, joined.
fn lifecycle(c: &mut Criterion) {
    let rt = runtime();
    let factory = bench_factory(256);
    let users: Users = Arc::new(bench_users(1000));
    let _readers = count_received(&rt, &factory, &users);
    let mut g = c.benchmark_group("lifecycle");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ours", |b| {
        b.iter_custom(|iters| {
            let (factory, users) = (factory.clone(), users.clone());
            on_worker(&rt, async move {
                let start = Instant::now();
                for i in 0..iters as usize {
                    let ctx = &users[i % users.len()];
                    let engine = factory.create_for_user(ctx).expect("admitted");
                    engine.execute(ctx, "noop", "").await.expect("ran");
                    engine.close().await;
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            let users = users.clone();
            on_worker(&rt, async move {
                let start = Instant::now();
                for i in 0..iters as usize {
                    let (tx, mut rx) = mpsc::channel::<Arc<EventEnvelope>>(256);
                    let ctx = Arc::new(users[i % users.len()].clone());
                    let task = tokio::spawn(async move {
                        let e = Arc::new(envelope(ctx.user_id(), 1));
                        tx.send(e).await.is_ok()
                    });
                    let _ = rx.recv().await;
                    let _ = task.await;
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

/// Benchmark 2: per-event cost of run -> hub -> subscriber, vs a raw mpsc producer/consumer pair.
fn delivery(c: &mut Criterion) {
    const EVENTS: u64 = 10_000;
    let rt = runtime();
    let factory = bench_factory(256);
    let users: Users = Arc::new(bench_users(1));
    let received = count_received(&rt, &factory, &users);
    let engines: Engines = Arc::new(bench_engines(&factory, &users));
    let mut g = c.benchmark_group("delivery");
    g.throughput(Throughput::Elements(EVENTS));
    g.bench_function("ours", |b| {
        b.iter_custom(|iters| {
            let (users, engines, received) = (users.clone(), engines.clone(), received.clone());
            on_worker(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let before = received.load(Ordering::Relaxed);
                    // started + (EVENTS - 2) thoughts + completed = EVENTS events.
                    let ctx = users[0].new_run();
                    let out = engines[0]
                        .1
                        .execute(&ctx, "burst", (EVENTS - 2).to_string())
                        .await
                        .expect("ran");
                    wait_for(&received, before + out.events_delivered).await;
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            let user = users[0].user_id().clone();
            on_worker(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let (tx, mut rx) = mpsc::channel::<Arc<EventEnvelope>>(256);
                    let user = user.clone();
                    let producer = tokio::spawn(async move {
                        for seq in 1..=EVENTS {
                            if tx.send(Arc::new(envelope(&user, seq))).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut n = 0u64;
                    while rx.recv().await.is_some() {
                        n += 1;
                    }
                    let _ = producer.await;
                    assert_eq!(n, EVENTS);
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

/// Benchmark 3, fan-out: 10,000 users with a subscriber each, 100 events per user, routed by the hub; vs
/// raw per-user mpsc channels; vs one broadcast bus that every user's task filters (the
/// shared-bus design), measured on fewer events because every receiver sees every event.
fn fanout(c: &mut Criterion) {
    const USERS: usize = 10_000;
    const PER_USER: u64 = 100;
    let rt = runtime();
    let factory = bench_factory(256);
    let users: Users = Arc::new(bench_users(USERS));
    let received = count_received(&rt, &factory, &users);
    let engines: Engines = Arc::new(bench_engines(&factory, &users));
    let mut g = c.benchmark_group("fanout");
    g.sample_size(10);
    g.throughput(Throughput::Elements(USERS as u64 * PER_USER));
    g.bench_function("ours", |b| {
        b.iter_custom(|iters| {
            let (users, engines, received) = (users.clone(), engines.clone(), received.clone());
            on_worker(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let before = received.load(Ordering::Relaxed);
                    let runs: Vec<_> = engines
                        .iter()
                        .zip(users.iter())
                        .map(|((_, e), ctx)| {
                            e.spawn(&ctx.new_run(), "burst", (PER_USER - 2).to_string())
                                .expect("spawned")
                        })
                        .collect();
                    let mut delivered = 0;
                    for r in runs {
                        delivered += r.outcome().await.expect("ran").events_delivered;
                    }
                    wait_for(&received, before + delivered).await;
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("raw_mpsc", |b| {
        b.iter_custom(|iters| {
            let users = users.clone();
            on_worker(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let got = Arc::new(AtomicU64::new(0));
                    let mut tasks = Vec::with_capacity(USERS * 2);
                    for ctx in users.iter() {
                        let (tx, mut rx) = mpsc::channel::<Arc<EventEnvelope>>(256);
                        let user = ctx.user_id().clone();
                        tasks.push(tokio::spawn(async move {
                            for seq in 1..=PER_USER {
                                let _ = tx.send(Arc::new(envelope(&user, seq))).await;
                            }
                        }));
                        let got = got.clone();
                        tasks.push(tokio::spawn(async move {
                            while rx.recv().await.is_some() {
                                got.fetch_add(1, Ordering::Relaxed);
                            }
                        }));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                    assert_eq!(got.load(Ordering::Relaxed), USERS as u64 * PER_USER);
                }
                start.elapsed()
            })
        });
    });
    // The shared bus: every event is seen by all 10,000 user tasks; 100 events per iteration.
    const BUS_EVENTS: u64 = 100;
    g.throughput(Throughput::Elements(BUS_EVENTS));
    g.bench_function("broadcast", |b| {
        b.iter_custom(|iters| {
            let users = users.clone();
            on_worker(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let (tx, _) = broadcast::channel::<Arc<EventEnvelope>>(1024);
                    let got = Arc::new(AtomicU64::new(0));
                    let mut tasks = Vec::with_capacity(USERS);
                    for ctx in users.iter() {
                        let mut rx = tx.subscribe();
                        let me = ctx.user_id().clone();
                        let got = got.clone();
                        tasks.push(tokio::spawn(async move {
                            while let Ok(e) = rx.recv().await {
                                if e.user_id == me {
                                    got.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }));
                    }
                    for seq in 0..BUS_EVENTS {
                        let user = users[seq as usize % USERS].user_id();
                        let _ = tx.send(Arc::new(envelope(user, seq)));
                        tokio::task::yield_now().await;
                    }
                    drop(tx);
                    for t in tasks {
                        let _ = t.await;
                    }
                    assert_eq!(got.load(Ordering::Relaxed), BUS_EVENTS);
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

/// Benchmark 4, run throughput: trivial 6-event runs through one engine, and across 1,000 users; vs raw
/// tokio (a spawned task per run sending 6 events to its user's consumer).
fn runs(c: &mut Criterion) {
    const RUNS: u64 = 10_000;
    let rt = runtime();
    for (name, n_users) in [("runs_one_engine", 1usize), ("runs_1000_users", 1000)] {
        let setup = RunsAcrossUsers::new(n_users);
        let users: Users = Arc::new(bench_users(n_users));
        let mut g = c.benchmark_group(name);
        g.sample_size(10);
        g.throughput(Throughput::Elements(RUNS));
        g.bench_function("ours", |b| {
            b.iter_custom(|iters| setup.measure(RUNS as usize, iters));
        });
        g.bench_function("baseline", |b| {
            b.iter_custom(|iters| {
                let users = users.clone();
                on_worker(&rt, async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let got = Arc::new(AtomicU64::new(0));
                        let senders: Vec<_> = users
                            .iter()
                            .map(|_| {
                                let (tx, mut rx) = mpsc::channel::<Arc<EventEnvelope>>(4096);
                                let got = got.clone();
                                tokio::spawn(async move {
                                    while rx.recv().await.is_some() {
                                        got.fetch_add(1, Ordering::Relaxed);
                                    }
                                });
                                tx
                            })
                            .collect();
                        let handles: Vec<_> = (0..RUNS as usize)
                            .map(|i| {
                                let tx = senders[i % n_users].clone();
                                let user = users[i % n_users].user_id().clone();
                                tokio::spawn(async move {
                                    for seq in 1..=6 {
                                        let _ = tx.send(Arc::new(envelope(&user, seq))).await;
                                    }
                                })
                            })
                            .collect();
                        for h in handles {
                            let _ = h.await;
                        }
                        drop(senders);
                        wait_for(&got, RUNS * 6).await;
                    }
                    start.elapsed()
                })
            });
        });
        g.finish();
    }
}

/// Benchmark 5: admission under contention: 2 threads creating and closing engines for 1,000 users; vs
/// the bare floor of a per-user counter in a shared map behind one mutex.
fn admission(c: &mut Criterion) {
    const OPS: u64 = 2_000;
    let factory = bench_factory(16);
    let users: Users = Arc::new(bench_users(1000));
    let mut g = c.benchmark_group("admission");
    g.throughput(Throughput::Elements(OPS));
    g.bench_function("ours", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (factory, users) = (factory.clone(), users.clone());
                    s.spawn(move || {
                        for i in 0..iters * OPS / 2 {
                            let ctx = &users[(i as usize * 2 + t) % users.len()];
                            drop(factory.create_for_user(ctx).expect("admitted"));
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
    g.bench_function("baseline", |b| {
        let counts: Arc<Mutex<std::collections::HashMap<UserId, usize>>> = Arc::default();
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (counts, users) = (counts.clone(), users.clone());
                    s.spawn(move || {
                        for i in 0..iters * OPS / 2 {
                            let user = users[(i as usize * 2 + t) % users.len()].user_id();
                            *counts
                                .lock()
                                .expect("lock")
                                .entry(user.clone())
                                .or_default() += 1;
                            let mut m = counts.lock().expect("lock");
                            if let Some(n) = m.get_mut(user) {
                                *n -= 1;
                            }
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
    g.finish();
}

/// The hidden cost of supervision: one run whose agent fans out to four `six` sub-agents, vs
/// four separate `six` runs started together, on one engine. Per element: one 4-agent job.
fn supervisor(c: &mut Criterion) {
    const JOBS: u64 = 500;
    let rt = runtime();
    let factory = bench_factory(4096);
    let users: Users = Arc::new(bench_users(1));
    let received = count_received(&rt, &factory, &users);
    let engines: Engines = Arc::new(bench_engines(&factory, &users));
    let mut g = c.benchmark_group("supervisor");
    g.sample_size(10);
    g.throughput(Throughput::Elements(JOBS));
    for (name, agent, runs_per_job) in [("ours", "fanout4", 1usize), ("four_runs", "six", 4)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (users, engines, received) = (users.clone(), engines.clone(), received.clone());
                let contexts: Vec<Vec<UserExecutionContext>> = (0..iters)
                    .map(|_| {
                        (0..JOBS as usize * runs_per_job)
                            .map(|_| users[0].new_run())
                            .collect()
                    })
                    .collect();
                on_worker(&rt, async move {
                    let start = Instant::now();
                    for batch in contexts {
                        let before = received.load(Ordering::Relaxed);
                        let mut delivered = 0;
                        for job in batch.chunks(runs_per_job) {
                            let handles: Vec<_> = job
                                .iter()
                                .map(|ctx| engines[0].1.spawn(ctx, agent, "").expect("spawned"))
                                .collect();
                            for h in handles {
                                delivered += h.outcome().await.expect("ran").events_delivered;
                            }
                        }
                        wait_for(&received, before + delivered).await;
                    }
                    start.elapsed()
                })
            });
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = lifecycle, delivery, fanout, runs, admission, supervisor
}
criterion_main!(benches);
