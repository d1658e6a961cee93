//! Two (or more) factories on one real Redis: admission, event streams, replay and control
//! across nodes, and key isolation for hostile user ids.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use engine_core::{
    async_trait, Agent, AgentRegistry, BoxError, EventEnvelope, RunContext, RunId,
    UserExecutionContext, UserId,
};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, FactoryError, Subscription};
use engine_redis::testing::RedisServer;
use engine_redis::{ClusterConfig, ControlError, RedisCluster};

/// Thinks twice and answers; input `slow` waits until cancelled.
struct Chatty;

#[async_trait]
impl Agent for Chatty {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        ctx.think("reading").await;
        if input == "slow" {
            for _ in 0..200 {
                if ctx.is_cancelled() {
                    return Err("cancelled".into());
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        ctx.think("answering").await;
        Ok(format!("re: {input}"))
    }
}

fn registry() -> AgentRegistry {
    AgentRegistry::builder()
        .agent("chatty", || Chatty)
        .build()
        .unwrap()
}

struct Node {
    cluster: RedisCluster,
    factory: ExecutionEngineFactory,
}

async fn node(
    redis: &RedisServer,
    name: &str,
    limit: usize,
    tune: impl FnOnce(ClusterConfig) -> ClusterConfig,
) -> Node {
    let config = tune(
        ClusterConfig::new(redis.url())
            .with_prefix("t")
            .with_node_id(name),
    );
    let cluster = RedisCluster::connect(config).await.unwrap();
    let factory = ExecutionEngineFactory::with_seams(
        FactoryConfig::builder()
            .max_engines_per_user(limit)
            .build()
            .unwrap(),
        registry(),
        cluster.seams(),
    )
    .unwrap();
    cluster.serve(&factory);
    Node { cluster, factory }
}

async fn subscribed(factory: &ExecutionEngineFactory, user: &UserId) -> Subscription {
    let sub = factory.subscribe(user);
    sub.ready().await.expect("the bus attaches");
    sub
}

/// Reads `user`'s events until `runs` terminal events arrived (bounded).
async fn until_terminals(sub: &mut Subscription, runs: usize) -> Vec<EventEnvelope> {
    let mut seen = Vec::new();
    let mut terminals = 0;
    while terminals < runs {
        let e = tokio::time::timeout(Duration::from_secs(20), sub.recv())
            .await
            .expect("events keep coming")
            .expect("subscription open");
        if e.event.is_terminal() {
            terminals += 1;
        }
        seen.push(e);
    }
    seen
}

fn ctx(user: &str, run: &str) -> UserExecutionContext {
    UserExecutionContext::new(user, "thread-1", run).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_creates_over_two_nodes_admit_exactly_the_limit() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", 2, |c| c).await;
    let b = node(&redis, "node-b", 2, |c| c).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let f = if i % 2 == 0 {
            a.factory.clone()
        } else {
            b.factory.clone()
        };
        tasks.push(tokio::spawn(async move {
            f.create(&ctx("alice", &format!("run-{i:03}"))).await
        }));
    }
    let mut handles = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(h) => handles.push(h),
            Err(FactoryError::UserLimitReached { limit: 2, .. }) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(handles.len(), 2, "exactly the limit across both nodes");
    assert_eq!(refused, 98);
    assert_eq!(a.cluster.leases_held() + b.cluster.leases_held(), 2);
    // Another user is not affected by alice's limit.
    let bob = b.factory.create(&ctx("bob", "run-1")).await.unwrap();
    // Closing frees the cluster slot for the other node.
    for h in handles {
        h.close().await;
    }
    let again = [
        a.factory.create(&ctx("alice", "run-x")).await,
        b.factory.create(&ctx("alice", "run-y")).await,
    ];
    assert!(again.iter().all(Result::is_ok), "slots released on close");
    assert!(matches!(
        a.factory.create(&ctx("alice", "run-z")).await,
        Err(FactoryError::UserLimitReached { .. })
    ));
    assert!(matches!(
        a.factory.create_for_user(&ctx("alice", "run-w")),
        Err(FactoryError::NeedsAsyncCreate)
    ));
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nodes_leases_expire_after_the_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_millis(900);
    let a = node(&redis, "node-a", 1, |c| c.with_lease_ttl(ttl)).await;
    let b = node(&redis, "node-b", 1, |c| c.with_lease_ttl(ttl)).await;
    let held = a.factory.create(&ctx("carol", "run-1")).await.unwrap();
    // The heartbeat keeps the lease past its TTL while node A lives.
    tokio::time::sleep(ttl * 2).await;
    assert!(matches!(
        b.factory.create(&ctx("carol", "run-2")).await,
        Err(FactoryError::UserLimitReached { .. })
    ));
    assert!(a.cluster.metrics().lease_renewals > 0);
    // Node A dies: no heartbeat, no release.
    a.cluster.stop();
    std::mem::forget(held);
    std::mem::forget(a);
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let after = b.factory.create(&ctx("carol", "run-3")).await;
    assert!(after.is_ok(), "lease expired: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_on_both_nodes_see_runs_of_either_node_and_resume_anywhere() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", 2, |c| c).await;
    let b = node(&redis, "node-b", 2, |c| c).await;
    let dave = UserId::new("dave").unwrap();
    let mut on_a = subscribed(&a.factory, &dave).await;
    let mut on_b = subscribed(&b.factory, &dave).await;
    let engine = a.factory.create(&ctx("dave", "root-a")).await.unwrap();
    let run = ctx("dave", "run-on-a");
    engine.execute(&run, "chatty", "hi").await.unwrap();
    let seen_a = until_terminals(&mut on_a, 1).await;
    let seen_b = until_terminals(&mut on_b, 1).await;
    let seqs = |v: &[EventEnvelope]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&seen_a), seqs(&seen_b));
    assert_eq!(seqs(&seen_a), (1..=seen_a.len() as u64).collect::<Vec<_>>());
    let replayed_seqs = |v: &[EventEnvelope]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    // Resume on node B from seq 2: the rest, no gap.
    let bus = b.factory.event_bus().unwrap();
    let replay = bus.replay(&dave, run.run_id(), 2).await.unwrap().unwrap();
    assert_eq!(replay.gap, None);
    assert_eq!(
        replayed_seqs(&replay.events),
        (3..=seen_a.len() as u64).collect::<Vec<_>>()
    );
    // Another user cannot resume it on any node.
    let eve = UserId::new("eve").unwrap();
    assert!(bus.replay(&eve, run.run_id(), 0).await.unwrap().is_none());
    assert!(a
        .factory
        .event_bus()
        .unwrap()
        .replay(&eve, run.run_id(), 0)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_the_retention_window_reports_the_gap() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", 2, |c| c.with_stream_maxlen(100)).await;
    let frank = UserId::new("frank").unwrap();
    let engine = a.factory.create(&ctx("frank", "root")).await.unwrap();
    let first = ctx("frank", "run-first");
    engine.execute(&first, "chatty", "one").await.unwrap();
    for i in 0..150 {
        let r = ctx("frank", &format!("run-fill-{i:03}"));
        engine.execute(&r, "chatty", "fill").await.unwrap();
    }
    let bus = a.factory.event_bus().unwrap();
    tokio::time::timeout(Duration::from_secs(10), bus.flush())
        .await
        .unwrap();
    let replay = bus
        .replay(&frank, first.run_id(), 0)
        .await
        .unwrap()
        .expect("the run record outlives its trimmed events");
    assert!(replay.events.is_empty(), "trimmed away");
    let (from, to) = replay.gap.expect("the gap is announced");
    assert_eq!(from, 1);
    assert!(to >= 4, "the whole run is missing: 1..={to}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_approve_reach_the_running_node_and_only_for_its_user() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", 2, |c| c).await;
    let b = node(&redis, "node-b", 2, |c| c).await;
    let gina = UserId::new("gina").unwrap();
    let mut sub = subscribed(&b.factory, &gina).await;
    let engine = a.factory.create(&ctx("gina", "root")).await.unwrap();
    let run = ctx("gina", "run-slow");
    let handle = engine.spawn(&run, "chatty", "slow").unwrap();
    // Wait until the run is known in Redis (its first event is published).
    let first = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.run_id, *run.run_id());
    // Another user, on either node: unknown run.
    let hal = UserId::new("hal").unwrap();
    for n in [&a, &b] {
        assert_eq!(
            n.cluster.cancel(&hal, run.run_id()).await,
            Err(ControlError::UnknownRun(run.run_id().clone()))
        );
    }
    // No tool call waits for approval: the running node says so.
    assert!(matches!(
        b.cluster
            .approve(
                &gina,
                run.run_id(),
                7,
                engine_core::ApprovalDecision::Approve
            )
            .await,
        Err(ControlError::UnknownApproval { call_id: 7, .. })
    ));
    b.cluster.cancel(&gina, run.run_id()).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), handle.outcome())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status().as_str(), "cancelled");
    assert!(b.cluster.metrics().control_forwarded >= 1);
    let unknown = RunId::new("run-never").unwrap();
    assert_eq!(
        b.cluster.cancel(&gina, &unknown).await,
        Err(ControlError::UnknownRun(unknown))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_user_ids_only_ever_see_their_own_events() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", 3, |c| c).await;
    let b = node(&redis, "node-b", 3, |c| c).await;
    let ids = [
        "user:1",
        "user",
        "user}:events",
        "{user}",
        "us*r",
        "*",
        "a user",
        "ålice",
        "ユーザー",
        "t:{u:user}",
        "user%3A1",
    ];
    let mut subs = Vec::new();
    for id in ids {
        let user = UserId::new(id).unwrap();
        subs.push((user.clone(), subscribed(&b.factory, &user).await));
    }
    let mut engines = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let e = a
            .factory
            .create(&ctx(id, &format!("root-{i}")))
            .await
            .unwrap();
        let r = ctx(id, &format!("run-of-{i}"));
        engines.push((e.engine().execute(&r, "chatty", "x").await.unwrap(), e));
    }
    for (user, sub) in &mut subs {
        let seen = until_terminals(sub, 1).await;
        assert!(
            seen.iter().all(|e| &e.user_id == user),
            "{user} saw another user's event"
        );
    }
    // Every key of Redis belongs to exactly one user's namespace.
    let mut conn = a
        .cluster
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("t:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let namespaces: HashSet<&str> = keys
        .iter()
        .filter_map(|k| k.split_once('}').map(|(ns, _)| ns))
        .collect();
    assert_eq!(namespaces.len(), ids.len(), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_users_on_two_nodes_each_see_all_and_only_their_events() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", 2, |c| c).await;
    let b = node(&redis, "node-b", 2, |c| c).await;
    let users: Vec<UserId> = (0..200)
        .map(|i| UserId::new(format!("user-{i:03}")).unwrap())
        .collect();
    let mut subs = Vec::new();
    for u in &users {
        subs.push((
            subscribed(&a.factory, u).await,
            subscribed(&b.factory, u).await,
        ));
    }
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (fa, fb) = (a.factory.clone(), b.factory.clone());
        let (ca, cb) = (Arc::new(a.cluster.config().clone()), ());
        let _ = (ca, cb);
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            let ea = fa.create(&ctx(u.as_str(), "root-a")).await.unwrap();
            let eb = fb.create(&ctx(u.as_str(), "root-b")).await.unwrap();
            let mut handles = Vec::new();
            for r in 0..5 {
                let run = ctx(u.as_str(), &format!("run-{r}"));
                let engine = if r % 2 == 0 { &ea } else { &eb };
                let input = if (i + r) % 7 == 0 { "slow" } else { "go" };
                let h = engine.spawn(&run, "chatty", input).unwrap();
                if input == "slow" {
                    h.cancel();
                }
                handles.push(h);
            }
            for h in handles {
                h.outcome().await.unwrap();
            }
            (ea, eb)
        }));
    }
    let mut engines = Vec::new();
    for t in tasks {
        engines.push(t.await.unwrap());
    }
    for (u, (sa, sb)) in users.iter().zip(&mut subs) {
        for sub in [sa, sb] {
            let seen = until_terminals(sub, 5).await;
            assert!(seen.iter().all(|e| &e.user_id == u), "leak into {u}");
            let mut per_run: HashMap<RunId, Vec<u64>> = HashMap::new();
            let mut terminals: HashMap<RunId, usize> = HashMap::new();
            for e in &seen {
                per_run.entry(e.run_id.clone()).or_default().push(e.seq);
                if e.event.is_terminal() {
                    *terminals.entry(e.run_id.clone()).or_default() += 1;
                }
            }
            assert_eq!(per_run.len(), 5, "{u}: five runs");
            for (run, seqs) in per_run {
                assert_eq!(
                    seqs,
                    (1..=seqs.len() as u64).collect::<Vec<_>>(),
                    "{u}/{run}"
                );
                assert_eq!(terminals.get(&run), Some(&1), "{u}/{run}: one terminal");
            }
            assert!(sub.try_recv().is_none(), "{u}: nothing extra");
        }
    }
    // Nothing per user stays behind on either node once the users are gone.
    assert!(a.cluster.tracked_users() >= 200);
    drop(engines);
    drop(subs);
    for _ in 0..100 {
        if a.cluster.tracked_users() == 0 && b.cluster.tracked_users() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.cluster.tracked_users(), 0, "node a keeps per-user state");
    assert_eq!(b.cluster.tracked_users(), 0, "node b keeps per-user state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_when_the_bus_attached_before_anyone_asked() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", 2, |c| c).await;
    let user = UserId::new("olga").unwrap();
    let sub = a.factory.subscribe(&user);
    // Let the attach finish while nobody waits on it yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(2), sub.ready())
        .await
        .expect("ready does not hang")
        .expect("attached");
}
