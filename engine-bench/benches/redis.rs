//! Cluster mode against its floors, in one run on one real `redis-server` (started here on a
//! free loopback port; the benchmark is skipped where `redis-server` is not installed):
//!
//! * `redis_events`: 10 runs x 100 events of one user through the factory with the Redis
//!   event bus, run on one node and read on another (engine → XADD pipeline → XREAD on the
//!   other node → its hub → subscriber; a node's own subscribers get their events from the
//!   hub directly, without Redis) against the in-memory hub
//!   (`in_memory`) and against raw redis-rs doing the same trip (`raw_xadd_xread`: pipelines
//!   of 256 `XADD`s of the same JSON on one connection, a blocking `XREAD` reader on another
//!   that decodes every entry);
//! * `redis_admission`: `create` + `close` of an engine through the cluster admission (one
//!   `EVALSHA` reserve awaited, the release sent in the background, as in production) against
//!   raw `EVALSHA` of a minimal lease script in the same shape;
//! * then emit-to-receipt latency percentiles (paced: one event per ms) for the three event
//!   paths, printed as `name  ours  baseline  ratio` lines.
#![allow(clippy::print_stdout)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use engine_bench::{bench_config, bench_registry};
use engine_core::{
    AgentEvent, EventEnvelope, RequestId, RunId, ThreadId, UserExecutionContext, UserId,
};
use engine_factory::{ExecutionEngineFactory, Seams};
use engine_redis::testing::RedisServer;
use engine_redis::{ClusterConfig, RedisCluster};
use redis::streams::StreamReadReply;

const RUNS: usize = 10;
const EVENTS_PER_RUN: usize = 100;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

struct Setup {
    rt: tokio::runtime::Runtime,
    _redis: RedisServer,
    url: String,
    cluster: RedisCluster,
    clustered: ExecutionEngineFactory,
    /// A second node on the same Redis, whose subscribers get `clustered`'s runs through it.
    remote_cluster: RedisCluster,
    remote: ExecutionEngineFactory,
    local: ExecutionEngineFactory,
}

fn setup() -> Option<Setup> {
    let redis = RedisServer::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = redis.url();
    let cluster = rt
        .block_on(RedisCluster::connect(
            ClusterConfig::new(url.clone()).with_node_id("bench"),
        ))
        .expect("redis");
    let clustered =
        ExecutionEngineFactory::with_seams(bench_config(4096), bench_registry(), cluster.seams())
            .expect("factory");
    cluster.serve(&clustered);
    let remote_cluster = rt
        .block_on(RedisCluster::connect(
            ClusterConfig::new(url.clone()).with_node_id("bench-b"),
        ))
        .expect("redis");
    let remote = ExecutionEngineFactory::with_seams(
        bench_config(4096),
        bench_registry(),
        remote_cluster.seams(),
    )
    .expect("factory");
    remote_cluster.serve(&remote);
    let local =
        ExecutionEngineFactory::with_seams(bench_config(4096), bench_registry(), Seams::default())
            .expect("factory");
    Some(Setup {
        rt,
        _redis: redis,
        url,
        cluster,
        clustered,
        remote_cluster,
        remote,
        local,
    })
}

/// Runs `RUNS` bursts of `EVENTS_PER_RUN` events for one user on `factory` and waits for all
/// of them at a subscriber on `reader` (another node, or the same factory).
async fn through_factory(
    factory: &ExecutionEngineFactory,
    reader: &ExecutionEngineFactory,
    user: &str,
    round: u64,
) {
    let user_id = UserId::new(user).expect("id");
    let mut sub = reader.subscribe(&user_id);
    sub.ready().await.expect("ready");
    let root = UserExecutionContext::new(user, "thread", format!("root-{round}")).expect("ctx");
    let engine = factory.create(&root).await.expect("engine");
    let input = (EVENTS_PER_RUN - 2).to_string();
    let mut handles = Vec::with_capacity(RUNS);
    for r in 0..RUNS {
        let ctx = root.with_run_id(RunId::new(format!("run-{round}-{r}")).expect("id"));
        handles.push(engine.spawn(&ctx, "burst", input.clone()).expect("spawn"));
    }
    let mut got = 0;
    while got < RUNS * EVENTS_PER_RUN {
        if sub.recv().await.is_none() {
            break;
        }
        got += 1;
    }
    for h in handles {
        let _ = h.outcome().await;
    }
    engine.close().await;
}

fn sample_json() -> String {
    let e = EventEnvelope {
        user_id: UserId::new("bench-user").expect("id"),
        thread_id: ThreadId::new("thread").expect("id"),
        run_id: RunId::new("run-bench-0").expect("id"),
        request_id: RequestId::new("req-bench-0").expect("id"),
        seq: 2,
        timestamp_us: now_us(),
        event: AgentEvent::AgentThinking {
            reasoning: "step".into(),
        },
    };
    serde_json::to_string(&e).expect("json")
}

/// A reader and a writer connection (a blocking `XREAD` holds its connection).
async fn two_connections(
    client: &redis::Client,
) -> (
    redis::aio::MultiplexedConnection,
    redis::aio::MultiplexedConnection,
) {
    let reader = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let writer = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    (reader, writer)
}

/// The floor: `n` entries through raw redis-rs, pipelined in 256s, read back by a blocking
/// `XREAD` on a second connection and decoded.
async fn raw_xadd_xread(client: &redis::Client, key: &str, n: usize, json: &str) {
    let (mut reader, mut writer) = two_connections(client).await;
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut reader)
        .await
        .expect("xrevrange");
    let mut pos = last
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
    let key_r = key.to_owned();
    let read = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(256)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&key_r)
                .arg(&pos)
                .query_async(&mut reader)
                .await
                .expect("xread");
            for k in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in k.ids {
                    if let Some(redis::Value::BulkString(b)) = entry.map.get("e") {
                        let e: EventEnvelope = serde_json::from_slice(b).expect("decode");
                        std::hint::black_box(e);
                    }
                    pos = entry.id;
                    got += 1;
                }
            }
        }
    });
    for chunk in 0..n.div_ceil(256) {
        let mut pipe = redis::pipe();
        for _ in 0..256.min(n - chunk * 256) {
            pipe.cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(10_000)
                .arg("*")
                .arg("r")
                .arg("run-bench-0")
                .arg("s")
                .arg(2)
                .arg("e")
                .arg(json);
        }
        let _: Vec<String> = pipe.query_async(&mut writer).await.expect("xadd");
    }
    read.await.expect("reader");
}

const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + 30000, ARGV[1])
return 1
";

fn events(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("redis_events");
    g.throughput(Throughput::Elements((RUNS * EVENTS_PER_RUN) as u64));
    let mut round = 0u64;
    g.bench_function("ours", |b| {
        b.iter(|| {
            round += 1;
            s.rt.block_on(through_factory(
                &s.clustered,
                &s.remote,
                "bench-redis-user",
                round,
            ));
        });
    });
    g.bench_function("in_memory", |b| {
        b.iter(|| {
            round += 1;
            s.rt.block_on(through_factory(
                &s.local,
                &s.local,
                "bench-local-user",
                round,
            ));
        });
    });
    let client = redis::Client::open(s.url.as_str()).expect("client");
    let json = sample_json();
    g.bench_function("raw_xadd_xread", |b| {
        b.iter(|| {
            s.rt.block_on(raw_xadd_xread(
                &client,
                "raw:events",
                RUNS * EVENTS_PER_RUN,
                &json,
            ));
        });
    });
    g.finish();
}

fn admission(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("redis_admission");
    g.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    g.bench_function(BenchmarkId::from_parameter("ours"), |b| {
        b.iter(|| {
            n += 1;
            s.rt.block_on(async {
                let ctx = UserExecutionContext::new("bench-admit", "thread", format!("run-{n}"))
                    .expect("ctx");
                let h = s.clustered.create(&ctx).await.expect("admitted");
                h.close().await;
            });
        });
    });
    let client = redis::Client::open(s.url.as_str()).expect("client");
    let conn =
        s.rt.block_on(client.get_multiplexed_async_connection())
            .expect("conn");
    let script = redis::Script::new(LEASE);
    g.bench_function("raw_evalsha", |b| {
        b.iter(|| {
            n += 1;
            s.rt.block_on(async {
                let mut c = conn.clone();
                let member = format!("raw/{n}");
                let ok: i64 = script
                    .key("raw:leases")
                    .arg(&member)
                    .arg(10)
                    .invoke_async(&mut c)
                    .await
                    .expect("reserve");
                std::hint::black_box(ok);
                // Awaited, like `EngineHandle::close`, which returns once the lease is back.
                let released: i64 = redis::cmd("ZREM")
                    .arg("raw:leases")
                    .arg(member)
                    .query_async(&mut c)
                    .await
                    .expect("release");
                std::hint::black_box(released);
            });
        });
    });
    g.finish();
}

/// Paced emit-to-receipt latency (µs) of `n` events: one run thinking once per ms on
/// `factory`, read on `reader`.
async fn paced_factory(
    factory: &ExecutionEngineFactory,
    reader: &ExecutionEngineFactory,
    user: &str,
    n: usize,
) -> Vec<u64> {
    let user_id = UserId::new(user).expect("id");
    let mut sub = reader.subscribe(&user_id);
    sub.ready().await.expect("ready");
    let root = UserExecutionContext::new(user, "thread", "root-paced").expect("ctx");
    let engine = factory.create(&root).await.expect("engine");
    let ctx = root.with_run_id(RunId::new("run-paced").expect("id"));
    let run = engine
        .spawn(&ctx, "burst", format!("{n}@1"))
        .expect("spawn");
    let mut lat = Vec::with_capacity(n + 2);
    while let Some(e) = sub.recv().await {
        lat.push(now_us().saturating_sub(e.timestamp_us));
        if e.event.is_terminal() {
            break;
        }
    }
    let _ = run.outcome().await;
    engine.close().await;
    lat
}

async fn paced_raw(client: &redis::Client, n: usize) -> Vec<u64> {
    let (mut reader, mut writer) = two_connections(client).await;
    let key = "raw:paced";
    let read = tokio::spawn(async move {
        let mut pos = "$".to_owned();
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(key)
                .arg(&pos)
                .query_async(&mut reader)
                .await
                .expect("xread");
            for k in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in k.ids {
                    if let Some(redis::Value::BulkString(b)) = entry.map.get("e") {
                        let e: EventEnvelope = serde_json::from_slice(b).expect("decode");
                        lat.push(now_us().saturating_sub(e.timestamp_us));
                    }
                    pos = entry.id;
                }
            }
        }
        lat
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut sample: EventEnvelope = serde_json::from_str(&sample_json()).expect("json");
    for _ in 0..n {
        sample.timestamp_us = now_us();
        let json = serde_json::to_string(&sample).expect("json");
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("e")
            .arg(json)
            .query_async(&mut writer)
            .await
            .expect("xadd");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    read.await.expect("reader")
}

fn pct(mut v: Vec<u64>, p: f64) -> u64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0)
}

fn latency(s: &Setup) {
    let n = 2000;
    let ours = s.rt.block_on(paced_factory(
        &s.clustered,
        &s.remote,
        "bench-paced-redis",
        n,
    ));
    let local =
        s.rt.block_on(paced_factory(&s.local, &s.local, "bench-paced-local", n));
    let client = redis::Client::open(s.url.as_str()).expect("client");
    let raw = s.rt.block_on(paced_raw(&client, n));
    for (name, base) in [("vs in-memory hub", &local), ("vs raw XADD/XREAD", &raw)] {
        let (o50, o99) = (pct(ours.clone(), 0.5), pct(ours.clone(), 0.99));
        let (b50, b99) = (pct(base.clone(), 0.5), pct(base.clone(), 0.99));
        println!(
            "{:<28} {:>22} {:>22} {:>8.2}x",
            format!("redis latency {name}"),
            format!("p50 {o50} us p99 {o99} us"),
            format!("p50 {b50} us p99 {b99} us"),
            o99 as f64 / b99.max(1) as f64
        );
    }
    let (m, r) = (s.cluster.metrics(), s.remote_cluster.metrics());
    println!(
        "redis counters: {} published, {} read by the other node, {} publish errors",
        m.events_published, r.events_read, m.publish_errors
    );
}

fn all(c: &mut Criterion) {
    let Some(s) = setup() else {
        println!("redis-server not installed: the Redis benchmarks are skipped");
        return;
    };
    events(c, &s);
    admission(c, &s);
    // `--exact <group/function>` (how `cargo xtask bench` measures one side at a time) skips
    // the latency rows unless it names them: `--exact redis_latency`.
    let args: Vec<String> = std::env::args().collect();
    let exact = args
        .iter()
        .position(|a| a == "--exact")
        .and_then(|i| args.get(i + 1));
    if exact.is_none_or(|e| e == "redis_latency") {
        latency(&s);
    }
}

criterion_group!(benches, all);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
