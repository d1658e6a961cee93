//! Resume reads a user's stream page by page (`XRANGE ... COUNT`) and stops at the run's
//! terminal event: replaying a short run never ships the user's whole stream out of Redis.

use std::time::Duration;

use engine_core::{async_trait, Agent, AgentRegistry, BoxError, RunContext};
use engine_core::{UserExecutionContext, UserId};
use engine_factory::{ExecutionEngineFactory, FactoryConfig};
use engine_redis::testing::RedisServer;
use engine_redis::{ClusterConfig, RedisCluster};

/// Thinks `input` times, as fast as it can.
struct Burst;

#[async_trait]
impl Agent for Burst {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let n: u32 = input.parse()?;
        for i in 0..n {
            ctx.think(format!("thought number {i} of a long run")).await;
        }
        Ok("done".into())
    }
}

/// Bytes Redis has sent to its clients so far.
async fn bytes_out(conn: &mut redis::aio::ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats has total_net_output_bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_pages_up_to_the_runs_end_not_the_whole_stream() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let cluster = RedisCluster::connect(
        ClusterConfig::new(redis.url())
            .with_prefix("r")
            .with_node_id("node-a"),
    )
    .await
    .unwrap();
    let factory = ExecutionEngineFactory::with_seams(
        FactoryConfig::default(),
        AgentRegistry::builder()
            .agent("burst", || Burst)
            .build()
            .unwrap(),
        cluster.seams(),
    )
    .unwrap();
    let user = UserId::new("reader").unwrap();
    let engine = factory
        .create(&UserExecutionContext::new("reader", "thread-1", "root").unwrap())
        .await
        .unwrap();
    // A short run, then a long one behind it in the same user's stream.
    let short = UserExecutionContext::new("reader", "thread-1", "short").unwrap();
    engine.execute(&short, "burst", "3").await.unwrap();
    let long = UserExecutionContext::new("reader", "thread-1", "long").unwrap();
    engine.execute(&long, "burst", "6000").await.unwrap();
    let bus = factory.event_bus().unwrap();
    tokio::time::timeout(Duration::from_secs(20), bus.flush())
        .await
        .expect("the stream holds every event");

    let mut conn = cluster.connection();
    let key = cluster.key_builder().user_key(&user, &["events"]);
    // What shipping the whole stream costs.
    let before = bytes_out(&mut conn).await;
    let _: redis::Value = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let whole = bytes_out(&mut conn).await - before;

    let before = bytes_out(&mut conn).await;
    let replay = bus
        .replay(&user, short.run_id(), 0)
        .await
        .unwrap()
        .expect("the run is in the stream");
    let replayed = bytes_out(&mut conn).await - before;
    let seqs: Vec<u64> = replay.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(replay.events.last().unwrap().event.is_terminal());
    assert_eq!(replay.gap, None);
    assert!(
        replayed * 4 < whole,
        "replaying a 5-event run shipped {replayed} bytes; the whole stream is {whole}"
    );

    // The long run replays whole across its pages, each seq once, in order.
    let replay = bus.replay(&user, long.run_id(), 10).await.unwrap().unwrap();
    let seqs: Vec<u64> = replay.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.first(), Some(&11));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
    assert!(replay.events.last().unwrap().event.is_terminal());
    assert!(seqs.len() > 6000 - 10);
    drop(engine);
    factory.shutdown().await;
}
