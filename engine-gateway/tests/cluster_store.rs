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

/// A run started over HTTP on node `a` streams on node `b` (Server-Sent Events, resumed there
/// with `Last-Event-ID`), and a stream on `b` of a run that was going on `a` when `a` was
/// SIGKILLed ends with the run's one `interrupted` terminal event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_event_stream_resumes_on_another_node_and_ends_when_its_node_dies() {
    use common::sse::{read_to_end, Sse};
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(postgres) = PostgresServer::start() else {
        return;
    };
    let database = postgres.create_database("sse_nodes");
    let mut a = node(&redis, &database, "sse-a").await;
    let b = node(&redis, &database, "sse-b").await;
    let token = engine_gateway::TokenKeys::new(common::SECRET.as_bytes())
        .issue(&engine_core::UserId::new("alice").unwrap(), 600)
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let start_on_a = |thread: &str, body: Value| {
        let request = http
            .post(format!("http://{}/v1/threads/{thread}/runs", a.addr))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 202);
            let v: Value = r.json().await.unwrap();
            v["run_id"].as_str().unwrap().to_owned()
        }
    };
    let stream_on_b = |run: &str, last: Option<u64>| {
        let mut request = http
            .get(format!("http://{}/v1/runs/{run}/events", b.addr))
            .bearer_auth(&token)
            .header("accept", "text/event-stream");
        if let Some(id) = last {
            request = request.header("last-event-id", id.to_string());
        }
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            Sse::new(r)
        }
    };
    let words: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
    let run = start_on_a("t-long", json!({ "text": words.join(" ") })).await;
    let mut sse = stream_on_b(&run, None).await;
    let mut events = Vec::new();
    for seq in 1..=3 {
        let f = sse.next().await.expect("an event");
        assert_eq!(f.id, Some(seq));
        assert_eq!(f.data["run_id"], run.as_str());
        events.push(f.data["event"].clone());
    }
    drop(sse);
    let mut sse = stream_on_b(&run, Some(3)).await;
    events.extend(read_to_end(&mut sse, 3).await);
    let last = events.last().unwrap();
    assert_eq!(last["status"], "completed", "{last}");
    let answer: String = events
        .iter()
        .filter(|e| e["type"] == "answer_delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(answer, last["result"].as_str().unwrap());

    // A run going on `a` when `a` dies: the stream on `b` ends with its `interrupted` end.
    let slow = start_on_a("t-slow", json!({"text": "600000", "agent": "waiter"})).await;
    let mut sse = stream_on_b(&slow, None).await;
    let first = sse.next().await.expect("the run's first event");
    assert_eq!(first.data["event"]["type"], "agent_started");
    tokio::time::sleep(Duration::from_millis(100)).await; // let the batch land
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let mut terminal = None;
    while let Some(f) = sse.next().await {
        if f.data["event"]["type"] == "agent_completed" {
            terminal = Some(f.data["event"].clone());
        }
    }
    let terminal = terminal.expect("the stream ends with the run's terminal event");
    assert_eq!(terminal["status"], "interrupted", "{terminal}");
}
