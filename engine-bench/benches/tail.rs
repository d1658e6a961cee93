//! Latency per run under many concurrent runs (issue 18): 10,000 trivial runs (6 events
//! each) over 1,000 users, run `i` for user `i % 1000`, each user's events read by that user's
//! subscriber task, at most N runs in flight; latency from submitting a run to its last event
//! reaching the subscriber. Ours (factory, engine, hub) against a raw-tokio floor of the same
//! shape measured in the same process: a spawned task per run sending the same six events into
//! the user's `mpsc` channel, read by the user's subscriber task. Both on a multi-thread
//! runtime with 2 workers and on a current-thread runtime; each side's order alternates over
//! `TAIL_ROUNDS` rounds (default 5) and the median of each number is printed as
//! `name  ours  baseline  ratio` lines (ratio: the median over rounds of ours' p99 over the
//! floor's p99 in the same round), then each side's median per-round p99/p50. With
//! `TAIL_PHASES=1`, each round of ours also prints where its runs' time went: waiting for the
//! run task's first poll, the run, and the delivery to the subscriber (p50/p99).
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_bench::{bench_config, bench_registry, bench_users};
use engine_core::{
    AgentEvent, EventEnvelope, RequestId, RunId, ThreadId, UserExecutionContext, UserId,
};
use engine_factory::ExecutionEngineFactory;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

const RUNS: usize = 10_000;
const USERS: usize = 1_000;

/// One measurement: runs/s and latency percentiles in µs.
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    runs_per_s: f64,
    p50: u64,
    p99: u64,
    p999: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

fn shape(mut lat: Vec<u64>, elapsed: Duration) -> Shape {
    lat.sort_unstable();
    Shape {
        runs_per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        p999: percentile(&lat, 0.999),
    }
}

/// Per-run bookkeeping shared by the submitter and the subscribers: submit time and the
/// in-flight permit, indexed by run number.
struct Book {
    start: Instant,
    /// `start` on the system clock, in µs since the epoch: event timestamps map onto `start`.
    start_epoch_us: u64,
    submitted: Vec<AtomicU64>,
    /// Ours only: when the run's first and last events were stamped (µs since `start`), for the
    /// phase breakdown (`TAIL_PHASES=1`).
    first_event: Vec<AtomicU64>,
    last_event: Vec<AtomicU64>,
    latency: Vec<AtomicU64>,
    permits: Vec<Mutex<Option<OwnedSemaphorePermit>>>,
    done: AtomicU64,
    all_done: tokio::sync::Notify,
}

impl Book {
    fn new() -> Arc<Self> {
        let start_epoch_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Arc::new(Self {
            start: Instant::now(),
            start_epoch_us,
            submitted: (0..RUNS).map(|_| AtomicU64::new(0)).collect(),
            first_event: (0..RUNS).map(|_| AtomicU64::new(0)).collect(),
            last_event: (0..RUNS).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..RUNS).map(|_| AtomicU64::new(0)).collect(),
            permits: (0..RUNS).map(|_| Mutex::new(None)).collect(),
            done: AtomicU64::new(0),
            all_done: tokio::sync::Notify::new(),
        })
    }
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn submit(&self, i: usize, permit: OwnedSemaphorePermit) {
        self.submitted[i].store(self.now_us(), Ordering::Relaxed);
        *self.permits[i].lock().unwrap() = Some(permit);
    }
    fn finish(&self, i: usize) {
        let lat = self
            .now_us()
            .saturating_sub(self.submitted[i].load(Ordering::Relaxed));
        self.latency[i].store(lat.max(1), Ordering::Relaxed);
        self.permits[i].lock().unwrap().take();
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == RUNS as u64 {
            self.all_done.notify_one();
        }
    }
    /// Records an event's stamp (system clock, µs since the epoch) as run `i`'s first or last.
    fn stamped(&self, i: usize, timestamp_us: u64, last: bool) {
        let at = timestamp_us.saturating_sub(self.start_epoch_us);
        let slot = if last {
            &self.last_event
        } else {
            &self.first_event
        };
        slot[i].store(at, Ordering::Relaxed);
    }
    /// p50/p99 of each phase of ours' runs: submit -> first event (waiting to be polled),
    /// first -> last event (the run), last event -> its receipt by the subscriber.
    fn phases(&self) -> String {
        let mut wait = Vec::with_capacity(RUNS);
        let mut run = Vec::with_capacity(RUNS);
        let mut deliver = Vec::with_capacity(RUNS);
        for i in 0..RUNS {
            let submitted = self.submitted[i].load(Ordering::Relaxed);
            let first = self.first_event[i].load(Ordering::Relaxed);
            let last = self.last_event[i].load(Ordering::Relaxed);
            let received = submitted + self.latency[i].load(Ordering::Relaxed);
            wait.push(first.saturating_sub(submitted));
            run.push(last.saturating_sub(first));
            deliver.push(received.saturating_sub(last));
        }
        let pp = |mut v: Vec<u64>| {
            v.sort_unstable();
            format!("{}/{}", percentile(&v, 0.5), percentile(&v, 0.99))
        };
        format!(
            "phases p50/p99 us: submit->first event {}, first->last event {}, last event->received {}",
            pp(wait),
            pp(run),
            pp(deliver)
        )
    }
    fn latencies(&self) -> Vec<u64> {
        self.latency
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }
}

fn run_index(run: &RunId) -> usize {
    run.as_str()
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn ours(in_flight: usize) -> Shape {
    let factory: ExecutionEngineFactory =
        ExecutionEngineFactory::new(bench_config(256), bench_registry()).expect("factory");
    let users = bench_users(USERS);
    let book = Book::new();
    let mut engines = Vec::with_capacity(USERS);
    for ctx in &users {
        let mut sub = factory.subscribe(ctx.user_id());
        let b = Arc::clone(&book);
        tokio::spawn(async move {
            while let Some(e) = sub.recv().await {
                // Only the first and the last event of a run are looked at (the floor's
                // subscriber likewise parses the run id once per run).
                if e.seq == 1 {
                    b.stamped(run_index(&e.run_id), e.timestamp_us, false);
                }
                if e.event.is_terminal() {
                    let i = run_index(&e.run_id);
                    b.stamped(i, e.timestamp_us, true);
                    b.finish(i);
                }
            }
        });
        engines.push(factory.create_for_user(ctx).expect("engine"));
    }
    let gate = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    for i in 0..RUNS {
        let permit = Arc::clone(&gate).acquire_owned().await.expect("gate");
        let u = i % USERS;
        let ctx = users[u].with_run_id(RunId::new(format!("run-{i}")).expect("id"));
        book.submit(i, permit);
        let handle = engines[u].spawn(&ctx, "six", "").expect("spawn");
        drop(handle);
    }
    let notified = book.all_done.notified();
    if book.done.load(Ordering::Acquire) < RUNS as u64 {
        notified.await;
    }
    let elapsed = started.elapsed();
    drop(engines);
    factory.shutdown().await;
    if std::env::var_os("TAIL_PHASES").is_some() {
        println!("ours {in_flight} in flight: {}", book.phases());
    }
    shape(book.latencies(), elapsed)
}

fn envelope(user: &UserId, run: &RunId, seq: u64, event: AgentEvent) -> Arc<EventEnvelope> {
    Arc::new(EventEnvelope {
        user_id: user.clone(),
        thread_id: ThreadId::new("thread").expect("id"),
        run_id: run.clone(),
        request_id: RequestId::new("req-floor").expect("id"),
        seq,
        timestamp_us: 0,
        event,
    })
}

async fn floor(in_flight: usize) -> Shape {
    let users: Vec<UserId> = bench_users(USERS)
        .iter()
        .map(|c| c.user_id().clone())
        .collect();
    let book = Book::new();
    let mut senders = Vec::with_capacity(USERS);
    for _ in 0..USERS {
        let (tx, mut rx) = mpsc::channel::<Arc<EventEnvelope>>(256);
        let b = Arc::clone(&book);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if e.seq == 6 {
                    b.finish(run_index(&e.run_id));
                }
            }
        });
        senders.push(tx);
    }
    let gate = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    for i in 0..RUNS {
        let permit = Arc::clone(&gate).acquire_owned().await.expect("gate");
        let u = i % USERS;
        let run = RunId::new(format!("run-{i}")).expect("id");
        // The caller builds the run's context, as ours does.
        let ctx =
            UserExecutionContext::new(users[u].as_str(), "thread", run.as_str()).expect("ctx");
        book.submit(i, permit);
        let tx = senders[u].clone();
        let user = users[u].clone();
        tokio::spawn(async move {
            let _ctx = ctx;
            for seq in 1..=6u64 {
                let event = AgentEvent::AgentThinking {
                    reasoning: "x".into(),
                };
                if tx.send(envelope(&user, &run, seq, event)).await.is_err() {
                    return;
                }
            }
        });
    }
    let notified = book.all_done.notified();
    if book.done.load(Ordering::Acquire) < RUNS as u64 {
        notified.await;
    }
    let elapsed = started.elapsed();
    shape(book.latencies(), elapsed)
}

fn runtime(multi: bool) -> tokio::runtime::Runtime {
    if multi {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2).enable_all();
        // Scheduler knobs to compare (the runtime's defaults otherwise).
        if let Some(n) = std::env::var("TAIL_GLOBAL_QUEUE_INTERVAL")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            b.global_queue_interval(n);
        }
        #[cfg(tokio_unstable)]
        if std::env::var_os("TAIL_NO_LIFO").is_some() {
            b.disable_lifo_slot();
        }
        b.build().expect("runtime")
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }
}

/// The runtime's scheduler counters (`--cfg tokio_unstable` only), summed over workers.
#[cfg(tokio_unstable)]
#[derive(Debug, Default, Clone, Copy)]
struct Sched {
    steals: u64,
    local: u64,
    overflow: u64,
    remote: u64,
    forced_yields: u64,
    parks: u64,
    polls: u64,
}

#[cfg(tokio_unstable)]
fn sched() -> Sched {
    let m = tokio::runtime::Handle::current().metrics();
    let mut s = Sched {
        remote: m.remote_schedule_count(),
        forced_yields: m.budget_forced_yield_count(),
        ..Sched::default()
    };
    for w in 0..m.num_workers() {
        s.steals += m.worker_steal_count(w);
        s.local += m.worker_local_schedule_count(w);
        s.overflow += m.worker_overflow_count(w);
        s.parks += m.worker_park_count(w);
        s.polls += m.worker_poll_count(w);
    }
    s
}

/// Runs `side` and prints what the scheduler did meanwhile (`--cfg tokio_unstable`). With
/// `TAIL_SUBMITTER=worker` the side (its submitting loop) runs as a task on the runtime's
/// workers, as a gateway's connection tasks do, instead of on the `block_on` thread.
async fn measured<F>(name: &str, side: F) -> Shape
where
    F: std::future::Future<Output = Shape> + Send + 'static,
{
    #[cfg(tokio_unstable)]
    let before = sched();
    let out = if std::env::var("TAIL_SUBMITTER").as_deref() == Ok("worker") {
        tokio::spawn(side).await.expect("side")
    } else {
        side.await
    };
    #[cfg(tokio_unstable)]
    {
        let after = sched();
        println!(
            "sched {name:<24} polls {} local {} remote {} overflow {} steals {} parks {} forced-yields {} (per run: {:.1} polls, {:.2} steals)",
            after.polls - before.polls,
            after.local - before.local,
            after.remote - before.remote,
            after.overflow - before.overflow,
            after.steals - before.steals,
            after.parks - before.parks,
            after.forced_yields - before.forced_yields,
            (after.polls - before.polls) as f64 / RUNS as f64,
            (after.steals - before.steals) as f64 / RUNS as f64,
        );
    }
    #[cfg(not(tokio_unstable))]
    let _ = name;
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("TAIL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    for multi in [true, false] {
        // Median runs/s of (ours, floor) per in-flight count, for the 256-vs-64 line.
        let mut rates = Vec::new();
        for in_flight in [64, 256] {
            let mut o = Vec::new();
            let mut b = Vec::new();
            for round in 0..rounds {
                // Alternate which side goes first.
                let rt = runtime(multi);
                let label = format!("{}/{in_flight}", if multi { "2w" } else { "1t" });
                if round % 2 == 0 {
                    o.push(rt.block_on(measured(&format!("ours {label}"), ours(in_flight))));
                    b.push(rt.block_on(measured(&format!("floor {label}"), floor(in_flight))));
                } else {
                    b.push(rt.block_on(measured(&format!("floor {label}"), floor(in_flight))));
                    o.push(rt.block_on(measured(&format!("ours {label}"), ours(in_flight))));
                }
            }
            let m = |v: &[Shape], f: fn(&Shape) -> f64| median(v.iter().map(f).collect());
            let (or, op50, op99, op999) = (
                m(&o, |s| s.runs_per_s),
                m(&o, |s| s.p50 as f64),
                m(&o, |s| s.p99 as f64),
                m(&o, |s| s.p999 as f64),
            );
            let (br, bp50, bp99, bp999) = (
                m(&b, |s| s.runs_per_s),
                m(&b, |s| s.p50 as f64),
                m(&b, |s| s.p99 as f64),
                m(&b, |s| s.p999 as f64),
            );
            // Ratios paired within each round, then their median (as `cargo xtask bench` does).
            let paired = |f: &dyn Fn(&Shape, &Shape) -> f64| {
                median(o.iter().zip(&b).map(|(o, b)| f(o, b)).collect())
            };
            let p99_vs_floor = paired(&|o, b| o.p99 as f64 / (b.p99 as f64).max(1.0));
            let own_tail = |v: &[Shape]| {
                median(
                    v.iter()
                        .map(|s| s.p99 as f64 / (s.p50 as f64).max(1.0))
                        .collect(),
                )
            };
            let name = format!(
                "tail {} {in_flight} in flight",
                if multi { "2 workers" } else { "1 thread" }
            );
            println!(
                "{name:<28} {:>36} {:>36} {:>8.2}x",
                format!(
                    "{:.0}k runs/s p50/p99/p99.9 {op50:.0}/{op99:.0}/{op999:.0} us",
                    or / 1e3
                ),
                format!(
                    "{:.0}k runs/s p50/p99/p99.9 {bp50:.0}/{bp99:.0}/{bp999:.0} us",
                    br / 1e3
                ),
                p99_vs_floor
            );
            println!(
                "{:<28} ours p99/p50 {:.1}x, floor p99/p50 {:.1}x (medians of {rounds} rounds)",
                "",
                own_tail(&o),
                own_tail(&b)
            );
            rates.push((or, br));
        }
        if let [(o64, b64), (o256, b256)] = rates[..] {
            println!(
                "{:<28} runs/s at 256 in flight / at 64: ours {:.2}x, floor {:.2}x",
                format!("tail {}", if multi { "2 workers" } else { "1 thread" }),
                o256 / o64,
                b256 / b64
            );
        }
    }
}
