//! Redis paused (SIGSTOP) under a node whose users stream answers: the node's own clients get
//! every event of its runs exactly once and in order, the stream gets them once Redis answers
//! again, and shutdown does not wait for nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use engine_core::{async_trait, Agent, AgentRegistry, BoxError, RunContext};
use engine_core::{UserExecutionContext, UserId};
use engine_factory::{ExecutionEngineFactory, FactoryConfig};
use engine_redis::testing::RedisServer;
use engine_redis::{ClusterConfig, RedisCluster};
use redis::streams::StreamRangeReply;

/// Streams `input` answer pieces, one every 10 ms.
struct Streamer;

#[async_trait]
impl Agent for Streamer {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let pieces: u32 = input.parse()?;
        for i in 0..pieces {
            ctx.stream(format!("w{i} ")).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(ctx.streamed().to_owned())
    }
}

const USERS: usize = 50;
const PIECES: u32 = 400;
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

async fn node(redis: &RedisServer, name: &str) -> (RedisCluster, ExecutionEngineFactory) {
    let cluster = RedisCluster::connect(
        ClusterConfig::new(redis.url())
            .with_prefix("p")
            .with_node_id(name),
    )
    .await
    .unwrap();
    let factory = ExecutionEngineFactory::with_seams(
        FactoryConfig::builder()
            // Room for a whole run: this test is about Redis, not slow subscribers.
            .subscriber_buffer(4096)
            .shutdown_deadline(SHUTDOWN_DEADLINE)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_while_fifty_users_stream_delivers_each_event_once_in_order() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (cluster, factory) = node(&redis, "node-a").await;
    // The same users' clients on another node, which gets the runs through Redis only.
    let (b_cluster, b_factory) = node(&redis, "node-b").await;
    let mut readers = Vec::new();
    let mut remote_readers = Vec::new();
    let mut runs = Vec::new();
    let mut handles = Vec::new();
    for u in 0..USERS {
        let user = format!("streamer-{u:02}");
        let id = UserId::new(&user).unwrap();
        let mut sub = factory.subscribe(&id);
        sub.ready().await.expect("the bus attaches");
        let mut remote = b_factory.subscribe(&id);
        remote.ready().await.expect("the bus attaches");
        remote_readers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            while let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_secs(30), remote.recv()).await
            {
                seqs.push(e.seq);
                if e.event.is_terminal() {
                    break;
                }
            }
            seqs
        }));
        let engine = factory
            .create(&UserExecutionContext::new(&user, "thread-1", "root").unwrap())
            .await
            .unwrap();
        let run = UserExecutionContext::new(&user, "thread-1", "answer").unwrap();
        handles.push(engine.spawn(&run, "streamer", PIECES.to_string()).unwrap());
        runs.push((id, engine));
        // Every event this user's only client receives, until its run's terminal event.
        readers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            loop {
                let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(30), sub.recv()).await
                else {
                    return (seqs, false, sub);
                };
                seqs.push(e.seq);
                if e.event.is_terminal() {
                    return (seqs, true, sub);
                }
            }
        }));
    }
    // Redis stops answering while every run streams, for longer than a response timeout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.resume();

    for (handle, (user, _engine)) in handles.into_iter().zip(&runs) {
        let outcome = tokio::time::timeout(Duration::from_secs(60), handle.outcome())
            .await
            .expect("the run ends")
            .unwrap();
        assert_eq!(outcome.status().as_str(), "completed", "{user}");
    }
    let mut expected = Vec::new();
    let mut subs = Vec::new();
    for (u, reader) in readers.into_iter().enumerate() {
        let (seqs, terminal, sub) = reader.await.unwrap();
        assert!(
            terminal,
            "user {u}: no terminal event; got {} events",
            seqs.len()
        );
        // The terminal event's seq is the run's last: `PIECES` deltas and the run's own events.
        let n = *seqs.last().unwrap();
        assert!(n > u64::from(PIECES), "user {u}: last seq {n}");
        expected.push(n);
        assert_eq!(
            seqs,
            (1..=n).collect::<Vec<u64>>(),
            "user {u}: every event once, in seq order"
        );
        subs.push(sub);
    }
    // The other node gets each event at most once and in order, though Redis may hold a
    // retried batch twice; here every retry got through, so it gets them all.
    for (u, reader) in remote_readers.into_iter().enumerate() {
        let seqs = reader.await.unwrap();
        assert_eq!(
            seqs,
            (1..=expected[u]).collect::<Vec<u64>>(),
            "user {u} on node b: every event once, in seq order"
        );
    }
    eprintln!("node b: {:?}", b_cluster.metrics());
    // Nothing more arrives for anyone (no copy read back from Redis once it answers again).
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        for (u, sub) in subs.iter_mut().enumerate() {
            assert!(sub.try_recv().is_none(), "user {u} got an event twice");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The stream got every event of every run once Redis answered again.
    let keys = cluster.key_builder();
    let mut conn = cluster.connection();
    for (u, (user, _)) in runs.iter().enumerate() {
        let entries: StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys.user_key(user, &["events"]))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let stored: BTreeSet<u64> = entries
            .ids
            .iter()
            .filter_map(|e| e.get::<u64>("s"))
            .collect();
        assert_eq!(
            stored,
            (1..=expected[u]).collect::<BTreeSet<u64>>(),
            "user {u}: the stream holds every event"
        );
    }

    drop(runs);
    let started = Instant::now();
    factory.shutdown().await;
    assert!(
        started.elapsed() < SHUTDOWN_DEADLINE / 3,
        "shutdown waited {:?} (deadline {SHUTDOWN_DEADLINE:?})",
        started.elapsed()
    );
}
