//! A subscriber that never reads costs only its own user: the node's one stream reader hands
//! each user's events to that user's own backlog, so the other users' delivery latency stays
//! where it was without it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine_core::{async_trait, Agent, AgentRegistry, BoxError, RunContext};
use engine_core::{UserExecutionContext, UserId};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, Subscription};
use engine_redis::testing::RedisServer;
use engine_redis::{ClusterConfig, RedisCluster};

/// Streams `input` answer pieces, one every 5 ms.
struct Streamer;

#[async_trait]
impl Agent for Streamer {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let pieces: u32 = input.parse()?;
        for i in 0..pieces {
            ctx.stream(format!("w{i} ")).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(ctx.streamed().to_owned())
    }
}

const USERS: usize = 8;
const PIECES: u32 = 200;

async fn node(redis: &RedisServer, name: &str) -> (RedisCluster, ExecutionEngineFactory) {
    let cluster = RedisCluster::connect(
        ClusterConfig::new(redis.url())
            .with_prefix("s")
            .with_node_id(name),
    )
    .await
    .unwrap();
    let factory = ExecutionEngineFactory::with_seams(
        FactoryConfig::builder()
            // A small buffer, so a subscriber that never reads is full within a few events.
            .subscriber_buffer(16)
            .build()
            .unwrap(),
        AgentRegistry::builder()
            .agent("streamer", || Streamer)
            .build()
            .unwrap(),
        cluster.seams(),
    )
    .unwrap();
    cluster.serve(&factory);
    (cluster, factory)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Reads until the run's terminal event; the emit-to-receipt latency of each event in µs.
async fn latencies(mut sub: Subscription) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(60), sub.recv())
            .await
            .expect("events keep coming")
            .expect("subscription open");
        out.push(now_us().saturating_sub(e.timestamp_us));
        if e.event.is_terminal() {
            return out;
        }
    }
}

/// `USERS` + 1 users stream a run each on node A while their clients read on node B; with
/// `stuck`, the last user's client on B never reads. The first `USERS` users' latencies.
async fn round(
    a: &ExecutionEngineFactory,
    b: &ExecutionEngineFactory,
    round: &str,
    stuck: bool,
) -> Vec<u64> {
    let mut readers = Vec::new();
    let mut engines = Vec::new();
    let mut handles = Vec::new();
    let mut users: Vec<String> = (0..USERS).map(|u| format!("reader-{round}-{u}")).collect();
    users.push(format!("last-{round}"));
    let mut last = None;
    for (i, user) in users.iter().enumerate() {
        let sub = b.subscribe(&UserId::new(user).unwrap());
        sub.ready().await.expect("the bus attaches");
        if i < USERS {
            readers.push(tokio::spawn(latencies(sub)));
        } else if stuck {
            last = Some(sub); // never read
        } else {
            last = Some(b.subscribe(&UserId::new("nobody").unwrap()));
            tokio::spawn(latencies(sub));
        }
    }
    for user in &users {
        let engine = a
            .create(&UserExecutionContext::new(user, "thread-1", "root").unwrap())
            .await
            .unwrap();
        let run = UserExecutionContext::new(user, "thread-1", "answer").unwrap();
        handles.push(engine.spawn(&run, "streamer", PIECES.to_string()).unwrap());
        engines.push(engine);
    }
    let mut all = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap());
    }
    for h in handles {
        h.outcome().await.unwrap();
    }
    drop(last);
    all
}

fn p99(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_costs_only_its_own_user() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (_a_cluster, a) = node(&redis, "node-a").await;
    let (_b_cluster, b) = node(&redis, "node-b").await;
    // Warm-up, then the same load without and with a subscriber that never reads.
    round(&a, &b, "warm", false).await;
    let without = p99(round(&a, &b, "without", false).await);
    let with = p99(round(&a, &b, "with", true).await);
    eprintln!("other users' p99 delivery latency: {without} us without, {with} us with a stuck subscriber");
    // Within 2x, with a floor for a quiet baseline (a few ms on a loaded CI machine): one
    // event's backpressure deadline is 50 ms, so a reader that waited on the stuck user
    // would be far beyond it.
    assert!(
        with <= (2 * without).max(25_000),
        "p99 {with} us with a stuck subscriber vs {without} us without"
    );
}
