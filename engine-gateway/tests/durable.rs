//! The real binary, durable by default: runs in flight and a pending approval when the process
//! is killed with SIGKILL; after a restart on the same data directory every run has exactly one
//! terminal record and event (the in-flight ones `interrupted`), the finished run and the
//! thread's history are intact, and a client resumes both runs' events from the store.

use std::time::Duration;

use serde_json::{json, Value};

mod common;

use common::{connect, next, send, Ws};

/// Sends a message and returns its run id, keeping the frames seen on the way.
async fn start(ws: &mut Ws, frame: Value, seen: &mut Vec<Value>) -> String {
    send(ws, frame).await;
    loop {
        let f = next(ws).await;
        if f["type"] == "run_accepted" {
            return f["run_id"].as_str().unwrap().to_owned();
        }
        seen.push(f);
    }
}

/// Waits for a frame of `run` matching `pred`.
async fn wait_for(ws: &mut Ws, run: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    loop {
        let f = next(ws).await;
        if f["type"] == "event" && f["run_id"] == run && pred(&f["event"]) {
            return f;
        }
    }
}

/// Resumes `run` from seq 0 and collects its events up to the terminal one. A `gap` frame is
/// allowed only just before an `interrupted` terminal event (the room left for events the
/// killed process may have sent unstored); seqs are otherwise contiguous.
async fn resume_all(ws: &mut Ws, run: &str) -> Vec<Value> {
    send(ws, json!({"type":"resume","run_id":run,"after_seq":0})).await;
    let mut events = Vec::new();
    let mut expected = 1;
    let mut gap = false;
    loop {
        let f = next(ws).await;
        assert_ne!(f["type"], "error", "resume answered {f}");
        if f["type"] == "gap" && f["run_id"] == run {
            assert_eq!(f["from_seq"], expected, "{f}");
            expected = f["to_seq"].as_u64().unwrap() + 1;
            gap = true;
            continue;
        }
        if f["type"] == "event" && f["run_id"] == run {
            assert_eq!(f["seq"], expected, "{f}");
            expected += 1;
            let terminal = f["event"]["type"] == "agent_completed";
            assert!(
                !gap || terminal,
                "a gap only before the terminal event: {f}"
            );
            events.push(f["event"].clone());
            if terminal {
                assert_eq!(gap, f["event"]["status"] == "interrupted", "{f}");
                return events;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_restarts_with_every_run_ended_once_and_the_history_intact() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let mut gw = common::start_gateway(&["--data-dir", &dir]).await;
    let mut ws = connect(&gw.addr, "alice").await;
    let mut seen = Vec::new();
    // A run that finishes, then one waiting for approval, then a slow one, on three threads.
    let done = start(
        &mut ws,
        json!({"type":"user_message","thread_id":"t-done","text":"what is 6 * 7?"}),
        &mut seen,
    )
    .await;
    wait_for(&mut ws, &done, |e| e["type"] == "agent_completed").await;
    let waiting = start(
        &mut ws,
        json!({"type":"user_message","thread_id":"t-approve","text":"please remember: what is 2 + 2?"}),
        &mut seen,
    )
    .await;
    wait_for(&mut ws, &waiting, |e| e["type"] == "approval_requested").await;
    let slow = start(
        &mut ws,
        json!({"type":"user_message","thread_id":"t-slow","text":"600000","agent":"waiter"}),
        &mut seen,
    )
    .await;
    wait_for(&mut ws, &slow, |e| e["type"] == "agent_thinking").await;
    // Give the write-behind a moment (the runs' acceptance and first events), then SIGKILL.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.child.start_kill().unwrap();
    gw.child.wait().await.unwrap();
    drop(ws);

    for restart in 0..2 {
        let gw = common::start_gateway(&["--data-dir", &dir]).await;
        let mut ws = connect(&gw.addr, "alice").await;
        let finished = resume_all(&mut ws, &done).await;
        let last = finished.last().unwrap();
        assert_eq!(last["status"], "completed", "restart {restart}");
        assert!(last["result"].as_str().unwrap().contains("42"), "{last}");
        let deltas: String = finished
            .iter()
            .filter(|e| e["type"] == "answer_delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(
            deltas,
            last["result"].as_str().unwrap(),
            "the stored deltas add up"
        );
        for run in [&waiting, &slow] {
            let events = resume_all(&mut ws, run).await;
            let terminal: Vec<&Value> = events
                .iter()
                .filter(|e| e["type"] == "agent_completed")
                .collect();
            assert_eq!(terminal.len(), 1, "one terminal event ({restart})");
            assert_eq!(terminal[0]["status"], "interrupted", "{}", terminal[0]);
            assert_eq!(events[0]["type"], "agent_started");
        }
        // Another user resumes none of alice's runs.
        let mut bob = connect(&gw.addr, "bob").await;
        send(
            &mut bob,
            json!({"type":"resume","run_id":done,"after_seq":0}),
        )
        .await;
        let f = next(&mut bob).await;
        assert_eq!(f["type"], "error", "{f}");
        assert_eq!(f["code"], "unknown_run", "{f}");
        // The health check names the store.
        let (status, _, body) = common::http_get(&gw.addr, "/healthz", "").await;
        assert_eq!(status, 200, "{body}");
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["store"]["backend"], "sqlite", "{health}");
        assert_eq!(health["store"]["status"], "ok", "{health}");
        // A run on the restarted gateway is written in batches too.
        let mut seen = Vec::new();
        let after = start(
            &mut ws,
            json!({"type":"user_message","thread_id":format!("t-after-{restart}"),"text":"what is 1 + 1?"}),
            &mut seen,
        )
        .await;
        wait_for(&mut ws, &after, |e| e["type"] == "agent_completed").await;
        let (status, _, metrics) = common::http_get(&gw.addr, "/metrics", "").await;
        let interrupted = if restart == 0 { 2 } else { 0 };
        assert!(
            metrics.contains(&format!(
                "engine_gateway_store_runs_interrupted_total {interrupted}"
            )),
            "{metrics}"
        );
        assert_eq!(status, 200);
        assert!(metrics.contains("engine_gateway_store_up 1"), "{metrics}");
        let batches = metrics
            .lines()
            .find_map(|l| l.strip_prefix("engine_gateway_store_batches_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("the batch counter");
        assert!(batches > 0, "the store wrote batches: {metrics}");
        assert!(metrics.contains("engine_gateway_store_batch_seconds_bucket{le=\"+Inf\"}"));
        common::terminate(&gw.child);
        let mut child = gw.child;
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("a graceful exit")
            .unwrap();
    }

    // The records, read straight from the file.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{dir}/gateway.db"))
        .await
        .unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT run_id, status FROM runs WHERE user_id = 'alice' ORDER BY run_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows.len(),
        5,
        "three before the kill, one after each restart: {rows:?}"
    );
    for (run, status) in &rows {
        let want = if *run == waiting || *run == slow {
            "interrupted"
        } else {
            "completed"
        };
        assert_eq!(status, want, "{run}");
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM approvals WHERE status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 0, "the pending approval ended with its run");
    let messages: Vec<(String, String)> = sqlx::query_as(
        "SELECT role, content FROM messages WHERE user_id = 'alice' AND thread_id = 't-done' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0], ("user".into(), "what is 6 * 7?".into()));
    assert_eq!(messages[1].0, "assistant");
}
