//! Thread history on a real Redis: per user and thread, trimmed, and unreachable from another
//! user whatever the ids look like. Needs the `redis` feature (`cargo test -p engine-llm
//! --features redis`; the workspace's test run has it through the gateway).
#![cfg(feature = "redis")]

use std::time::Duration;

use engine_core::{ThreadId, UserId};
use engine_llm::{HistoryStore, RedisHistory, Turn};
use engine_redis::testing::RedisServer;
use engine_redis::{ClusterConfig, RedisCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_users_thread_history_is_their_own() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let cluster = RedisCluster::connect(ClusterConfig::new(redis.url()).with_node_id("h"))
        .await
        .unwrap();
    let store = RedisHistory::new(&cluster, 3, Duration::from_secs(60));
    let thread = ThreadId::new("thread:1 *").unwrap();
    let users = ["alice", "alice:thread:1", "{alice}", "al ice", "ålice"];
    for (i, u) in users.iter().enumerate() {
        let user = UserId::new(*u).unwrap();
        for n in 0..5 {
            store
                .append(
                    &user,
                    &thread,
                    Turn::new(format!("{u} says {n}"), format!("to {i}")),
                )
                .await
                .unwrap();
        }
    }
    for u in users {
        let user = UserId::new(u).unwrap();
        let turns = store.load(&user, &thread, 10).await.unwrap();
        let said: Vec<String> = turns.iter().map(|t| t.user.clone()).collect();
        assert_eq!(
            said,
            vec![
                format!("{u} says 2"),
                format!("{u} says 3"),
                format!("{u} says 4")
            ],
            "trimmed to 3, only {u}'s"
        );
        let last = store.load(&user, &thread, 1).await.unwrap();
        assert_eq!(last.len(), 1);
    }
    let other = ThreadId::new("thread-2").unwrap();
    assert!(store
        .load(&UserId::new("alice").unwrap(), &other, 10)
        .await
        .unwrap()
        .is_empty());
}
