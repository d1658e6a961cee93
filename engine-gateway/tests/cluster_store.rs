//! Two real gateway binaries on one real Redis and one real Postgres: node `a` is SIGKILLed with
//! a slow run and a run waiting for approval in flight; node `b` marks both `interrupted` once
//! a's heartbeat is older than the node lease, exactly once, and a client resumes them (and a
//! finished run of `a`) on `b` from the store. Twenty rounds, each on a fresh database.

use std::time::{Duration, Instant};

use engine_redis::testing::RedisServer;
use engine_store::testing::PostgresServer;
use serde_json::{json, Value};

mod common;

use common::{connect, next, send, start_gateway, Running, Ws};

const ROUNDS: usize = 20;

async fn node(redis: &RedisServer, database: &str, name: &str) -> Running {
    let url = redis.url();
    start_gateway(&[
        "--redis-url",
        url.as_str(),
        "--database-url",
        database,
        "--node-id",
        name,
        "--node-lease-ms",
        "800",
    ])
    .await
}

async fn start(ws: &mut Ws, thread: &str, text: &str, agent: &str) -> String {
    send(
        ws,
        json!({"type":"user_message","thread_id":thread,"text":text,"agent":agent}),
    )
    .await;
    loop {
        let f = next(ws).await;
        match f["type"].as_str() {
            Some("run_accepted") => return f["run_id"].as_str().unwrap().to_owned(),
            Some("error") => panic!("refused: {f}"),
            _ => {}
        }
    }
}

async fn wait_event(ws: &mut Ws, run: &str, kind: &str) {
    loop {
        let f = next(ws).await;
        if f["type"] == "event" && f["run_id"] == run && f["event"]["type"] == kind {
            return;
        }
    }
}

/// The run's events from seq 0 on `ws` (the store's, through `resume`), up to its terminal
/// event; `None` when the run has not ended yet (it ends without a terminal event in reach).
async fn resumed(ws: &mut Ws, run: &str) -> Option<Vec<Value>> {
    send(ws, json!({"type":"resume","run_id":run,"after_seq":0})).await;
    let mut events = Vec::new();
    loop {
        let f = tokio::time::timeout(Duration::from_millis(500), next(ws)).await;
        let Ok(f) = f else {
            return None; // replay ended without a terminal event: still running
        };
        assert_ne!(f["type"], "error", "{f}");
        if f["type"] == "event" && f["run_id"] == run {
            events.push(f["event"].clone());
            if f["event"]["type"] == "agent_completed" {
                return Some(events);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_runs_end_interrupted_once_on_the_other_node() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(postgres) = PostgresServer::start() else {
        return;
    };
    for round in 0..ROUNDS {
        let database = postgres.create_database(&format!("round_{round}"));
        let mut a = node(&redis, &database, &format!("a{round}")).await;
        let b = node(&redis, &database, &format!("b{round}")).await;
        let user = format!("alice-{round}");
        let mut on_a = connect(&a.addr, &user).await;
        let done = start(&mut on_a, "t-done", "what is 6 * 7?", "assistant").await;
        wait_event(&mut on_a, &done, "agent_completed").await;
        let waiting = start(
            &mut on_a,
            "t-approve",
            "please remember: what is 2 + 2?",
            "assistant",
        )
        .await;
        wait_event(&mut on_a, &waiting, "approval_requested").await;
        let slow = start(&mut on_a, "t-slow", "600000", "waiter").await;
        wait_event(&mut on_a, &slow, "agent_thinking").await;
        tokio::time::sleep(Duration::from_millis(100)).await; // let the batch land
        a.child.start_kill().unwrap();
        a.child.wait().await.unwrap();

        let mut on_b = connect(&b.addr, &user).await;
        let finished = resumed(&mut on_b, &done).await.expect("the finished run");
        assert_eq!(finished.last().unwrap()["status"], "completed");
        let deadline = Instant::now() + Duration::from_secs(15);
        for run in [&waiting, &slow] {
            let events = loop {
                if let Some(events) = resumed(&mut on_b, run).await {
                    break events;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: {run} not interrupted within 15 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let terminal: Vec<&Value> = events
                .iter()
                .filter(|e| e["type"] == "agent_completed")
                .collect();
            assert_eq!(terminal.len(), 1, "round {round}");
            assert_eq!(terminal[0]["status"], "interrupted", "round {round}");
        }
        // Another user never reads them, on either node.
        let mut bob = connect(&b.addr, &format!("bob-{round}")).await;
        send(
            &mut bob,
            json!({"type":"resume","run_id":slow,"after_seq":0}),
        )
        .await;
        let f = next(&mut bob).await;
        assert_eq!(f["code"], "unknown_run", "{f}");
        // Exactly one end each, in the database.
        let counts = query(
            &database,
            "SELECT (SELECT COUNT(*) FROM runs WHERE status = 'interrupted') || ',' || \
             (SELECT COUNT(*) FROM runs WHERE status = 'running') || ',' || \
             (SELECT COUNT(*) FROM events WHERE body LIKE '{\"type\":\"agent_completed\"%') || ',' || \
             (SELECT COUNT(*) FROM approvals WHERE status = 'pending')",
        )
        .await;
        assert_eq!(
            counts, "2,0,3,0",
            "round {round}: interrupted, running, terminal events, pending approvals"
        );
        common::terminate(&b.child);
        let mut child = b.child;
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("b exits")
            .unwrap();
    }
}

/// One text value from `sql` on `database`.
async fn query(database: &str, sql: &str) -> String {
    let pool = sqlx::PgPool::connect(database).await.expect("the database");
    let value: String = sqlx::query_scalar(sql)
        .fetch_one(&pool)
        .await
        .expect("the query");
    pool.close().await;
    value
}
