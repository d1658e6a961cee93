//! The HTTP API of the real binary with a real HTTP client (`reqwest`): every route, paging,
//! another user's ids answering 404, deletion, Server-Sent Events resumed with `Last-Event-ID`
//! mid-run and after a restart, a run started over HTTP seen live by its user's socket and by
//! nobody else's. Every JSON response is checked against the served OpenAPI document.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

mod common;

use common::sse::{read_to_end, Sse};
use common::{connect, next, start_gateway, SECRET};

fn token(user: &str) -> String {
    engine_gateway::TokenKeys::new(SECRET.as_bytes())
        .issue(&engine_core::UserId::new(user).unwrap(), 600)
        .unwrap()
}

/// A client of one user on one gateway, checking every answer against `/openapi.json`.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    doc: Value,
}

impl Api {
    async fn new(addr: &str, user: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let base = format!("http://{addr}");
        let doc: Value = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
        Self {
            http,
            base,
            token: token(user),
            doc,
        }
    }

    /// Sends `method path` (with `body` as JSON when given) and checks the answer against the
    /// document's response for `template` and its status; returns (status, JSON body or Null).
    async fn call(
        &self,
        method: Method,
        path: &str,
        template: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
        };
        self.conforms(&method, template, status, &value);
        (status, value)
    }

    async fn get(&self, path: &str, template: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, template, None).await
    }

    /// `value` is what the document says `method template` answers with `status`.
    fn conforms(&self, method: &Method, template: &str, status: StatusCode, value: &Value) {
        let op = &self.doc["paths"][template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let response = &op["responses"][status.as_str()];
        assert!(
            response.is_object(),
            "{method} {template} answered {status}, which the document does not list: {value}"
        );
        let Some(schema) = response["content"]["application/json"].get("schema") else {
            assert!(
                value.is_null(),
                "{method} {template} {status}: an undocumented body {value}"
            );
            return;
        };
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::validator_for(&root).expect("the document's schema compiles");
        if let Err(e) = validator.validate(value) {
            panic!("{method} {template} {status}: {e}\n{value}");
        }
    }

    async fn start(&self, thread: &str, body: Value) -> Value {
        let (status, run) = self
            .call(
                Method::POST,
                &format!("/v1/threads/{thread}/runs"),
                "/v1/threads/{thread_id}/runs",
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{run}");
        run
    }

    /// Waits (20 s at most) until the run's stored record has ended; returns it.
    async fn ended(&self, run: &str) -> Value {
        for _ in 0..400 {
            let (status, record) = self
                .get(&format!("/v1/runs/{run}"), "/v1/runs/{run_id}")
                .await;
            if status == StatusCode::OK && record["status"] != "running" {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {run} did not end within 20 s");
    }

    /// Opens the run's event stream after `last_event_id`.
    async fn stream(&self, run: &str, last_event_id: Option<u64>) -> Sse {
        let mut request = self
            .http
            .get(format!("{}/v1/runs/{run}/events", self.base))
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse::new(response)
    }
}

/// A long answer of the demo assistant (streamed a word at a time, 15 ms apart).
fn long_message() -> Value {
    let words: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
    json!({ "text": words.join(" ") })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_the_caller_and_another_users_ids_are_not_found() {
    let gw = start_gateway(&[]).await;
    let alice = Api::new(&gw.addr, "alice").await;
    let bob = Api::new(&gw.addr, "bob").await;

    // The conformance check itself refuses a body the document does not allow.
    let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        alice.conforms(
            &Method::GET,
            "/v1/threads",
            StatusCode::OK,
            &json!({"threads": 5}),
        );
    }));
    assert!(wrong.is_err(), "a wrong body must fail the check");

    // Start, then read back: record, thread, runs, events.
    let accepted = alice.start("t1", json!({"text": "what is 6 * 7?"})).await;
    assert_eq!(accepted["status"], "running");
    assert_eq!(accepted["thread_id"], "t1");
    assert_eq!(accepted["agent"], "assistant");
    let run = accepted["run_id"].as_str().unwrap().to_owned();
    let record = alice.ended(&run).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert!(
        record["result"].as_str().unwrap().contains("42"),
        "{record}"
    );

    let (status, thread) = alice.get("/v1/threads/t1", "/v1/threads/{thread_id}").await;
    assert_eq!(status, StatusCode::OK);
    let roles: Vec<&str> = thread["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant"]);
    assert_eq!(thread["messages"][0]["content"], "what is 6 * 7?");
    let (status, runs) = alice
        .get("/v1/threads/t1/runs", "/v1/threads/{thread_id}/runs")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(runs["runs"][0]["run_id"], run.as_str());

    let events_path = format!("/v1/runs/{run}/events");
    let (status, page) = alice.get(&events_path, "/v1/runs/{run_id}/events").await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(page["events"][0]["event"]["type"], "agent_started");
    assert_eq!(
        page["events"].as_array().unwrap().last().unwrap()["event"]["type"],
        "agent_completed"
    );
    let (_, tail) = alice
        .get(
            &format!("{events_path}?after_seq=2&limit=1"),
            "/v1/runs/{run_id}/events",
        )
        .await;
    assert_eq!(tail["events"][0]["seq"], 3);
    assert_eq!(tail["more"], true);

    // Bob: every id of alice's is not found, exactly as an id that does not exist.
    for (method, path, template, body) in [
        (
            Method::GET,
            "/v1/threads/t1".to_owned(),
            "/v1/threads/{thread_id}",
            None,
        ),
        (
            Method::GET,
            "/v1/threads/t1/runs".to_owned(),
            "/v1/threads/{thread_id}/runs",
            None,
        ),
        (
            Method::DELETE,
            "/v1/threads/t1".to_owned(),
            "/v1/threads/{thread_id}",
            None,
        ),
        (
            Method::GET,
            format!("/v1/runs/{run}"),
            "/v1/runs/{run_id}",
            None,
        ),
        (
            Method::GET,
            events_path.clone(),
            "/v1/runs/{run_id}/events",
            None,
        ),
        (
            Method::POST,
            format!("/v1/runs/{run}/cancel"),
            "/v1/runs/{run_id}/cancel",
            None,
        ),
        (
            Method::POST,
            format!("/v1/runs/{run}/approvals/1"),
            "/v1/runs/{run_id}/approvals/{call_id}",
            Some(json!({"decision": "approve"})),
        ),
    ] {
        let (status, body) = bob.call(method.clone(), &path, template, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert!(!body.to_string().contains("6 * 7"), "{body}");
    }
    let (status, listed) = bob.get("/v1/threads", "/v1/threads").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["threads"], json!([]));
    // Bob's own thread of the same id: each sees only their own messages under `t1`.
    let bobs = bob.start("t1", json!({"text": "bob's own question"})).await;
    bob.ended(bobs["run_id"].as_str().unwrap()).await;
    let (_, bob_t1) = bob.get("/v1/threads/t1", "/v1/threads/{thread_id}").await;
    assert_eq!(bob_t1["messages"][0]["content"], "bob's own question");
    assert!(!bob_t1.to_string().contains("6 * 7"), "{bob_t1}");
    let (_, alice_t1) = alice.get("/v1/threads/t1", "/v1/threads/{thread_id}").await;
    assert!(!alice_t1.to_string().contains("bob's own"), "{alice_t1}");
    assert_eq!(alice_t1["messages"].as_array().unwrap().len(), 2);
    // Alice's thread is intact after bob's delete.
    let (status, _) = alice.get("/v1/threads/t1", "/v1/threads/{thread_id}").await;
    assert_eq!(status, StatusCode::OK);

    // No token, a bad token, bad parameters: one JSON error shape.
    let anonymous = reqwest::get(format!("http://{}/v1/threads", gw.addr))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let forged = Api {
        token: "not.a.jwt".into(),
        ..Api::new(&gw.addr, "mallory").await
    };
    let (status, body) = forged.get("/v1/threads", "/v1/threads").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = alice.get("/v1/threads?limit=0", "/v1/threads").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (status, body) = alice
        .call(
            Method::POST,
            "/v1/threads/t1/runs",
            "/v1/threads/{thread_id}/runs",
            Some(json!({"txt": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = alice
        .call(
            Method::POST,
            "/v1/threads/t1/runs",
            "/v1/threads/{thread_id}/runs",
            Some(json!({"text": "hi", "agent": "nobody"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Approve and cancel, over HTTP: a tool call waits for approval, then completes; a long
    // run is cancelled.
    let saving = alice
        .start("t-note", json!({"text": "please remember: what is 6 * 7?"}))
        .await;
    let saving = saving["run_id"].as_str().unwrap().to_owned();
    let mut sse = alice.stream(&saving, None).await;
    let call_id = loop {
        let f = sse.next().await.expect("events until the approval request");
        if f.data["event"]["type"] == "approval_requested" {
            break f.data["event"]["call_id"].as_u64().unwrap();
        }
    };
    let (status, body) = alice
        .call(
            Method::POST,
            &format!("/v1/runs/{saving}/approvals/{call_id}"),
            "/v1/runs/{run_id}/approvals/{call_id}",
            Some(json!({"decision": "approve"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let record = alice.ended(&saving).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert!(
        record["result"].as_str().unwrap().contains("noted"),
        "{record}"
    );
    let long = alice
        .start("t-long", json!({"text": "600000", "agent": "waiter"}))
        .await;
    let long = long["run_id"].as_str().unwrap().to_owned();
    let (status, body) = alice
        .call(
            Method::POST,
            &format!("/v1/runs/{long}/cancel"),
            "/v1/runs/{run_id}/cancel",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(alice.ended(&long).await["status"], "cancelled");

    // Deletion: gone whole, then 404; a run still going is cancelled first.
    let (status, _) = alice
        .call(
            Method::DELETE,
            "/v1/threads/t1",
            "/v1/threads/{thread_id}",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (path, template) in [
        ("/v1/threads/t1".to_owned(), "/v1/threads/{thread_id}"),
        (
            "/v1/threads/t1/runs".to_owned(),
            "/v1/threads/{thread_id}/runs",
        ),
        (format!("/v1/runs/{run}"), "/v1/runs/{run_id}"),
        (events_path.clone(), "/v1/runs/{run_id}/events"),
    ] {
        let (status, body) = alice.get(&path, template).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _) = alice
        .call(
            Method::DELETE,
            "/v1/threads/t1",
            "/v1/threads/{thread_id}",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nor can it be streamed or resumed on a socket; bob's thread of the same id stays.
    let response = alice
        .http
        .get(format!("{}{events_path}", alice.base))
        .bearer_auth(&alice.token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let mut ws = connect(&gw.addr, "alice").await;
    common::send(&mut ws, json!({"type":"resume","run_id":run,"after_seq":0})).await;
    let answer = next(&mut ws).await;
    assert_eq!(answer["code"], "unknown_run", "{answer}");
    let (status, _) = bob.get("/v1/threads/t1", "/v1/threads/{thread_id}").await;
    assert_eq!(status, StatusCode::OK);
    let waiting = alice
        .start("tw", json!({"text": "600000", "agent": "waiter"}))
        .await;
    let waiting = waiting["run_id"].as_str().unwrap().to_owned();
    for _ in 0..200 {
        let (status, _) = alice
            .get(&format!("/v1/runs/{waiting}"), "/v1/runs/{run_id}")
            .await;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, body) = alice
        .call(
            Method::DELETE,
            "/v1/threads/tw",
            "/v1/threads/{thread_id}",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = alice
        .get(&format!("/v1/runs/{waiting}"), "/v1/runs/{run_id}")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_page_most_recent_first_through_the_cursor() {
    let gw = start_gateway(&[]).await;
    let alice = Api::new(&gw.addr, "alice").await;
    let mut runs = Vec::new();
    for i in 0..5 {
        let run = alice
            .start(&format!("p{i}"), json!({"text": format!("hello {i}")}))
            .await;
        runs.push(run["run_id"].as_str().unwrap().to_owned());
        alice.ended(&runs[i]).await; // one after the other: distinct update times
    }
    let mut seen = Vec::new();
    let mut path = "/v1/threads?limit=2".to_owned();
    for _ in 0..10 {
        let (status, page) = alice.get(&path, "/v1/threads").await;
        assert_eq!(status, StatusCode::OK);
        for t in page["threads"].as_array().unwrap() {
            assert_eq!(t["run_count"], 1);
            seen.push(t["thread_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/threads?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["p4", "p3", "p2", "p1", "p0"]);
}

fn answer_of(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "answer_delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_resumes_with_last_event_id_mid_run_and_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let mut gw = start_gateway(&["--data-dir", &dir]).await;
    let alice = Api::new(&gw.addr, "alice").await;
    let run = alice.start("t-sse", long_message()).await;
    let run = run["run_id"].as_str().unwrap().to_owned();

    // Three events, then the client goes away mid-run.
    let mut sse = alice.stream(&run, None).await;
    let mut first = Vec::new();
    for seq in 1..=3 {
        let f = sse.next().await.expect("an event");
        assert_eq!(f.id, Some(seq));
        first.push(f.data["event"].clone());
    }
    drop(sse);
    let mut sse = alice.stream(&run, Some(3)).await;
    let rest = read_to_end(&mut sse, 3).await;
    let mut all = first;
    all.extend(rest);
    let record = alice.ended(&run).await;
    assert_eq!(record["status"], "completed");
    assert_eq!(
        answer_of(&all),
        record["result"].as_str().unwrap(),
        "deltas add up to the result"
    );
    let total = all.len() as u64;

    // The gateway restarts: the stream resumes from the store.
    common::terminate(&gw.child);
    let _ = tokio::time::timeout(Duration::from_secs(30), gw.child.wait()).await;
    let gw = start_gateway(&["--data-dir", &dir]).await;
    let alice = Api::new(&gw.addr, "alice").await;
    let mut sse = alice.stream(&run, Some(2)).await;
    let after_restart = read_to_end(&mut sse, 2).await;
    assert_eq!(after_restart.len() as u64, total - 2);
    assert_eq!(after_restart, all[2..]);
    // Resumed after the terminal event: the stream ends at once.
    let mut sse = alice.stream(&run, Some(total)).await;
    assert!(sse.next().await.is_none());
    // Another user's run id: 404 before any stream.
    let bob = Api::new(&gw.addr, "bob").await;
    let response = bob
        .http
        .get(format!("{}/v1/runs/{run}/events", bob.base))
        .bearer_auth(&bob.token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_over_http_streams_to_its_caller_and_its_users_sockets_only() {
    let gw = start_gateway(&[]).await;
    let alice = Api::new(&gw.addr, "alice").await;
    let mut alice_ws = connect(&gw.addr, "alice").await;
    let mut bob_ws = connect(&gw.addr, "bob").await;

    let response = alice
        .http
        .post(format!("{}/v1/threads/t-live/runs?stream=true", alice.base))
        .bearer_auth(&alice.token)
        .json(&long_message())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut sse = Sse::new(response);
    let streamed = read_to_end(&mut sse, 0).await;
    let run_id = {
        let record_events = alice
            .get("/v1/threads/t-live/runs", "/v1/threads/{thread_id}/runs")
            .await
            .1;
        record_events["runs"][0]["run_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Alice's socket saw every event of the run, in order.
    let mut on_socket = Vec::new();
    while on_socket.len() < streamed.len() {
        let f = next(&mut alice_ws).await;
        if f["type"] == "event" {
            assert_eq!(f["run_id"], run_id.as_str());
            on_socket.push(f["event"].clone());
        }
    }
    assert_eq!(on_socket, streamed);

    // Bob's socket saw none of it: the first event frame he gets is his own run's.
    common::send(
        &mut bob_ws,
        json!({"type":"user_message","thread_id":"b","text":"hello"}),
    )
    .await;
    loop {
        let f = next(&mut bob_ws).await;
        assert_ne!(f["user_id"], "alice", "bob received {f}");
        if f["type"] == "event" {
            assert_eq!(f["user_id"], "bob");
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Webhooks, against a real local receiver; signatures checked with the `standardwebhooks`
// crate (an implementation of the scheme independent of the gateway's).

const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
    answered: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_owned()
    }
}

/// How the receiver answers a delivery, given the run's input and how many attempts of that
/// delivery it saw before: a status, after a delay.
type Script = fn(&str, usize) -> (u16, Duration);

#[derive(Clone)]
struct Receiver {
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    script: Script,
}

impl Receiver {
    /// Serves on `listener` until the test ends.
    fn serve(listener: tokio::net::TcpListener, script: Script) -> Self {
        let me = Self {
            got: Default::default(),
            script,
        };
        let state = me.clone();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State(r): axum::extract::State<Receiver>,
                     headers: axum::http::HeaderMap,
                     body: bytes::Bytes| async move {
                        let payload: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let input = payload["run"]["input"].as_str().unwrap_or("").to_owned();
                        let id = headers["webhook-id"].to_str().unwrap_or("").to_owned();
                        let before = r
                            .got
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|g| g.id() == id)
                            .count();
                        let (status, delay) = (r.script)(&input, before);
                        r.got.lock().unwrap().push(Received {
                            headers,
                            body,
                            answered: status,
                        });
                        tokio::time::sleep(delay).await;
                        axum::http::StatusCode::from_u16(status).unwrap()
                    },
                ),
            )
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        me
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (30 s at most) until `done` holds for what was received.
    async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        for _ in 0..600 {
            let got = self.got();
            if done(&got) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not within 30 s; got {:?}", self.got());
    }
}

fn delivered(got: &[Received]) -> Vec<&Received> {
    got.iter()
        .filter(|g| (200..300).contains(&g.answered))
        .collect()
}

/// Every request verifies with the secret and with no other.
fn verify_all(got: &[Received]) {
    let ours = standardwebhooks::Webhook::new(HOOK_SECRET).unwrap();
    let other =
        standardwebhooks::Webhook::new("whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBvZiB0aGUgdGVzdA==")
            .unwrap();
    for g in got {
        ours.verify(&g.body, &g.headers)
            .unwrap_or_else(|e| panic!("signature does not verify: {e:?}: {g:?}"));
        assert!(other.verify(&g.body, &g.headers).is_err());
    }
}

/// `engine_gateway_webhook_deliveries_total{result=..}` of the gateway at `addr`.
async fn hook_metric(addr: &str, result: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let needle = format!("engine_gateway_webhook_deliveries_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn hook_gateway(url: &str, extra: &[&str]) -> common::Running {
    let mut args = vec!["--webhook-url", url, "--webhook-secret", HOOK_SECRET];
    args.extend_from_slice(extra);
    start_gateway(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ended_run_is_posted_signed_and_retried_until_delivered_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    // The first two attempts of each delivery fail with 500.
    let receiver = Receiver::serve(listener, |_, before| {
        (if before < 2 { 500 } else { 204 }, Duration::ZERO)
    });
    let gw = hook_gateway(&url, &["--webhook-retry-ms", "50"]).await;
    let mut runs = Vec::new();
    for (user, text) in [
        ("alice", "hello"),
        ("alice", "what is 2 + 2?"),
        ("bob", "hi"),
    ] {
        let api = Api::new(&gw.addr, user).await;
        let run = api
            .start(&format!("t-{user}"), json!({ "text": text }))
            .await;
        runs.push((user, run["run_id"].as_str().unwrap().to_owned()));
    }
    let got = receiver
        .until("three deliveries", |g| delivered(g).len() >= 3)
        .await;
    verify_all(&got);
    let ok = delivered(&got);
    assert_eq!(ok.len(), 3, "one delivery per run");
    for (user, run) in &runs {
        let mine: Vec<&&Received> = ok
            .iter()
            .filter(|g| g.json()["run"]["run_id"] == run.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "run {run}");
        let payload = mine[0].json();
        assert_eq!(payload["type"], "run.ended");
        assert_eq!(payload["user_id"], *user, "the run's own user: {payload}");
        assert_eq!(payload["run"]["status"], "completed");
        // Its failed attempts carried the same id.
        let id = mine[0].id();
        assert_eq!(got.iter().filter(|g| g.id() == id).count(), 3);
    }
    assert_eq!(hook_metric(&gw.addr, "failed").await, 6);
    assert_eq!(hook_metric(&gw.addr, "delivered").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_gone_and_failing_receivers_are_handled_as_documented() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = Receiver::serve(listener, |input, before| match input {
        // Slower than the attempt timeout the first time.
        "slow" if before == 0 => (200, Duration::from_secs(3)),
        "slow" => (200, Duration::ZERO),
        "gone" => (410, Duration::ZERO),
        _ => (500, Duration::ZERO),
    });
    let gw = hook_gateway(
        &url,
        &[
            "--webhook-retry-ms",
            "100",
            "--webhook-timeout-ms",
            "300",
            "--webhook-give-up-secs",
            "2",
        ],
    )
    .await;
    let alice = Api::new(&gw.addr, "alice").await;
    for (thread, text) in [("a", "slow"), ("b", "gone"), ("c", "fail")] {
        alice.start(thread, json!({ "text": text })).await;
    }
    let input = |g: &Received| g.json()["run"]["input"].as_str().unwrap().to_owned();
    receiver
        .until("the slow receiver's delivery", |g| {
            g.iter().filter(|r| input(r) == "slow").count() >= 2
        })
        .await;
    for _ in 0..200 {
        if hook_metric(&gw.addr, "given_up").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        hook_metric(&gw.addr, "given_up").await,
        1,
        "the failing delivery is given up"
    );
    let attempts_at_give_up = receiver.got().iter().filter(|r| input(r) == "fail").count();
    assert!(
        attempts_at_give_up >= 3,
        "retried until given up: {attempts_at_give_up}"
    );
    // Nothing more comes after: not for the given-up delivery, not for the 410.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = receiver.got();
    verify_all(&got);
    assert_eq!(
        got.iter().filter(|r| input(r) == "fail").count(),
        attempts_at_give_up
    );
    assert_eq!(
        got.iter().filter(|r| input(r) == "gone").count(),
        1,
        "410: never retried"
    );
    assert_eq!(hook_metric(&gw.addr, "gone").await, 1);
    let slow: Vec<&Received> = got.iter().filter(|r| input(r) == "slow").collect();
    assert_eq!(slow.len(), 2, "timed out once, then delivered");
    assert_eq!(slow[0].id(), slow[1].id());
    assert_eq!(hook_metric(&gw.addr, "delivered").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_a_restart_of_the_gateway() {
    // A port with nobody on it yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let mut gw = hook_gateway(&url, &["--data-dir", &dir, "--webhook-retry-ms", "100"]).await;
    let alice = Api::new(&gw.addr, "alice").await;
    let mut runs = Vec::new();
    for thread in ["r1", "r2"] {
        let run = alice.start(thread, json!({ "text": "hello" })).await;
        runs.push(run["run_id"].as_str().unwrap().to_owned());
    }
    for _ in 0..400 {
        if hook_metric(&gw.addr, "failed").await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        hook_metric(&gw.addr, "failed").await >= 2,
        "both attempted and failed"
    );
    common::terminate(&gw.child);
    let _ = tokio::time::timeout(Duration::from_secs(30), gw.child.wait()).await;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let receiver = Receiver::serve(listener, |_, _| (200, Duration::ZERO));
    let _gw = hook_gateway(&url, &["--data-dir", &dir, "--webhook-retry-ms", "100"]).await;
    let got = receiver
        .until("the pending deliveries", |g| delivered(g).len() >= 2)
        .await;
    verify_all(&got);
    let mut delivered_runs: Vec<String> = delivered(&got)
        .iter()
        .map(|g| g.json()["run"]["run_id"].as_str().unwrap().to_owned())
        .collect();
    delivered_runs.sort();
    runs.sort();
    assert_eq!(delivered_runs, runs);
}
