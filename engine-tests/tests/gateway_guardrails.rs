//! The demo's guardrails and handoff over a real WebSocket: the frames of an input trip, a
//! handoff whose answer an output guardrail holds back, and a handoff whose answer it stops.

use std::time::Duration;

use engine_core::UserId;
use engine_gateway::demo::demo_registry;
use engine_gateway::{Gateway, GatewayConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SECRET: &[u8] = b"test-secret-for-the-guardrail-suite-32";

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Sends `text` to `agent`; returns the events of its run (through the terminal event).
async fn ask(ws: &mut Ws, agent: &str, text: &str) -> Vec<Value> {
    let frame = json!({"type":"user_message","thread_id":"t","agent":agent,"text":text});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let run = loop {
        let f = next_json(ws).await;
        assert_ne!(f["type"], "error", "{f}");
        if f["type"] == "run_accepted" {
            break f["run_id"].clone();
        }
    };
    let mut events = Vec::new();
    loop {
        let f = next_json(ws).await;
        if f["type"] == "event" && f["run_id"] == run {
            let event = f["event"].clone();
            let done = event["type"] == "agent_completed";
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn the_demo_shows_a_trip_and_a_handoff_as_frames() {
    let mut config = GatewayConfig::with_secret(SECRET.to_vec());
    config.development = true;
    let gateway = Gateway::new(config, demo_registry()).expect("gateway");
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
    let token = gateway
        .keys()
        .issue(&UserId::new("alice").unwrap(), 600)
        .unwrap();
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");

    // 1. A message asking for a secret: refused before any agent runs.
    let events = ask(&mut ws, "frontdesk", "what is my password?").await;
    assert_eq!(
        kinds(&events),
        ["agent_started", "guardrail_tripped", "agent_completed"]
    );
    assert_eq!(
        events[1],
        json!({"type":"guardrail_tripped","guardrail":"no_secrets","kind":"input",
               "reason":"the message asks for a secret (password)","action":"end_run"})
    );
    assert_eq!(events[2]["status"], "guardrail_tripped");
    assert_eq!(events[2]["success"], false);
    assert_eq!(events[2]["agent_name"], "frontdesk");

    // 2. A billing question: frontdesk's words are retracted by the handoff to billing, whose
    //    answer is held until it passed, then shown at once in one delta; the terminal event
    //    names billing.
    let events = ask(&mut ws, "frontdesk", "how much was my last invoice?").await;
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "answer_delta",
            "answer_retracted",
            "handoff",
            "agent_thinking",
            "answer_delta",
            "agent_completed"
        ]
    );
    assert_eq!(
        events[2],
        json!({"type":"answer_retracted","cause":"handoff"})
    );
    assert_eq!(
        events[3],
        json!({"type":"handoff","from":"frontdesk","to":"billing","reason":"a billing question"})
    );
    let last = &events[6];
    assert_eq!(last["status"], "completed");
    assert_eq!(last["agent_name"], "billing");
    assert_eq!(events[5]["delta"], last["result"]);

    // 3. The card on file: billing's answer shows the number, its guardrail stops it, and no
    //    text of it ever reached the socket.
    let events = ask(&mut ws, "frontdesk", "which card is on file?").await;
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "answer_delta",
            "answer_retracted",
            "handoff",
            "agent_thinking",
            "guardrail_tripped",
            "agent_completed"
        ]
    );
    assert_eq!(events[5]["guardrail"], "no_card_numbers");
    assert_eq!(events[5]["kind"], "output");
    assert_eq!(events[6]["status"], "guardrail_tripped");
    assert!(events[6].get("result").is_none());
    assert!(!events.iter().any(|e| e.to_string().contains("4242")));

    // 4. Anything else: handed to the assistant.
    let events = ask(&mut ws, "frontdesk", "what is 6 * 7?").await;
    let last = events.last().unwrap();
    assert_eq!(last["agent_name"], "assistant");
    assert_eq!(last["status"], "completed");

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
}
