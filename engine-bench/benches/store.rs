//! The run store (engine-store's `SqlStore`) against its floors, in one run:
//!
//! * `store_events_sqlite`: 20,004 envelopes of real six-event runs (8 users, 3,334 runs,
//!   collected from a factory's subscribers) through `RunStore::event` and `flush()` on a fresh
//!   SQLite file, timed until flushed (`ours`), against the same rows written by plain sqlx
//!   (`raw_sqlx`): the same statements writer.rs makes (one transaction per 512 writes,
//!   multi-row inserts of up to 256 events, split at each run's terminal event, which has its
//!   own conditional insert; the JSON body made from the event) on a pool opened as the store
//!   opens its own, into the table the store's migration made. What is left is the store's
//!   machinery: the queue, the writer task, batching and its bookkeeping.
//! * `store_events_postgres`: the same on a real PostgreSQL (`engine_store::testing`), the
//!   table emptied before each iteration; skipped with a note where PostgreSQL is missing.
//! * `runs_1000_users_store`: row 4b (`runs_1000_users`: 10,000 six-event runs across 1,000
//!   users) with a factory whose seams have a `SqlStore` on SQLite (`ours`) against the same
//!   factory without a store (`memory`).
//! * `--exact store_probes` (what `cargo xtask bench store` runs after the comparisons) prints
//!   its own rows: `thread_read`, the p50 / p99 of `thread_messages(user, thread, 20)` on a
//!   200-turn thread in SQLite against the same `SELECT` through plain sqlx; and
//!   `store_capacity`, runs of row 4b offered at a steady rate for 3 s each, rising until two
//!   rates have lost events, with the store's peak `buffered` and `events_dropped`, to show
//!   where the store stops keeping up and what the buffer rule then does (events not stored
//!   are gaps; run records are kept), then what the database holds.
#![allow(clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use engine_bench::{bench_config, bench_factory, bench_registry, bench_users, RunsAcrossUsers};
use engine_core::{async_trait, Agent, AgentRegistry, BoxError, EventEnvelope, RunContext};
use engine_factory::{ExecutionEngineFactory, RunStore, Seams};
use engine_store::testing::PostgresServer;
use engine_store::{SqlStore, StoreConfig};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use tokio::runtime::Runtime;

/// Runs whose events the `store_events_*` rows write (six events each: 20,004 events).
const EVENT_RUNS: usize = 3_334;
/// Writes per transaction: the store's default batch size.
const BATCH: usize = 512;
/// Events per multi-row insert, as writer.rs.
const CHUNK: usize = 256;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Whether the command line asks for `name` (a group, or `group/function`): criterion's
/// `--exact <id>`, as `cargo xtask bench` measures one side at a time; everything otherwise.
fn wanted(name: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == "--exact")
        .and_then(|i| args.get(i + 1))
    {
        Some(id) => id == name || id.starts_with(&format!("{name}/")),
        None => true,
    }
}

/// Runs `f` as a task on a worker of `rt` and returns its result.
fn on_worker<T: Send + 'static>(
    rt: &Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(async move { tokio::spawn(f).await.expect("task") })
}

/// The envelopes of `EVENT_RUNS` six-event runs of 8 users, as their subscribers got them.
fn realistic_events(rt: &Runtime) -> Arc<Vec<EventEnvelope>> {
    let users = bench_users(8);
    let got = Arc::new(Mutex::new(Vec::with_capacity(EVENT_RUNS * 6)));
    rt.block_on(async {
        let factory = bench_factory(65_536);
        let readers: Vec<_> = users
            .iter()
            .map(|u| {
                let mut sub = factory.subscribe(u.user_id());
                let got = Arc::clone(&got);
                tokio::spawn(async move {
                    while let Some(e) = sub.recv().await {
                        got.lock().expect("events").push(e);
                    }
                })
            })
            .collect();
        let engines = engine_bench::bench_engines(&factory, &users);
        for i in 0..EVENT_RUNS {
            let (ctx, engine) = (
                users[i % users.len()].new_run(),
                &engines[i % users.len()].1,
            );
            engine.execute(&ctx, "six", "").await.expect("ran");
        }
        drop(engines);
        factory.shutdown().await;
        for r in readers {
            r.await.expect("reader");
        }
    });
    let events = std::mem::take(&mut *got.lock().expect("events"));
    assert_eq!(events.len(), EVENT_RUNS * 6);
    Arc::new(events)
}

/// A pool on the store's database, opened as `SqlStore::open` opens its own (engine-store's
/// db.rs: 4 connections; on SQLite WAL, `synchronous = NORMAL`, a busy timeout).
async fn raw_pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    let options = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5));
    if url.starts_with("sqlite:") {
        options
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            })
            .connect(&format!("{url}?mode=rwc"))
            .await
            .expect("sqlite pool")
    } else {
        options.connect(url).await.expect("postgres pool")
    }
}

/// `INSERT INTO events ... VALUES ($1, ..., $6), ... ON CONFLICT DO NOTHING` for `rows` rows:
/// the statement of writer.rs.
fn insert_sql(rows: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::from(
        "INSERT INTO events (user_id, run_id, seq, request_id, timestamp_us, body) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..6 {
            if col > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${}", row * 6 + col + 1);
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (user_id, run_id, seq) DO NOTHING");
    sql
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn insert_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    rows: &[&EventEnvelope],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(CHUNK) {
        let sql = insert_sql(chunk.len());
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(e.user_id.as_str())
                .bind(e.run_id.as_str())
                .bind(i64_of(e.seq))
                .bind(e.request_id.as_str())
                .bind(i64_of(e.timestamp_us))
                .bind(serde_json::to_string(&e.event).expect("json"));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The floor: `events` written as writer.rs writes them, without the store around it.
async fn raw_write(pool: &AnyPool, events: &[EventEnvelope]) -> Result<(), sqlx::Error> {
    for batch in events.chunks(BATCH) {
        let mut tx = pool.begin().await?;
        let mut rows: Vec<&EventEnvelope> = Vec::with_capacity(BATCH);
        for e in batch {
            if e.event.is_terminal() {
                insert_rows(&mut tx, &rows).await?;
                rows.clear();
                sqlx::query(
                    "INSERT INTO events (user_id, run_id, seq, request_id, timestamp_us, body) \
                     SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS \
                     (SELECT 1 FROM runs WHERE user_id = $1 AND run_id = $2 AND status = 'interrupted') \
                     ON CONFLICT (user_id, run_id, seq) DO NOTHING",
                )
                .bind(e.user_id.as_str())
                .bind(e.run_id.as_str())
                .bind(i64_of(e.seq))
                .bind(e.request_id.as_str())
                .bind(i64_of(e.timestamp_us))
                .bind(serde_json::to_string(&e.event).expect("json"))
                .execute(&mut *tx)
                .await?;
            } else {
                rows.push(e);
            }
        }
        insert_rows(&mut tx, &rows).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// `ours`: the events through the store, timed until flushed.
async fn store_write(store: &SqlStore, events: &[EventEnvelope]) {
    for e in events {
        store.event(e);
    }
    store.flush().await;
}

/// Lets connections closed in the background (a dropped store's pool, whose last SQLite
/// connection checkpoints the WAL into the file as it closes) finish before the next timed
/// part, so neither side is timed while the other's teardown runs. Untimed.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn count_events(pool: &AnyPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count")
}

/// `store_events_sqlite`: a fresh SQLite file per iteration (the store opened on it first,
/// which makes the schema; the floor then opens its own pool on it).
fn events_sqlite(c: &mut Criterion) {
    if !wanted("store_events_sqlite") {
        return;
    }
    let rt = runtime();
    let events = realistic_events(&rt);
    let fresh = || {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        (dir, url)
    };
    let mut g = c.benchmark_group("store_events_sqlite");
    g.sample_size(10);
    // One iteration takes 0.3 s to 5 s: ten samples of equal iterations, not 55 (linear).
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("ours", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let (_dir, url) = fresh();
                let events = Arc::clone(&events);
                took += on_worker(&rt, async move {
                    let store = SqlStore::open(StoreConfig::new(url.clone()))
                        .await
                        .expect("store");
                    settle().await;
                    let start = Instant::now();
                    store_write(&store, &events).await;
                    let took = start.elapsed();
                    assert_eq!(store.health().events_dropped, 0);
                    drop(store);
                    let pool = raw_pool(&url).await;
                    assert_eq!(count_events(&pool).await, events.len() as i64);
                    pool.close().await;
                    settle().await;
                    took
                });
            }
            took
        });
    });
    g.bench_function("raw_sqlx", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let (_dir, url) = fresh();
                let events = Arc::clone(&events);
                took += on_worker(&rt, async move {
                    drop(
                        SqlStore::open(StoreConfig::new(url.clone()))
                            .await
                            .expect("schema"),
                    );
                    let pool = raw_pool(&url).await;
                    settle().await;
                    let start = Instant::now();
                    raw_write(&pool, &events).await.expect("raw write");
                    let took = start.elapsed();
                    assert_eq!(count_events(&pool).await, events.len() as i64);
                    pool.close().await;
                    settle().await;
                    took
                });
            }
            took
        });
    });
    g.finish();
}

/// `store_events_postgres`: one database per side on a PostgreSQL started here, `events`
/// emptied (untimed) before each iteration.
fn events_postgres(c: &mut Criterion) {
    if !wanted("store_events_postgres") {
        return;
    }
    let Some(server) = PostgresServer::start() else {
        println!("store_events_postgres: PostgreSQL not installed, skipped");
        return;
    };
    let rt = runtime();
    let events = realistic_events(&rt);
    let mut g = c.benchmark_group("store_events_postgres");
    g.sample_size(10);
    // One iteration takes 0.3 s to 5 s: ten samples of equal iterations, not 55 (linear).
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(events.len() as u64));
    let mut ours: Option<(SqlStore, AnyPool)> = None;
    g.bench_function("ours", |b| {
        let (store, pool) = ours.get_or_insert_with(|| {
            let url = server.create_database("bench_ours");
            rt.block_on(async {
                let store = SqlStore::open(StoreConfig::new(url.clone()))
                    .await
                    .expect("store");
                (store, raw_pool(&url).await)
            })
        });
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let (store, pool, events) = (store.clone(), pool.clone(), Arc::clone(&events));
                took += on_worker(&rt, async move {
                    pool.execute("TRUNCATE events").await.expect("truncate");
                    let start = Instant::now();
                    store_write(&store, &events).await;
                    let took = start.elapsed();
                    assert_eq!(store.health().events_dropped, 0);
                    assert_eq!(count_events(&pool).await, events.len() as i64);
                    took
                });
            }
            took
        });
    });
    let mut raw: Option<AnyPool> = None;
    g.bench_function("raw_sqlx", |b| {
        let pool = raw.get_or_insert_with(|| {
            let url = server.create_database("bench_raw");
            rt.block_on(async {
                drop(
                    SqlStore::open(StoreConfig::new(url.clone()))
                        .await
                        .expect("schema"),
                );
                raw_pool(&url).await
            })
        });
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let (pool, events) = (pool.clone(), Arc::clone(&events));
                took += on_worker(&rt, async move {
                    pool.execute("TRUNCATE events").await.expect("truncate");
                    let start = Instant::now();
                    raw_write(&pool, &events).await.expect("raw write");
                    let took = start.elapsed();
                    assert_eq!(count_events(&pool).await, events.len() as i64);
                    took
                });
            }
            took
        });
    });
    g.finish();
    drop(ours);
    drop(raw);
    drop(rt);
    drop(server);
}

/// Row 4b with a SQLite store in the factory's seams, in a temporary directory; the store
/// is returned to read its health.
fn runs_with_store(users: usize) -> (RunsAcrossUsers, SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let mut opened = None;
    let setup = RunsAcrossUsers::with_factory(users, |rt| {
        let store = rt
            .block_on(SqlStore::open(StoreConfig::new(url)))
            .expect("store");
        opened = Some(store.clone());
        let seams = Seams::default().run_store(Arc::new(store));
        ExecutionEngineFactory::with_seams(bench_config(4096), bench_registry(), seams)
            .expect("factory")
    });
    (setup, opened.expect("store"), dir)
}

/// `runs_1000_users_store`: row 4b with the store (`ours`) and without (`memory`).
fn runs_store(c: &mut Criterion) {
    const RUNS: u64 = 10_000;
    if !wanted("runs_1000_users_store") {
        return;
    }
    let mut g = c.benchmark_group("runs_1000_users_store");
    g.sample_size(10);
    // One iteration takes 0.3 s to 5 s: ten samples of equal iterations, not 55 (linear).
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(RUNS));
    let mut ours = None;
    g.bench_function("ours", |b| {
        let (setup, ..) = ours.get_or_insert_with(|| runs_with_store(1000));
        b.iter_custom(|iters| setup.measure(RUNS as usize, iters));
    });
    let mut memory = None;
    g.bench_function("memory", |b| {
        let setup = memory.get_or_insert_with(|| RunsAcrossUsers::new(1000));
        b.iter_custom(|iters| setup.measure(RUNS as usize, iters));
    });
    g.finish();
    if let Some((setup, store, dir)) = ours {
        let dropped = store.health().events_dropped;
        if dropped > 0 {
            println!("runs_1000_users_store: {dropped} events not stored (buffer full)");
        }
        drop(setup);
        drop(store);
        drop(dir);
    }
}

/// A turn of a conversation: one thought, then an answer of about 200 characters.
#[derive(Debug, Default)]
struct TurnAgent;

#[async_trait]
impl Agent for TurnAgent {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        ctx.think("reading the question").await;
        Ok(format!(
            "Here is what I found about \"{input}\": the answer depends on the details you \
             gave earlier in this thread, so I checked them again before answering."
        ))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// `thread_read`: 200 turns of one thread (and 50 other users' 20-turn threads around it)
/// through a factory with a SQLite store, then 2,000 reads of the thread's last 20 messages
/// through `thread_messages` and through plain sqlx.
fn thread_read() {
    const TURNS: usize = 200;
    const READS: usize = 2_000;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let (ours, floor) = rt.block_on(async {
        let store = SqlStore::open(StoreConfig::new(url.clone()))
            .await
            .expect("store");
        let registry = AgentRegistry::builder()
            .agent("turn", || TurnAgent)
            .build()
            .expect("registry");
        let seams = Seams::default().run_store(Arc::new(store.clone()));
        let factory = ExecutionEngineFactory::with_seams(bench_config(4096), registry, seams)
            .expect("factory");
        let others = bench_users(50);
        let engines = engine_bench::bench_engines(&factory, &others);
        let mut noise = Vec::new();
        for turn in 0..20 {
            for (ctx, (_, engine)) in others.iter().zip(&engines) {
                let ctx = ctx.new_run();
                noise.push(
                    engine
                        .spawn(&ctx, "turn", format!("question {turn}"))
                        .expect("spawn"),
                );
            }
        }
        let user = engine_core::UserExecutionContext::new("reader", "a-long-thread", "run-0")
            .expect("context");
        let engine = factory.create_for_user(&user).expect("engine");
        for turn in 0..TURNS {
            engine
                .execute(&user.new_run(), "turn", &format!("question number {turn}"))
                .await
                .expect("turn");
        }
        for h in noise {
            h.outcome().await.expect("noise run");
        }
        store.flush().await;
        let (uid, thread) = (user.user_id().clone(), user.thread_id().clone());
        let got = store
            .thread_messages(&uid, &thread, 20)
            .await
            .expect("read");
        assert_eq!(got.len(), 20);
        let mut ours = Vec::with_capacity(READS);
        for _ in 0..READS {
            let start = Instant::now();
            let got = store
                .thread_messages(&uid, &thread, 20)
                .await
                .expect("read");
            ours.push(start.elapsed());
            assert_eq!(got.len(), 20);
        }
        let pool = raw_pool(&url).await;
        let mut floor = Vec::with_capacity(READS);
        for _ in 0..READS {
            let start = Instant::now();
            let rows = sqlx::query(
                "SELECT role, content, run_id, created_us FROM messages \
                 WHERE user_id = $1 AND thread_id = $2 ORDER BY id DESC LIMIT $3",
            )
            .bind(uid.as_str())
            .bind(thread.as_str())
            .bind(20i64)
            .fetch_all(&pool)
            .await
            .expect("raw read");
            floor.push(start.elapsed());
            assert_eq!(rows.len(), 20);
        }
        pool.close().await;
        drop(engine);
        drop(engines);
        factory.shutdown().await;
        (ours, floor)
    });
    let (mut ours, mut floor) = (ours, floor);
    ours.sort_unstable();
    floor.sort_unstable();
    let (o50, o99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
    let (f50, f99) = (percentile(&floor, 0.5), percentile(&floor, 0.99));
    println!(
        "{:<28} {:>22} {:>22} {:>8.2}x  (p99; target p99 <= 2 ms: {})",
        "thread_read (sqlite)",
        format!("p50 {} us p99 {} us", micros(o50), micros(o99)),
        format!("p50 {} us p99 {} us", micros(f50), micros(f99)),
        o99.as_secs_f64() / f99.as_secs_f64().max(1e-9),
        if o99 <= Duration::from_millis(2) {
            "met"
        } else {
            "not met"
        }
    );
}

/// `store_capacity`: row 4b's runs (1,000 users, SQLite store with the default 65,536-event
/// buffer) offered at rising steady rates for 3 s each; per rate, the runs that ended per
/// second, the store's peak `buffered` and the events it did not store. After the last rate:
/// what the database holds (runs, events, gap ranges).
fn store_capacity() {
    const WINDOW: Duration = Duration::from_secs(3);
    const RATES: [u64; 7] = [1_000, 2_000, 3_000, 4_000, 8_000, 16_000, 32_000];
    let (setup, store, dir) = runs_with_store(1000);
    let (users, engines) = (Arc::new(setup.users().to_vec()), setup.engines());
    let (mut total_runs, mut dropping) = (0u64, 0);
    for rate in RATES {
        if dropping == 2 {
            break; // two rates past the point where events are not stored: enough to show it
        }
        let (users, engines, store2) = (Arc::clone(&users), Arc::clone(&engines), store.clone());
        let before = store.health().events_dropped;
        let (runs, peak, ended) = setup.runtime().block_on(async move {
            tokio::spawn(async move {
                let n = users.len();
                let start = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                let (mut spawned, mut peak) = (0u64, 0usize);
                let mut handles = Vec::new();
                loop {
                    tick.tick().await;
                    let elapsed = start.elapsed();
                    if elapsed >= WINDOW {
                        break;
                    }
                    let due = (elapsed.as_secs_f64() * rate as f64) as u64;
                    while spawned < due {
                        let i = spawned as usize % n;
                        let ctx = users[i].new_run();
                        handles.push(engines[i].1.spawn(&ctx, "six", "").expect("spawn"));
                        spawned += 1;
                    }
                    peak = peak.max(store2.health().buffered);
                }
                for h in handles {
                    let _ = h.outcome().await;
                    peak = peak.max(store2.health().buffered);
                }
                (spawned, peak, start.elapsed())
            })
            .await
            .expect("paced runs")
        });
        let dropped = store.health().events_dropped - before;
        println!(
            "{:<28} {:>22} {:>22} {:>22}",
            format!("store_capacity {rate}/s"),
            format!("{:.0} runs/s ended", runs as f64 / ended.as_secs_f64()),
            format!("peak buffered {peak}"),
            format!("not stored {dropped}"),
        );
        total_runs += runs;
        dropping += usize::from(dropped > 0);
        // Let the writer catch up before the next rate (bounded).
        let flushed = setup.runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(120), store.flush())
                .await
                .is_ok()
        });
        if !flushed {
            println!("store_capacity: the writer did not catch up within 120 s; stopped");
            break;
        }
    }
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let (runs, ended, events, gaps, gap_events): (i64, i64, i64, i64, i64) =
        setup.runtime().block_on(async {
            let pool = raw_pool(&url).await;
            let one = |sql: &'static str| {
                let pool = pool.clone();
                async move {
                    sqlx::query_scalar::<_, i64>(sql)
                        .fetch_one(&pool)
                        .await
                        .expect("count")
                }
            };
            let counts = (
                one("SELECT COUNT(*) FROM runs").await,
                one("SELECT COUNT(*) FROM runs WHERE status <> 'running'").await,
                one("SELECT COUNT(*) FROM events").await,
                one("SELECT COUNT(*) FROM gaps").await,
                one("SELECT CAST(COALESCE(SUM(to_seq - from_seq + 1), 0) AS BIGINT) FROM gaps")
                    .await,
            );
            pool.close().await;
            counts
        });
    println!(
        "store_capacity kept: {total_runs} runs offered, {runs} run records ({ended} ended), \
         {events} events stored + {gap_events} in {gaps} gap ranges = {} (6 per run: {})",
        events + gap_events,
        total_runs * 6
    );
    drop(setup);
    drop(store);
    drop(dir);
}

fn probes() {
    if std::env::args().any(|a| a == "store_probes") {
        thread_read();
        store_capacity();
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    events_sqlite(&mut c);
    events_postgres(&mut c);
    runs_store(&mut c);
    probes();
    c.final_summary();
}
