//! Cluster mode with the real binary: two `engine-gateway` processes on one real
//! `redis-server`. A user's tabs on both nodes see runs of either node; resume and cancel work
//! from the other node and never for another user; a SIGKILLed node's leases expire and its
//! clients resume on the other node; Redis killed and restarted under a node; Redis missing at
//! start.

use std::time::{Duration, Instant};

use engine_redis::testing::RedisServer;
use serde_json::{json, Value};

mod common;

use common::{connect, next, send, start_gateway, Running, Ws, SECRET};

async fn node(redis: &RedisServer, name: &str, extra: &[&str]) -> Running {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--node-id", name];
    args.extend_from_slice(extra);
    start_gateway(&args).await
}

/// Sends a message and returns the run id from `run_accepted` (other frames before it are
/// events of earlier runs, skipped).
async fn start_run(ws: &mut Ws, agent: &str, text: &str) -> String {
    send(
        ws,
        json!({"type":"user_message","thread_id":"thread-1","text":text,"agent":agent,"multitask":"parallel"}),
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

/// Frames of `run` until its terminal event; returns the event kinds in order.
async fn until_terminal(ws: &mut Ws, run: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut expected_seq = 1;
    loop {
        let f = next(ws).await;
        if f["type"] == "event" && f["run_id"] == run {
            assert_eq!(f["seq"], expected_seq, "in order, no gap: {f}");
            expected_seq += 1;
            let kind = f["event"]["type"].as_str().unwrap().to_owned();
            let terminal = kind == "agent_completed" || kind == "agent_failed";
            kinds.push(kind);
            if terminal {
                return kinds;
            }
        }
    }
}

/// The answer to a frame that yields one reply (skipping event frames).
async fn reply(ws: &mut Ws, frame: Value) -> Value {
    send(ws, frame).await;
    loop {
        let f = next(ws).await;
        if f["type"] != "event" {
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_runs_resume_and_cancel_per_user() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", &[]).await;
    let b = node(&redis, "node-b", &[]).await;
    let mut alice_a = connect(&a.addr, "alice").await;
    let mut alice_b = connect(&b.addr, "alice").await;
    let mut bob_a = connect(&a.addr, "bob").await;
    let mut bob_b = connect(&b.addr, "bob").await;

    // A run on A reaches alice's tab on B, event for event.
    let run_a = start_run(&mut alice_a, "assistant", "hello from A").await;
    let on_a = until_terminal(&mut alice_a, &run_a).await;
    let on_b = until_terminal(&mut alice_b, &run_a).await;
    assert_eq!(on_a, on_b);
    assert_eq!(on_a.first().map(String::as_str), Some("agent_started"));
    // And the other way round.
    let run_b = start_run(&mut alice_b, "assistant", "hello from B").await;
    assert_eq!(
        until_terminal(&mut alice_b, &run_b).await,
        until_terminal(&mut alice_a, &run_b).await
    );

    // Resume on B (a fresh tab) of the run on A.
    let mut fresh_b = connect(&b.addr, "alice").await;
    send(
        &mut fresh_b,
        json!({"type":"resume","run_id":run_a,"after_seq":1}),
    )
    .await;
    let mut resumed = Vec::new();
    while resumed.len() + 1 < on_a.len() {
        let f = next(&mut fresh_b).await;
        assert_eq!(f["type"], "event", "{f}");
        assert_eq!(f["run_id"], run_a.as_str());
        resumed.push(f["seq"].as_u64().unwrap());
    }
    assert_eq!(resumed, (2..=on_a.len() as u64).collect::<Vec<_>>());

    // Cancel on B of a long run on A.
    let long = start_run(&mut alice_a, "waiter", "60000").await;
    // Wait until node B has seen it (so Redis knows which node runs it).
    loop {
        let f = next(&mut alice_b).await;
        if f["type"] == "event" && f["run_id"] == long.as_str() {
            break;
        }
    }
    // Bob can neither resume nor cancel it, on either node.
    for ws in [&mut bob_a, &mut bob_b] {
        let f = reply(ws, json!({"type":"cancel","run_id":long})).await;
        assert_eq!(f["code"], "unknown_run", "{f}");
        let f = reply(ws, json!({"type":"resume","run_id":run_a,"after_seq":0})).await;
        assert_eq!(f["code"], "unknown_run", "{f}");
    }
    let started = Instant::now();
    send(&mut alice_b, json!({"type":"cancel","run_id":long})).await;
    let kinds = until_terminal(&mut alice_a, &long).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancelled, not waited out"
    );
    assert!(kinds
        .iter()
        .any(|k| k == "agent_completed" || k == "agent_failed"));
    // Bob saw nothing of alice's.
    for ws in [&mut bob_a, &mut bob_b] {
        send(
            ws,
            json!({"type":"resume","run_id":"run-none","after_seq":0}),
        )
        .await;
        let f = next(ws).await;
        assert_eq!(f["type"], "error", "bob only gets his own answers: {f}");
    }

    // A tool call on A waiting for approval is approved from B.
    let asks = start_run(&mut alice_a, "assistant", "please remember: 2 + 2").await;
    let call_id = loop {
        let f = next(&mut alice_b).await;
        if f["type"] == "event"
            && f["run_id"] == asks.as_str()
            && f["event"]["type"] == "approval_requested"
        {
            break f["event"]["call_id"].as_u64().unwrap();
        }
    };
    let f = reply(
        &mut bob_b,
        json!({"type":"approve","run_id":asks,"call_id":call_id,"decision":"approve"}),
    )
    .await;
    assert_eq!(
        f["code"], "unknown_run",
        "bob cannot approve alice's call: {f}"
    );
    send(
        &mut alice_b,
        json!({"type":"approve","run_id":asks,"call_id":call_id,"decision":"approve"}),
    )
    .await;
    let kinds = until_terminal(&mut alice_a, &asks).await;
    assert!(kinds.iter().any(|k| k == "approval_decided"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("agent_completed"));

    // Health and metrics report the cluster.
    let health: Value = json_of(&b.addr, "/healthz").await;
    assert_eq!(health["redis"], "ok");
    assert_eq!(health["node_id"], "node-b");
    let metrics = text_of(&a.addr, "/metrics").await;
    assert!(
        metrics.contains("engine_gateway_redis_events_published_total"),
        "{metrics}"
    );
    assert!(metrics.contains("engine_gateway_redis_up 1"));
    let forwarded: Value = json_of(&b.addr, "/metrics.json").await;
    assert!(forwarded["cluster"]["control_forwarded"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_nodes_leases_expire_and_its_clients_resume_elsewhere() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let flags = ["--lease-ttl-ms", "3000", "--max-engines-per-user", "1"];
    let mut a = node(&redis, "node-a", &flags).await;
    let b = node(&redis, "node-b", &flags).await;
    let mut carol_a = connect(&a.addr, "carol").await;
    let run = start_run(&mut carol_a, "assistant", "before the crash").await;
    let seen = until_terminal(&mut carol_a, &run).await;
    // A node hands its own events to its clients before Redis has them (issue 27): wait until
    // A's publisher has written the run's events, so the stream B replays holds the run.
    let published = Instant::now() + Duration::from_secs(10);
    while json_of(&a.addr, "/metrics.json").await["cluster"]["events_published"]
        .as_u64()
        .unwrap_or(0)
        < seen.len() as u64
    {
        assert!(Instant::now() < published, "node A never published the run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.child.start_kill().unwrap();
    let _ = a.child.wait().await;
    let killed = Instant::now();
    eprintln!("node A killed");

    // The client reconnects to B and resumes the run from the stream.
    let mut carol_b = connect(&b.addr, "carol").await;
    send(
        &mut carol_b,
        json!({"type":"resume","run_id":run,"after_seq":0}),
    )
    .await;
    for seq in 1..=seen.len() as u64 {
        let f = next(&mut carol_b).await;
        assert_eq!(f["seq"], seq, "{f}");
    }
    eprintln!("resumed on B");
    // A's lease still holds carol's one engine slot until its TTL runs out...
    send(
        &mut carol_b,
        json!({"type":"user_message","thread_id":"thread-1","text":"hi","agent":"assistant"}),
    )
    .await;
    let f = next(&mut carol_b).await;
    eprintln!("first answer on B after {:?}: {f}", killed.elapsed());
    if killed.elapsed() < Duration::from_secs(2) {
        assert_eq!(f["code"], "too_many_engines", "{f}");
    }
    // ...then it expires and carol works on B.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        send(
            &mut carol_b,
            json!({"type":"user_message","thread_id":"thread-1","text":"hi","agent":"assistant"}),
        )
        .await;
        let f = next(&mut carol_b).await;
        if f["type"] == "run_accepted" {
            break;
        }
        assert_eq!(f["code"], "too_many_engines", "{f}");
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        killed.elapsed() >= Duration::from_millis(1000),
        "not before the lease could expire"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_a_node_and_restarted() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", &[]).await;
    let mut dan = connect(&a.addr, "dan").await;
    let run = start_run(&mut dan, "waiter", "1500").await;
    // Its first event came through Redis.
    loop {
        let f = next(&mut dan).await;
        if f["type"] == "event" {
            break;
        }
    }
    redis.kill();
    // The run ends on its node: its terminal event reaches the client, and the client hears
    // that the cluster is unavailable. Nothing hangs.
    let mut terminal = 0;
    let mut told = false;
    let redis_url = redis.url();
    let port = redis_url.rsplit(':').next().unwrap_or_default().to_owned();
    // No frame a user gets carries Redis's address or its error text.
    let internal = |f: &Value| {
        let text = f.to_string();
        assert!(
            !text.contains("redis://")
                && !text.contains(&format!(":{port}"))
                && !text.contains("os error")
                && !text.to_lowercase().contains("connection refused"),
            "an internal detail reached the user: {text}"
        );
    };
    while terminal == 0 || !told {
        let f = next(&mut dan).await;
        internal(&f);
        if f["type"] == "error" && f["code"] == "cluster_unavailable" {
            told = true;
        }
        if f["type"] == "event" && f["run_id"] == run.as_str() {
            let kind = f["event"]["type"].as_str().unwrap_or_default();
            if kind == "agent_completed" || kind == "agent_failed" {
                terminal += 1;
            }
        }
    }
    let health = status_of(&a.addr, "/healthz").await;
    assert_eq!(health, 503, "unhealthy while Redis is down");
    // A run, a cancel and a resume asked while Redis is down: refused, in the user's words.
    let mut asked = Vec::new();
    send(
        &mut dan,
        serde_json::json!({"type":"user_message","thread_id":"t2","text":"hello"}),
    )
    .await;
    send(
        &mut dan,
        serde_json::json!({"type":"resume","run_id":"run_00000000000000000000000000000000","after_seq":0}),
    )
    .await;
    while asked.len() < 2 {
        let f = next(&mut dan).await;
        internal(&f);
        if f["type"] == "error" || f["type"] == "run_accepted" {
            asked.push(f);
        }
    }
    redis.restart();
    // Service resumes without restarting the gateway.
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of(&a.addr, "/healthz").await != 200 {
        assert!(Instant::now() < deadline, "the node never saw Redis again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut dan2 = connect(&a.addr, "dan").await;
    let again = start_run(&mut dan2, "assistant", "after the outage").await;
    let kinds = until_terminal(&mut dan2, &again).await;
    assert_eq!(kinds.last().map(String::as_str), Some("agent_completed"));
    let m: Value = json_of(&a.addr, "/metrics.json").await;
    assert!(m["cluster"]["reconnects"].as_u64().unwrap() >= 1, "{m}");
    assert!(m["cluster"]["publish_errors"].as_u64().unwrap() >= 1, "{m}");
}

#[test]
fn unreachable_redis_at_start_exits_with_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://:pw-secret@127.0.0.1:{port}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine-gateway"))
        .args(["--addr", "127.0.0.1:0", "--redis-url", &url, "--log", "off"])
        .env("GATEWAY_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(lines[0].contains("cannot reach Redis"), "{stderr}");
    assert!(!stderr.contains("pw-secret"), "{stderr}");
}

async fn status_of(addr: &str, path: &str) -> u16 {
    common::http_get(addr, path, "").await.0
}

async fn text_of(addr: &str, path: &str) -> String {
    common::http_get(addr, path, "").await.2
}

async fn json_of(addr: &str, path: &str) -> Value {
    serde_json::from_str(&text_of(addr, path).await).unwrap()
}
