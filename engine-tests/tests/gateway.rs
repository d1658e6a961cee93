//! The gateway over real WebSockets on loopback: isolation at scale, authentication, resume,
//! malformed input, limits and graceful shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use engine_core::{EngineConfig, UserId};
use engine_factory::FactoryConfig;
use engine_gateway::{Gateway, GatewayConfig};
use engine_tests::script_registry;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Server {
    gateway: Gateway,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

const SECRET: &[u8] = b"test-secret-for-the-gateway-suite-32b";

async fn start(tune: impl FnOnce(&mut GatewayConfig)) -> Server {
    let mut config = GatewayConfig::with_secret(SECRET.to_vec());
    config.development = true;
    tune(&mut config);
    let (registry, _) = script_registry();
    let gateway = Gateway::new(config, registry).expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let g = gateway.clone();
    let task = tokio::spawn(async move {
        g.serve(listener, async move {
            let _ = stopped.await;
        })
        .await
    });
    Server {
        gateway,
        addr,
        stop: Some(stop),
        task,
    }
}

impl Server {
    fn token(&self, user: &str) -> String {
        self.gateway
            .keys()
            .issue(&UserId::new(user).unwrap(), 600)
            .unwrap()
    }
    async fn connect(&self, user: &str) -> Ws {
        let token = self.token(user);
        self.connect_token(&token).await.unwrap()
    }
    /// Opens `/ws` with `token` in the `Authorization` header.
    async fn connect_token(&self, token: &str) -> Result<Ws, tungstenite::Error> {
        use tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/ws", self.addr).into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome");
        Ok(ws)
    }
    async fn connect_with(&self, path: &str) -> Result<Ws, tungstenite::Error> {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}{path}", self.addr)).await?;
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome");
        Ok(ws)
    }
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => {
                return json!({ "type": "closed", "code": c.map(|c| u16::from(c.code)) })
            }
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Reads frames until the terminal event of `run`; returns the events of that run.
async fn until_completed(ws: &mut Ws, run: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let f = next_json(ws).await;
        if f["type"] == "event" && f["run_id"] == run {
            let done = f["event"]["type"] == "agent_completed";
            events.push(f);
            if done {
                return events;
            }
        }
    }
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// 100 users, 2 connections each, 5 messages each, concurrently: every connection receives
/// exactly its user's events, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_users_two_connections_five_messages_each() {
    let server = start(|_| {}).await;
    let server = std::sync::Arc::new(server);
    let tasks: Vec<_> = (0..100)
        .map(|u| {
            let server = server.clone();
            tokio::spawn(async move {
                let user = format!("ws-user-{u:03}");
                let mut a = server.connect(&user).await;
                let mut b = server.connect(&user).await;
                let mut runs = Vec::new();
                for i in 0..5 {
                    let sender = if i % 2 == 0 { &mut a } else { &mut b };
                    send(sender, json!({"type":"user_message","thread_id":"t1","text":format!("think:{user} message {i};tool:echo"),"client_request_id":format!("c{i}")})).await;
                    let accepted = loop {
                        let f = next_json(sender).await;
                        if f["type"] == "run_accepted" {
                            break f;
                        }
                    };
                    assert_eq!(accepted["client_request_id"], format!("c{i}"));
                    let run = accepted["run_id"].as_str().unwrap().to_owned();
                    let on_a = until_completed(&mut a, &run).await;
                    let on_b = until_completed(&mut b, &run).await;
                    runs.push((run, on_a, on_b));
                }
                (user, runs)
            })
        })
        .collect();
    for t in tasks {
        let (user, runs) = t.await.unwrap();
        assert_eq!(runs.len(), 5);
        for (run, on_a, on_b) in runs {
            assert_eq!(on_a, on_b, "both tabs see the same stream");
            assert_eq!(
                seqs(&on_a),
                (1..=on_a.len() as u64).collect::<Vec<_>>(),
                "{run} in order"
            );
            assert!(
                on_a.iter().all(|e| e["user_id"] == user.as_str()),
                "another user's event"
            );
            let answer = on_a.last().unwrap()["event"]["result"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(answer.contains(&format!("answer for {user}")), "{answer}");
        }
    }
    let server = std::sync::Arc::try_unwrap(server).ok().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn bad_and_forged_tokens_get_401_and_no_socket() {
    let server = start(|_| {}).await;
    let status = |r: Result<Ws, tungstenite::Error>| match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => 101,
    };
    assert_eq!(status(server.connect_with("/ws").await), 401, "missing");
    assert_eq!(
        status(server.connect_token("garbage").await),
        401,
        "malformed"
    );
    let forged = engine_gateway::TokenKeys::new(b"another-secret")
        .issue(&UserId::new("alice").unwrap(), 600)
        .unwrap();
    assert_eq!(
        status(server.connect_token(&forged).await),
        401,
        "wrong signature"
    );
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &engine_gateway::Claims {
            sub: "alice".into(),
            exp: 1_000,
            ..Default::default()
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(status(server.connect_token(&expired).await), 401, "expired");
    let good = server.token("alice");
    assert_eq!(status(server.connect_token(&good).await), 101);
    server.stop().await;
}

#[tokio::test]
async fn a_token_for_alice_can_never_read_or_cancel_bobs_run() {
    let server = start(|_| {}).await;
    let mut bob = server.connect("bob").await;
    send(
        &mut bob,
        json!({"type":"user_message","thread_id":"t","text":"think:bob secret;sleep:300"}),
    )
    .await;
    let accepted = next_json(&mut bob).await;
    let bobs_run = accepted["run_id"].as_str().unwrap().to_owned();
    let mut alice = server.connect("alice").await;
    // Alice claims to be bob in the frame: unknown fields are refused, identity is the token's.
    send(
        &mut alice,
        json!({"type":"user_message","thread_id":"t","text":"x","user_id":"bob"}),
    )
    .await;
    assert_eq!(next_json(&mut alice).await["code"], "bad_frame");
    send(
        &mut alice,
        json!({"type":"resume","run_id":bobs_run,"after_seq":0}),
    )
    .await;
    let f = next_json(&mut alice).await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("unknown_run"))
    );
    send(&mut alice, json!({"type":"cancel","run_id":bobs_run})).await;
    assert_eq!(next_json(&mut alice).await["code"], "unknown_run");
    let events = until_completed(&mut bob, &bobs_run).await;
    assert_eq!(
        events.last().unwrap()["event"]["status"],
        "completed",
        "alice could not cancel it"
    );
    // Nothing of bob's reached alice.
    let nothing = tokio::time::timeout(Duration::from_millis(300), alice.next()).await;
    assert!(nothing.is_err(), "alice received {nothing:?}");
    server.stop().await;
}

#[tokio::test]
async fn reconnect_and_resume_loses_nothing_within_the_buffer_and_reports_gaps() {
    let server = start(|c| c.replay_buffer = 1000).await;
    let mut ws = server.connect("carol").await;
    let script: String = (0..20)
        .map(|i| format!("think:step {i};sleep:5;"))
        .collect();
    send(
        &mut ws,
        json!({"type":"user_message","thread_id":"t","text":script}),
    )
    .await;
    let run = next_json(&mut ws).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let f = next_json(&mut ws).await;
        if f["type"] == "event" {
            seen.push(f);
        }
    }
    drop(ws); // the tab closes mid-run
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut ws = server.connect("carol").await;
    send(&mut ws, json!({"type":"resume","run_id":run,"after_seq":3})).await;
    let rest = until_completed(&mut ws, &run).await;
    // A client drops duplicates by (run_id, seq): live events may overlap the replay.
    for e in rest {
        if !seen.iter().any(|s| s["seq"] == e["seq"]) {
            seen.push(e);
        }
    }
    seen.sort_by_key(|e| e["seq"].as_u64());
    assert_eq!(
        seqs(&seen),
        (1..=22).collect::<Vec<_>>(),
        "nothing lost: 20 thoughts + started + completed"
    );

    // A tiny buffer evicts: resume says so with a gap frame.
    let small = start(|c| c.replay_buffer = 5).await;
    let mut ws = small.connect("dave").await;
    send(&mut ws, json!({"type":"user_message","thread_id":"t","text":"think:a;think:b;think:c;think:d;think:e;think:f"})).await;
    let run = next_json(&mut ws).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    until_completed(&mut ws, &run).await;
    send(&mut ws, json!({"type":"resume","run_id":run,"after_seq":0})).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["type"], "gap");
    assert_eq!(
        (gap["from_seq"].as_u64(), gap["to_seq"].as_u64()),
        (Some(1), Some(3))
    );
    let replayed: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(next_json(&mut ws).await);
        }
        v
    };
    assert_eq!(seqs(&replayed), [4, 5, 6, 7, 8]);
    small.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_stays() {
    let server = start(|c| c.max_frame_bytes = 256).await;
    let mut ws = server.connect("erin").await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("not json".into()), "bad_frame"),
        (Message::Text("{\"type\":\"fly\"}".into()), "bad_frame"),
        (
            Message::Text("{\"type\":\"user_message\",\"text\":\"no thread\"}".into()),
            "bad_frame",
        ),
        (Message::Binary(vec![1, 2, 3].into()), "bad_frame"),
        (
            Message::Text(
                json!({"type":"user_message","thread_id":"t","text":"x".repeat(300)})
                    .to_string()
                    .into(),
            ),
            "frame_too_large",
        ),
        (
            Message::Text(
                json!({"type":"user_message","thread_id":"null","text":"x"})
                    .to_string()
                    .into(),
            ),
            "bad_request",
        ),
        (
            Message::Text(
                json!({"type":"cancel","run_id":"run-nope"})
                    .to_string()
                    .into(),
            ),
            "unknown_run",
        ),
    ];
    for (msg, code) in cases {
        ws.send(msg).await.unwrap();
        let f = next_json(&mut ws).await;
        assert_eq!(f["type"], "error");
        assert_eq!(f["code"], code, "{f}");
    }
    send(
        &mut ws,
        json!({"type":"user_message","thread_id":"t","text":"think:still open"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "run_accepted");
    // Far over the limit (more than 4x), the WebSocket layer refuses the frame: the connection
    // closes with 1009 (message too big), as the crate docs say.
    send(
        &mut ws,
        json!({"type":"user_message","thread_id":"t","text":"x".repeat(5000)}),
    )
    .await;
    let closed = loop {
        let f = next_json(&mut ws).await;
        if f["type"] == "closed" {
            break f;
        }
    };
    assert_eq!(closed["code"], 1009, "{closed}");
    server.stop().await;
}

#[tokio::test]
async fn connection_message_and_run_limits_are_answered() {
    let server = start(|c| {
        c.max_connections_per_user = 2;
        c.messages_per_minute = 5;
        // 3 runs at once and 1 waiting: the engine refuses the 5th message.
        let engine = EngineConfig::builder().max_queued_runs(1).build().unwrap();
        c.factory = FactoryConfig::builder().engine(engine).build().unwrap();
    })
    .await;
    let _a = server.connect("frank").await;
    let mut b = server.connect("frank").await;
    let third = server.connect_token(&server.token("frank")).await;
    assert!(matches!(third, Err(tungstenite::Error::Http(r)) if r.status().as_u16() == 429));
    let mut codes = BTreeMap::new();
    for _ in 0..6 {
        send(
            &mut b,
            json!({"type":"user_message","thread_id":"t","text":"sleep:2000"}),
        )
        .await;
        let f = loop {
            let f = next_json(&mut b).await;
            if f["type"] != "event" {
                break f;
            }
        };
        let key = f["code"]
            .as_str()
            .unwrap_or(f["type"].as_str().unwrap())
            .to_owned();
        *codes.entry(key).or_insert(0) += 1;
    }
    // 3 runs at once and 1 queued (the engine's limits), the 5th refused by the engine, the 6th
    // over 5 per minute.
    assert_eq!(codes.get("run_accepted"), Some(&4), "{codes:?}");
    assert_eq!(codes.get("too_many_runs"), Some(&1), "{codes:?}");
    assert_eq!(codes.get("rate_limited"), Some(&1), "{codes:?}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_delivers_terminal_events_then_closes_sockets() {
    let server = start(|_| {}).await;
    let mut ws = server.connect("gina").await;
    send(
        &mut ws,
        json!({"type":"user_message","thread_id":"t","text":"think:long;sleep:60000"}),
    )
    .await;
    let run = next_json(&mut ws).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gateway = server.gateway.clone();
    let events_task = tokio::spawn(async move {
        let events = until_completed(&mut ws, &run).await;
        let close = next_json(&mut ws).await;
        (events, close)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gateway.shutdown().await;
    let (events, close) = events_task.await.unwrap();
    assert_eq!(events.last().unwrap()["event"]["status"], "cancelled");
    assert_eq!(close["type"], "closed");
    assert_eq!(close["code"], 1001);
    let refused = server.connect_token(&server.token("gina")).await;
    assert!(refused.is_err(), "no new sockets after shutdown");
    server.stop().await;
}

#[tokio::test]
async fn idle_sessions_are_swept_and_leave_nothing_behind() {
    let server = start(|_| {}).await;
    let mut ws = server.connect("hank").await;
    send(
        &mut ws,
        json!({"type":"user_message","thread_id":"t","text":"think:hi"}),
    )
    .await;
    let run = next_json(&mut ws).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    until_completed(&mut ws, &run).await;
    assert_eq!(
        server.gateway.sweep_idle(Duration::ZERO).await,
        0,
        "still connected"
    );
    drop(ws);
    // The server notices the closed socket asynchronously; allow it a few seconds.
    let mut swept = 0;
    for _ in 0..100 {
        swept = server.gateway.sweep_idle(Duration::ZERO).await;
        if swept > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(swept, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let m = server.gateway.factory().metrics();
    assert_eq!(
        (m.active_engines, m.subscribers, m.hub_users),
        (0, 0, 0),
        "{m:?}"
    );
    // The user can come back; the old run is gone from the replay buffer.
    let mut ws = server.connect("hank").await;
    send(&mut ws, json!({"type":"resume","run_id":run,"after_seq":0})).await;
    assert_eq!(next_json(&mut ws).await["code"], "unknown_run");
    server.stop().await;
}

/// Sends a message and returns its run id (frames before `run_accepted` are dropped).
async fn start_run(ws: &mut Ws, thread: &str, text: &str, multitask: Option<&str>) -> String {
    let mut frame = json!({"type":"user_message","thread_id":thread,"text":text});
    if let Some(m) = multitask {
        frame["multitask"] = json!(m);
    }
    send(ws, frame).await;
    loop {
        let f = next_json(ws).await;
        match f["type"].as_str() {
            Some("run_accepted") => return f["run_id"].as_str().unwrap().to_owned(),
            Some("error") => panic!("refused: {f}"),
            _ => {}
        }
    }
}

/// Reads events until every run in `runs` has ended; returns `(run index, kind)` in order.
async fn order_of(ws: &mut Ws, runs: &[&str]) -> Vec<(usize, String)> {
    let mut order = Vec::new();
    let mut ended = 0;
    while ended < runs.len() {
        let f = next_json(ws).await;
        if f["type"] != "event" {
            continue;
        }
        let Some(i) = runs.iter().position(|r| f["run_id"] == *r) else {
            continue;
        };
        let kind = f["event"]["type"].as_str().unwrap().to_owned();
        ended += usize::from(kind == "agent_completed");
        order.push((i, kind));
    }
    order
}

fn pos(order: &[(usize, String)], run: usize, kind: &str) -> usize {
    order
        .iter()
        .position(|(r, k)| *r == run && k == kind)
        .unwrap_or_else(|| panic!("run {run} has no {kind}: {order:?}"))
}

#[tokio::test]
async fn multitask_policies_over_the_wire() {
    let server = start(|_| {}).await;
    let mut ws = server.connect("mia").await;

    // enqueue (the default): b starts after a ended.
    let a = start_run(&mut ws, "t", "sleep:150;think:a", None).await;
    let b = start_run(&mut ws, "t", "think:b", Some("enqueue")).await;
    let order = order_of(&mut ws, &[&a, &b]).await;
    assert!(
        pos(&order, 0, "agent_completed") < pos(&order, 1, "agent_started"),
        "{order:?}"
    );

    // interrupt: a is cancelled, its terminal comes before b's start.
    let a = start_run(&mut ws, "t", "wait_cancel", None).await;
    let b = start_run(&mut ws, "t", "think:b", Some("interrupt")).await;
    let order = order_of(&mut ws, &[&a, &b]).await;
    assert!(
        pos(&order, 0, "agent_completed") < pos(&order, 1, "agent_started"),
        "{order:?}"
    );

    // reject: refused while a runs, with thread_busy and no events.
    let a = start_run(&mut ws, "t", "sleep:150", None).await;
    send(
        &mut ws,
        json!({"type":"user_message","thread_id":"t","text":"x","multitask":"reject"}),
    )
    .await;
    let refused = loop {
        let f = next_json(&mut ws).await;
        if f["type"] == "error" {
            break f;
        }
        assert_ne!(f["type"], "run_accepted", "{f}");
    };
    assert_eq!(refused["code"], "thread_busy", "{refused}");
    order_of(&mut ws, &[&a]).await;

    // An unknown policy is a bad frame.
    send(
        &mut ws,
        json!({"type":"user_message","thread_id":"t","text":"x","multitask":"later"}),
    )
    .await;
    let bad = next_json(&mut ws).await;
    assert_eq!(bad["code"], "bad_frame", "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("later"), "{bad}");
    server.stop().await;
}

/// The deltas and approval events of one run, as `kind` or `kind:detail`.
fn story(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let ev = &e["event"];
            match ev["type"].as_str().unwrap() {
                "answer_delta" => format!("answer_delta:{}", ev["delta"].as_str().unwrap()),
                "approval_decided" => {
                    format!("approval_decided:{}", ev["outcome"].as_str().unwrap())
                }
                "tool_completed" => format!("tool_completed:{}", ev["status"].as_str().unwrap()),
                other => other.to_owned(),
            }
        })
        .collect()
}

#[tokio::test]
async fn a_streamed_answer_reaches_both_tabs_identically_and_no_other_user() {
    let server = start(|_| {}).await;
    let mut tab1 = server.connect("nia").await;
    let mut tab2 = server.connect("nia").await;
    let mut other = server.connect("oscar").await;
    let run = start_run(&mut tab1, "t", "say:one;say:-two;say:-three", None).await;
    let seen1 = until_completed(&mut tab1, &run).await;
    let seen2 = until_completed(&mut tab2, &run).await;
    assert_eq!(story(&seen1), story(&seen2));
    let deltas: String = seen1
        .iter()
        .filter(|e| e["event"]["type"] == "answer_delta")
        .map(|e| e["event"]["delta"].as_str().unwrap())
        .collect();
    let result = seen1.last().unwrap()["event"]["result"].as_str().unwrap();
    assert!(deltas.starts_with("one-two-three"), "{deltas}");
    assert_eq!(deltas, result);
    // Oscar's own run goes through; nothing of nia's reached him before it.
    let mine = start_run(&mut other, "t", "think:mine", None).await;
    loop {
        let f = next_json(&mut other).await;
        assert_ne!(f["run_id"], json!(run), "oscar got nia's event: {f}");
        if f["run_id"] == json!(mine) && f["event"]["type"] == "agent_completed" {
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn approvals_from_another_tab_after_a_reconnect_and_not_from_another_user() {
    let server = start(|_| {}).await;
    let mut tab1 = server.connect("pia").await;
    let mut tab2 = server.connect("pia").await;
    let mut intruder = server.connect("quinn").await;

    // Asked in tab 1, approved from tab 2.
    let run = start_run(&mut tab1, "t", "tool:guarded", None).await;
    let call = loop {
        let f = next_json(&mut tab2).await;
        if f["event"]["type"] == "approval_requested" {
            break f["event"]["call_id"].as_u64().unwrap();
        }
    };
    // Another user cannot answer it (nor tell it exists).
    send(
        &mut intruder,
        json!({"type":"approve","run_id":run,"call_id":call,"decision":"approve"}),
    )
    .await;
    let refused = next_json(&mut intruder).await;
    assert_eq!(refused["code"], "unknown_run", "{refused}");
    send(
        &mut tab2,
        json!({"type":"approve","run_id":run,"call_id":call,"decision":"approve"}),
    )
    .await;
    let events = until_completed(&mut tab1, &run).await;
    let told = story(&events);
    assert!(
        told.contains(&"approval_decided:approved".to_owned()),
        "{told:?}"
    );
    assert!(
        told.contains(&"tool_completed:success".to_owned()),
        "{told:?}"
    );

    // Asked, the tab drops, a new connection resumes the run, sees the request, and denies it.
    let run = start_run(&mut tab1, "t", "tool:guarded", None).await;
    loop {
        let f = next_json(&mut tab1).await;
        if f["event"]["type"] == "approval_requested" {
            break;
        }
    }
    drop(tab1);
    let mut back = server.connect("pia").await;
    send(
        &mut back,
        json!({"type":"resume","run_id":run,"after_seq":0}),
    )
    .await;
    let call = loop {
        let f = next_json(&mut back).await;
        if f["run_id"] == json!(run) && f["event"]["type"] == "approval_requested" {
            break f["event"]["call_id"].as_u64().unwrap();
        }
    };
    send(
        &mut back,
        json!({"type":"approve","run_id":run,"call_id":call,"decision":"deny"}),
    )
    .await;
    let events = until_completed(&mut back, &run).await;
    let told = story(&events);
    assert!(
        told.contains(&"tool_completed:denied".to_owned()),
        "{told:?}"
    );
    // A decision for a call that no longer waits is answered, not ignored.
    send(
        &mut back,
        json!({"type":"approve","run_id":run,"call_id":call,"decision":"deny"}),
    )
    .await;
    let late = loop {
        let f = next_json(&mut back).await;
        if f["type"] == "error" {
            break f;
        }
    };
    assert_eq!(late["code"], "unknown_run", "{late}");
    drop(tab2);
    server.stop().await;
}

#[tokio::test]
async fn a_pipeline_frame_runs_its_steps_and_bad_steps_are_refused() {
    let server = start(|_| {}).await;
    let mut ws = server.connect("rita").await;
    send(
        &mut ws,
        json!({"type":"pipeline","thread_id":"t","text":"think:first",
               "steps":[{"agent":"script"},{"agent":"script","input":"fail:second"},
                        {"agent":"script","input":"answer:third","timeout_ms":5000}],
               "continue_on_error":true}),
    )
    .await;
    let run = loop {
        let f = next_json(&mut ws).await;
        if f["type"] == "run_accepted" {
            break f["run_id"].as_str().unwrap().to_owned();
        }
        assert_ne!(f["type"], "error", "{f}");
    };
    let events = until_completed(&mut ws, &run).await;
    let progress: Vec<String> = events
        .iter()
        .filter(|e| e["event"]["type"] == "progress_update")
        .map(|e| format!("{}/{}", e["event"]["step"], e["event"]["of"]))
        .collect();
    assert_eq!(progress, ["1/3", "2/3", "3/3"]);
    let last = &events.last().unwrap()["event"];
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(last["result"], "third");
    // Sub-agent events carry their own request id, announced by sub_agent_started.
    let subs: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"]["type"] == "sub_agent_started")
        .collect();
    assert_eq!(subs.len(), 3);
    let first_sub = subs[0]["event"]["request_id"].clone();
    assert!(events
        .iter()
        .any(|e| e["request_id"] == first_sub && e["event"]["type"] == "agent_thinking"));

    // A step naming an agent the gateway does not serve is refused before anything runs.
    send(
        &mut ws,
        json!({"type":"pipeline","thread_id":"t","text":"x","steps":[{"agent":"nobody"}]}),
    )
    .await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("nobody"),
        "{refused}"
    );
    send(
        &mut ws,
        json!({"type":"user_message","thread_id":"t","text":"x","agent":"nobody"}),
    )
    .await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    server.stop().await;
}

/// On the connection that sent a message, `run_accepted` comes before any event of its run (the
/// gateway holds event delivery while it starts the run), so a client can key everything on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_accepted_precedes_the_runs_events_on_the_sending_connection() {
    let server = start(|c| {
        c.messages_per_minute = 100;
        let engine = EngineConfig::builder().max_queued_runs(64).build().unwrap();
        c.factory = FactoryConfig::builder().engine(engine).build().unwrap();
    })
    .await;
    let mut ws = server.connect("sam").await;
    for i in 0..40 {
        send(
            &mut ws,
            json!({"type":"user_message","thread_id":format!("t{i}"),"text":"think:quick","multitask":"parallel"}),
        )
        .await;
    }
    let mut accepted = std::collections::HashSet::new();
    let mut ended = 0;
    while ended < 40 {
        let f = next_json(&mut ws).await;
        match f["type"].as_str() {
            Some("run_accepted") => {
                accepted.insert(f["run_id"].as_str().unwrap().to_owned());
            }
            Some("event") => {
                let run = f["run_id"].as_str().unwrap();
                assert!(accepted.contains(run), "event before run_accepted: {f}");
                ended += usize::from(f["event"]["type"] == "agent_completed");
            }
            _ => panic!("unexpected {f}"),
        }
    }
    server.stop().await;
}
