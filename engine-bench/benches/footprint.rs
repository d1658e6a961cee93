//! Memory per idle engine and emit-to-receipt latency under fan-out, each beside a floor
//! measured in the same run. Prints `name  ours  baseline  ratio` lines.
//!
//! Memory is measured in child processes (one per side) from the resident set size, so one
//! side's freed memory cannot flatter the other. Latency is measured in interleaved rounds
//! (`LATENCY_ROUNDS`, 5 by default; the paced row takes twice as many less one).
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use engine_bench::{bench_engines, bench_factory, bench_users};
use engine_core::{AgentEvent, EventEnvelope, RunId, ThreadId};
use tokio::sync::mpsc;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Nanoseconds from an event stamped `stamp_us` (whole microseconds, truncated, as the engine
/// stamps) to now. The stamp is taken as the middle of its microsecond, so the latency is
/// unbiased and not rounded to whole microseconds (which made small percentiles, and their
/// ratios, jump between integers).
fn latency_ns(stamp_us: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now.saturating_sub(stamp_us * 1000 + 500)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Child process: bytes per idle engine (with one subscriber) or per floor unit.
fn memory_child(which: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let before = rss_bytes();
    let held: Box<dyn std::any::Any> = match which {
        "ours" => {
            let factory = bench_factory(256);
            let users = bench_users(n);
            let subs: Vec<_> = users
                .iter()
                .map(|c| factory.subscribe(c.user_id()))
                .collect();
            let engines = rt.block_on(async { bench_engines(&factory, &users) });
            Box::new((factory, users, subs, engines))
        }
        _ => {
            let users = bench_users(n);
            let floor: Vec<_> = users
                .into_iter()
                .map(|c| (Arc::new(c), mpsc::channel::<Arc<EventEnvelope>>(256)))
                .collect();
            Box::new(floor)
        }
    };
    let after = rss_bytes();
    println!("{}", (after.saturating_sub(before)) / n as u64);
    drop(held);
}

fn memory(n: usize) -> (u64, u64) {
    let exe = std::env::current_exe().expect("exe");
    let run = |which: &str| -> u64 {
        let out = std::process::Command::new(&exe)
            .args(["--memory-child", which, &n.to_string()])
            .output()
            .expect("child runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    (run("ours"), run("floor"))
}

fn percentiles(mut v: Vec<u64>) -> [u64; 3] {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    [at(0.50), at(0.99), at(0.999)]
}

/// Which side of a latency round.
#[derive(Clone, Copy)]
enum Side {
    Ours,
    Floor,
}

/// One received event: its sequence number in its run and its emit-to-receipt latency (ns).
type Sample = (u64, u64);

/// Emit-to-receipt latencies of one side, with `users` subscribers and `per_user` events
/// each; with `pace_ms > 0` every user emits one event per `pace_ms`, the users evenly
/// staggered (a steady load instead of one burst).
fn latencies(
    rt: &tokio::runtime::Runtime,
    side: Side,
    users_n: usize,
    per_user: u64,
    pace_ms: u64,
) -> Vec<Sample> {
    rt.block_on(async {
        let users = bench_users(users_n);
        match side {
            Side::Ours => ours_latencies(&users, per_user, pace_ms).await,
            Side::Floor => floor_latencies(&users, per_user, pace_ms).await,
        }
    })
}

/// Ours: runs emit, the hub routes, each user's subscriber measures.
async fn ours_latencies(
    users: &[engine_core::UserExecutionContext],
    per_user: u64,
    pace_ms: u64,
) -> Vec<Sample> {
    let users_n = users.len();
    let factory = bench_factory(256);
    let readers: Vec<_> = users
        .iter()
        .map(|c| {
            let mut sub = factory.subscribe(c.user_id());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_user as usize);
                while lat.len() < per_user as usize {
                    match sub.recv().await {
                        Some(e) => lat.push((e.seq, latency_ns(e.timestamp_us))),
                        None => break,
                    }
                }
                lat
            })
        })
        .collect();
    let engines = bench_engines(&factory, users);
    let runs: Vec<_> = engines
        .iter()
        .zip(users)
        .enumerate()
        .map(|(i, ((_, e), c))| {
            let input = if pace_ms == 0 {
                (per_user - 2).to_string()
            } else {
                let offset = pace_ms * i as u64 / users_n as u64;
                format!("{}@{pace_ms}+{offset}", per_user - 2)
            };
            e.spawn(&c.new_run(), "burst", input).expect("spawn")
        })
        .collect();
    // The readers first, as the floor's block_on awaits only its readers: awaiting each run's
    // outcome while the runs end wakes the block_on thread (a futex wake on the worker, a
    // third thread on two vCPUs) between a terminal event and its reader, which doubled
    // ours' p99.9 and was not in the floor. The outcomes are all in by then.
    let mut ours = Vec::new();
    for r in readers {
        ours.extend(r.await.expect("reader"));
    }
    for r in runs {
        r.outcome().await.expect("ran");
    }
    drop(engines);
    factory.shutdown().await;
    ours
}

/// Floor: per-user mpsc, the producer stamps the time as the engine does.
async fn floor_latencies(
    users: &[engine_core::UserExecutionContext],
    per_user: u64,
    pace_ms: u64,
) -> Vec<Sample> {
    let users_n = users.len();
    let mut tasks = Vec::new();
    for (i, c) in users.iter().enumerate() {
        let (tx, mut rx) = mpsc::channel::<Arc<EventEnvelope>>(256);
        let user = c.user_id().clone();
        let offset = pace_ms * i as u64 / users_n as u64;
        tokio::spawn(async move {
            // The events come when ours' do: the first at once (the engine emits
            // `agent_started` as the run starts), the second after the user's offset, then
            // one per pace.
            for seq in 1..=per_user {
                if pace_ms > 0 && seq == 2 {
                    tokio::time::sleep(std::time::Duration::from_millis(offset)).await;
                }
                if pace_ms > 0 && seq > 2 {
                    tokio::time::sleep(std::time::Duration::from_millis(pace_ms)).await;
                }
                let e = EventEnvelope {
                    user_id: user.clone(),
                    thread_id: ThreadId::new("thread").expect("id"),
                    run_id: RunId::new("run-1").expect("id"),
                    request_id: engine_core::RequestId::new("req-1").expect("id"),
                    seq,
                    timestamp_us: now_us(),
                    event: AgentEvent::AgentThinking {
                        reasoning: "step".into(),
                    },
                };
                let _ = tx.send(Arc::new(e)).await;
            }
        });
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(e) = rx.recv().await {
                lat.push((e.seq, latency_ns(e.timestamp_us)));
            }
            lat
        }));
    }
    let mut floor = Vec::new();
    for t in tasks {
        floor.extend(t.await.expect("floor"));
    }
    floor
}

/// p50/p99/p99.9 of ours and the floor over `rounds` interleaved rounds (ours first in even
/// rounds, the floor first in odd ones): each side's medians of its per-round percentiles, and
/// the medians of the per-round ratios, so one disturbed second on the VM moves one round,
/// not the row.
///
/// Returns two rows: every event, and the steady events only (neither a run's first event,
/// emitted as all the runs start at once, nor its last, emitted as the run ends).
fn latency(users_n: usize, per_user: u64, pace_ms: u64, rounds: usize) -> (LatencyRow, LatencyRow) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let (mut all, mut steady) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let order = if round % 2 == 0 {
            [Side::Ours, Side::Floor]
        } else {
            [Side::Floor, Side::Ours]
        };
        let (mut got_all, mut got_steady) = ([[0u64; 3]; 2], [[0u64; 3]; 2]);
        for side in order {
            let samples = latencies(&rt, side, users_n, per_user, pace_ms);
            got_steady[side as usize] = percentiles(
                samples
                    .iter()
                    .filter(|(seq, _)| (2..per_user).contains(seq))
                    .map(|&(_, l)| l)
                    .collect(),
            );
            got_all[side as usize] = percentiles(samples.into_iter().map(|(_, l)| l).collect());
        }
        all.push(got_all);
        steady.push(got_steady);
    }
    (
        LatencyRow { per_round: all },
        LatencyRow { per_round: steady },
    )
}

/// Per round: `[ours, floor]` p50/p99/p99.9 in ns.
struct LatencyRow {
    per_round: Vec<[[u64; 3]; 2]>,
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Prints p50/p99/p99.9 lines: `name_pXX  ours  floor  ratio  spread   (what)`, each side's
/// median over the rounds, the median per-round ratio and its spread.
fn print_latency(name: &str, row: &LatencyRow, what: &str) {
    let rounds = row.per_round.len();
    for (i, p) in ["p50", "p99", "p99.9"].iter().enumerate() {
        let side =
            |s: usize| median_of(row.per_round.iter().map(|r| r[s][i] as f64).collect()) / 1000.0;
        let ratios: Vec<f64> = row
            .per_round
            .iter()
            .map(|r| r[0][i] as f64 / r[1][i].max(1) as f64)
            .collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "{name}_{p}  {:.1} us  {:.1} us  {:.2}x  {lo:.2}-{hi:.2} ({rounds} rounds)   ({what})",
            side(0),
            side(1),
            median_of(ratios),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        let which = args.get(i + 1).map_or("floor", String::as_str);
        let n = args
            .get(i + 2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        memory_child(which, n);
        return;
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list` probes: nothing to list.
    }
    let engines = env_usize("FOOTPRINT_ENGINES", 100_000);
    let (ours, floor) = memory(engines);
    println!(
        "memory_per_idle_engine  {ours} B  {floor} B  {:.2}x   ({engines} engines, one subscriber each)",
        ours as f64 / floor.max(1) as f64
    );
    let users = env_usize("FOOTPRINT_USERS", 10_000);
    let rounds = env_usize("LATENCY_ROUNDS", 5);
    print_latency(
        "latency",
        &latency(users, 100, 0, rounds).0,
        &format!("{users} users x 100 events, one burst"),
    );
    // The paced row's rounds scatter most (one disturbed millisecond of the VM decides a
    // p99.9 of a few microseconds): twice the rounds less one, like xtask's noisy rows.
    let (paced, steady) = latency(users, 12, 100, (rounds * 2).saturating_sub(1));
    print_latency(
        "latency_paced",
        &paced,
        &format!("{users} users, 1 event per user per 100 ms, staggered, 1 s per side and round"),
    );
    print_latency(
        "latency_steady",
        &steady,
        "the paced rounds' steady events: not a run's first or last",
    );
}
