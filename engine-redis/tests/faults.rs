//! Redis going away under a running cluster node, and coming back.

use std::time::Duration;

use engine_core::{
    async_trait, Agent, AgentRegistry, BoxError, RunContext, UserExecutionContext, UserId,
};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, FactoryError, Subscription};
use engine_redis::testing::RedisServer;
use engine_redis::{ClusterConfig, ClusterError, RedisCluster};

/// Thinks every 20 ms for `input` steps.
struct Ticker;

#[async_trait]
impl Agent for Ticker {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let steps: u32 = input.parse()?;
        for i in 0..steps {
            ctx.think(format!("step {i}")).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok("done".into())
    }
}

async fn node(url: String) -> (RedisCluster, ExecutionEngineFactory) {
    let cluster = RedisCluster::connect(
        ClusterConfig::new(url)
            .with_node_id("node-a")
            .with_connect_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let factory = ExecutionEngineFactory::with_seams(
        FactoryConfig::default(),
        AgentRegistry::builder()
            .agent("ticker", || Ticker)
            .build()
            .unwrap(),
        cluster.seams(),
    )
    .unwrap();
    cluster.serve(&factory);
    (cluster, factory)
}

#[tokio::test]
async fn unreachable_redis_at_start_is_one_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://user:hunter2@127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = RedisCluster::connect(
        ClusterConfig::new(&url).with_connect_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "no hang");
    let text = err.to_string();
    assert!(matches!(err, ClusterError::Unreachable { .. }));
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "password leaked: {text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_and_restarted() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (cluster, factory) = node(redis.url()).await;
    let user = UserId::new("ivy").unwrap();
    let mut sub = factory.subscribe(&user);
    sub.ready().await.unwrap();
    let engine = factory
        .create(&UserExecutionContext::new("ivy", "thread-1", "root").unwrap())
        .await
        .unwrap();
    let run = UserExecutionContext::new("ivy", "thread-1", "run-across-the-outage").unwrap();
    let handle = engine.spawn(&run, "ticker", "40").unwrap();
    // Let some events go through Redis, then kill it under the run.
    let first = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.seq, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    let mut reach = cluster.watch_reachability();
    let outcome = tokio::time::timeout(Duration::from_secs(20), handle.outcome())
        .await
        .expect("the run ends without Redis")
        .unwrap();
    assert_eq!(outcome.status().as_str(), "completed");
    // The node's own subscriber still gets the rest of the run, terminal event included.
    let mut seqs = vec![first.seq];
    let mut terminals = 0;
    while terminals == 0 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("the terminal event arrives")
            .unwrap();
        terminals += usize::from(e.event.is_terminal());
        seqs.push(e.seq);
    }
    // Each exactly once, in order: the node's own events never wait on Redis.
    assert_eq!(
        seqs,
        (1..=*seqs.last().unwrap()).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(cluster.metrics().publish_errors > 0);
    tokio::time::timeout(Duration::from_secs(5), reach.wait_for(|up| !*up))
        .await
        .unwrap()
        .unwrap();
    assert!(!cluster.ping().await);
    // Creating an engine now fails with an actionable error, not a hang.
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        factory.create(&UserExecutionContext::new("ivy", "thread-1", "root-2").unwrap()),
    )
    .await
    .expect("no hang");
    assert!(
        matches!(refused, Err(FactoryError::Admission(_))),
        "{refused:?}"
    );

    // Redis comes back: the same node serves again without a restart.
    redis.restart();
    reconnected(&cluster).await;
    let engine2 = factory
        .create(&UserExecutionContext::new("ivy", "thread-1", "root-3").unwrap())
        .await
        .expect("admission works again");
    let run2 = UserExecutionContext::new("ivy", "thread-1", "run-after").unwrap();
    engine2.execute(&run2, "ticker", "3").await.unwrap();
    let after = run_seqs(&mut sub, &run2).await;
    assert_eq!(after, (1..=after.len() as u64).collect::<Vec<_>>());
    assert!(cluster.metrics().reconnects >= 1);
    drop(engine);
}

/// A user whose first subscription comes while Redis is down gets events once it is back, on
/// the same subscription, without reconnecting (the failed attach is retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_first_seen_during_an_outage_gets_events_once_redis_is_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (cluster, factory) = node(redis.url()).await;
    redis.kill();
    let user = UserId::new("late-joiner").unwrap();
    let sub = factory.subscribe(&user);
    let ready = tokio::time::timeout(Duration::from_secs(10), sub.ready())
        .await
        .expect("ready answers during the outage");
    assert!(ready.is_err(), "no feed while Redis is down");
    redis.restart();
    reconnected(&cluster).await;
    let mut sub = sub;
    let engine = factory
        .create(&UserExecutionContext::new("late-joiner", "thread-1", "root").unwrap())
        .await
        .expect("admission works again");
    // The retry attaches within its backoff; runs started meanwhile may not reach the feed, so
    // run until one does (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let run = UserExecutionContext::new("late-joiner", "thread-1", format!("run-{n}")).unwrap();
        engine.execute(&run, "ticker", "2").await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await;
        if let Ok(Some(e)) = got {
            assert_eq!(e.user_id, user);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no event reached the subscription within 20 s of Redis coming back"
        );
    }
    // From then on every run's events arrive, in order, terminal included.
    let run = UserExecutionContext::new("late-joiner", "thread-1", "run-last").unwrap();
    engine.execute(&run, "ticker", "3").await.unwrap();
    let seqs = run_seqs(&mut sub, &run).await;
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    drop(engine);
    factory.shutdown().await;
}

/// Waits (10 s at most) until the node reaches Redis again.
async fn reconnected(cluster: &RedisCluster) {
    for _ in 0..100 {
        if cluster.ping().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the node did not reconnect within 10 s");
}

/// The sequence numbers `sub` receives of `run`, up to its terminal event (10 s per event).
async fn run_seqs(sub: &mut Subscription, run: &UserExecutionContext) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("the run's events arrive")
            .unwrap();
        if e.run_id != *run.run_id() {
            continue;
        }
        seqs.push(e.seq);
        if e.event.is_terminal() {
            return seqs;
        }
    }
}
