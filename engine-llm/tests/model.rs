//! The model agent against a real OpenAI-compatible server: `llmposter` (a third-party mock
//! server, started here on loopback with scripted fixtures), through the real engine and
//! factory. Each test reads the user's events as a client would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::{
    async_trait, AgentEvent, AgentRegistry, ApprovalDecision, BoxError, EventEnvelope, RunStatus,
    Tool, ToolContext, ToolStatus, UserExecutionContext, UserId,
};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, Subscription};
use engine_llm::{ApiKey, InMemoryHistory, LlmAgentKit, LlmConfig};
use llmposter::fixture::{FailureConfig, ToolCall};
use llmposter::{Fixture, MockServer, ServerBuilder};
use serde_json::{json, Value};

/// `a + b`.
struct Add;

#[async_trait]
impl Tool for Add {
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        let a = args["a"].as_f64().ok_or("`a` must be a number")?;
        let b = args["b"].as_f64().ok_or("`b` must be a number")?;
        Ok(json!(a + b))
    }
    fn description(&self) -> Option<&str> {
        Some("Adds two numbers.")
    }
    fn parameters(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"]
        }))
    }
}

/// Keeps nothing; needs the user's approval.
struct SaveNote;

#[async_trait]
impl Tool for SaveNote {
    async fn call(&self, _args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        Ok(json!({"saved": true}))
    }
}

struct Setup {
    server: MockServer,
    factory: ExecutionEngineFactory,
}

fn config(server: &MockServer) -> LlmConfig {
    LlmConfig::new(format!("{}/v1", server.url()), "mock-model")
        .with_api_key(ApiKey::new("sk-test-secret-0042"))
        .with_system_prompt("You are a test.")
        .with_retries(2, Duration::from_millis(20))
        .with_idle_timeout(Duration::from_secs(5))
}

async fn setup(fixtures: Vec<Fixture>, tune: impl FnOnce(LlmConfig) -> LlmConfig) -> Setup {
    setup_with(fixtures, tune, engine_core::EngineConfig::default()).await
}

async fn setup_with(
    fixtures: Vec<Fixture>,
    tune: impl FnOnce(LlmConfig) -> LlmConfig,
    engine: engine_core::EngineConfig,
) -> Setup {
    let server = ServerBuilder::new()
        .fixtures(fixtures)
        .build()
        .await
        .expect("llmposter starts");
    let kit =
        LlmAgentKit::with_history(tune(config(&server)), Arc::new(InMemoryHistory::default()))
            .unwrap();
    let registry = AgentRegistry::builder()
        .agent("assistant", move || kit.agent())
        .tool("add", Add)
        .tool_requiring_approval("save_note", SaveNote)
        .build()
        .unwrap();
    let factory = ExecutionEngineFactory::new(
        FactoryConfig::builder()
            .max_engines_per_user(2)
            .engine(engine)
            .build()
            .unwrap(),
        registry,
    )
    .unwrap();
    Setup { server, factory }
}

/// The model calls `calls` once (for a message containing `matching`), then answers `answer`.
fn calls_then_answer(matching: &str, calls: Vec<ToolCall>, answer: &str) -> Vec<Fixture> {
    vec![
        Fixture::new()
            .match_user_message(matching)
            .respond_with_tool_calls(calls)
            .with_scenario(matching, Some(""), Some("called")),
        Fixture::new()
            .match_user_message(matching)
            .respond_with_content(answer)
            .with_scenario(matching, Some("called"), None),
    ]
}

fn call(name: &str, arguments: Value) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments,
    }
}

/// Runs `text` for `user` on `thread` and collects the run's events until its terminal one.
async fn run(s: &Setup, user: &str, thread: &str, text: &str) -> Vec<EventEnvelope> {
    run_with(s, user, thread, text, |_, _| None).await
}

/// As [`run`], calling `on` for every event (to approve, or cancel).
async fn run_with(
    s: &Setup,
    user: &str,
    thread: &str,
    text: &str,
    mut on: impl FnMut(&EventEnvelope, &mut Subscription) -> Option<Action>,
) -> Vec<EventEnvelope> {
    let ctx = UserExecutionContext::new(user, thread, format!("run-{}", uuid())).unwrap();
    let mut sub = s.factory.subscribe(ctx.user_id());
    let engine = s.factory.create_for_user(&ctx).unwrap();
    let handle = engine.spawn(&ctx, "assistant", text).unwrap();
    let mut seen = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), sub.recv())
            .await
            .expect("events keep coming")
            .expect("open");
        match on(&e, &mut sub) {
            Some(Action::Approve(call, decision)) => {
                engine.approve(ctx.run_id(), call, decision).unwrap();
            }
            Some(Action::Cancel) => handle.cancel(),
            None => {}
        }
        let end = e.event.is_terminal();
        seen.push(e);
        if end {
            break;
        }
    }
    engine.close().await;
    seen
}

enum Action {
    Approve(u32, ApprovalDecision),
    Cancel,
}

fn uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{:06}", N.fetch_add(1, Ordering::Relaxed))
}

fn deltas(events: &[EventEnvelope]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::AnswerDelta { delta } => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

fn ending(events: &[EventEnvelope]) -> (RunStatus, Option<String>, Option<String>) {
    match &events.last().unwrap().event {
        AgentEvent::AgentCompleted {
            status,
            result,
            error,
            ..
        } => (*status, result.clone(), error.clone()),
        other => panic!("not terminal: {other:?}"),
    }
}

fn tool_results(events: &[EventEnvelope]) -> Vec<(String, ToolStatus, Option<Value>)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::ToolCompleted {
                tool_name,
                status,
                result,
                ..
            } => Some((tool_name.to_string(), *status, result.clone())),
            _ => None,
        })
        .collect()
}

fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .get_requests()
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap_or(Value::Null))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_arrives_in_deltas_that_add_up_to_the_result() {
    let answer = "The answer is forty-two, as every towel-carrying hitchhiker knows.";
    let s = setup(
        vec![Fixture::new()
            .match_user_message("meaning")
            .respond_with_content(answer)
            .with_streaming(Some(2), Some(4))],
        |c| c,
    )
    .await;
    let events = run(&s, "alice", "thread-1", "what is the meaning of it all?").await;
    let pieces = events
        .iter()
        .filter(|e| matches!(e.event, AgentEvent::AnswerDelta { .. }))
        .count();
    assert!(pieces >= answer.len() / 4, "streamed in pieces: {pieces}");
    assert_eq!(deltas(&events), answer);
    assert_eq!(
        ending(&events),
        (RunStatus::Completed, Some(answer.to_owned()), None)
    );
    // What the server got: the system prompt, the message, streaming, and the tools described.
    let body = &bodies(&s.server)[0];
    assert_eq!(body["stream"], true);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You are a test."})
    );
    assert_eq!(
        body["messages"][1]["content"],
        "what is the meaning of it all?"
    );
    let add = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "add")
        .unwrap();
    assert_eq!(add["function"]["description"], "Adds two numbers.");
    assert_eq!(add["function"]["parameters"]["required"], json!(["a", "b"]));
    // The key went to the server and nowhere else.
    let shown = format!("{events:?}");
    assert!(!shown.contains("sk-test-secret-0042"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tool_rounds_run_through_the_engine_and_go_back_to_the_model() {
    let add = |a: i64, b: i64| call("add", json!({"a": a, "b": b}));
    let s = setup(
        vec![
            Fixture::new()
                .match_user_message("sum")
                .respond_with_tool_calls(vec![add(2, 3)])
                .with_scenario("rounds", Some(""), Some("one")),
            Fixture::new()
                .match_user_message("sum")
                .respond_with_tool_calls(vec![add(5, 5)])
                .with_scenario("rounds", Some("one"), Some("two")),
            Fixture::new()
                .match_user_message("sum")
                .respond_with_content("Ten.")
                .with_scenario("rounds", Some("two"), Some("done")),
        ],
        |c| c,
    )
    .await;
    let events = run(&s, "bob", "thread-1", "sum things").await;
    assert_eq!(ending(&events).0, RunStatus::Completed, "{events:#?}");
    assert_eq!(deltas(&events), "Ten.");
    let results = tool_results(&events);
    assert_eq!(
        results,
        vec![
            ("add".into(), ToolStatus::Success, Some(json!(5.0))),
            ("add".into(), ToolStatus::Success, Some(json!(10.0))),
        ]
    );
    let sent = bodies(&s.server);
    assert_eq!(sent.len(), 3);
    // Round two carries round one's call and its result, matched by id.
    let msgs = sent[1]["messages"].as_array().unwrap();
    let asked = &msgs[msgs.len() - 2];
    let answered = &msgs[msgs.len() - 1];
    assert_eq!(asked["role"], "assistant");
    assert_eq!(answered["role"], "tool");
    assert_eq!(answered["tool_call_id"], asked["tool_calls"][0]["id"]);
    assert_eq!(answered["content"], "5.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tool_calls_of_one_turn_all_run_and_all_answer() {
    let s = setup(
        calls_then_answer(
            "both",
            vec![
                call("add", json!({"a": 1, "b": 2})),
                call("add", json!({"a": 3, "b": 4})),
            ],
            "3 and 7.",
        ),
        |c| c,
    )
    .await;
    let events = run(&s, "carol", "thread-1", "do both").await;
    assert_eq!(ending(&events).0, RunStatus::Completed);
    let results: Vec<Option<Value>> = tool_results(&events).into_iter().map(|r| r.2).collect();
    assert_eq!(results, vec![Some(json!(3.0)), Some(json!(7.0))]);
    let sent = bodies(&s.server);
    let tool_msgs: Vec<&Value> = sent[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_msgs.len(), 2);
    assert_ne!(tool_msgs[0]["tool_call_id"], tool_msgs[1]["tool_call_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_then_served_honours_retry_after() {
    let s = setup(
        vec![
            Fixture::new()
                .match_user_message("busy")
                .with_error_headers(429, "slow down", [("retry-after", "0.4")])
                .unwrap()
                .with_scenario("rl", Some(""), Some("retried")),
            Fixture::new()
                .match_user_message("busy")
                .respond_with_content("Served.")
                .with_scenario("rl", Some("retried"), None),
        ],
        |c| c,
    )
    .await;
    let started = Instant::now();
    let events = run(&s, "dave", "thread-1", "busy day").await;
    assert_eq!(ending(&events).1.as_deref(), Some("Served."));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited as told"
    );
    assert_eq!(s.server.get_requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_until_the_retries_end_fail_the_run_with_the_count() {
    let s = setup(
        vec![Fixture::new()
            .match_user_message("boom")
            .with_error(500, "upstream exploded")],
        |c| c,
    )
    .await;
    let events = run(&s, "erin", "thread-1", "boom").await;
    let (status, _, error) = ending(&events);
    assert_eq!(status, RunStatus::Failed);
    // The user is told the server is unavailable; the status, count and upstream text are the
    // operator's (LlmError's Display, logged).
    assert_eq!(error, told("the model server is unavailable; try again"));
    assert_nothing_internal(&events, &s);
    assert_eq!(s.server.get_requests().len(), 3, "one try and two retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_is_a_configuration_error_without_retries() {
    let s = setup(
        vec![Fixture::new()
            .match_user_message("hi")
            .with_error(401, "invalid api key")],
        |c| c,
    )
    .await;
    let events = run(&s, "fay", "thread-1", "hi").await;
    let error = ending(&events).2.unwrap();
    assert_eq!(
        Some(error),
        told("the model server refused the gateway's credentials; the operator has to fix them")
    );
    assert_nothing_internal(&events, &s);
    assert_eq!(s.server.get_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_fails_after_the_idle_timeout() {
    let s = setup(
        vec![Fixture::new()
            .match_user_message("slow")
            .respond_with_content("This will take a very long time to arrive.")
            .with_streaming(Some(3000), Some(4))],
        |c| c.with_idle_timeout(Duration::from_millis(300)),
    )
    .await;
    let started = Instant::now();
    let events = run(&s, "gus", "thread-1", "slow please").await;
    let error = ending(&events).2.unwrap();
    assert!(error.contains("stalled"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "did not wait the stall out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_cut_streams_fail_the_run_with_a_reason() {
    let s = setup(
        vec![
            Fixture::new()
                .match_user_message("garbage")
                .respond_with_content("never seen")
                .with_failure(FailureConfig {
                    corrupt_body: Some(true),
                    ..FailureConfig::default()
                }),
            Fixture::new()
                .match_user_message("cut")
                .respond_with_content("This answer is cut off in the middle of its stream.")
                .with_streaming(None, Some(4))
                .with_failure(FailureConfig {
                    truncate_after_frames: Some(3),
                    ..FailureConfig::default()
                }),
        ],
        |c| c,
    )
    .await;
    let events = run(&s, "hal", "thread-1", "garbage").await;
    let (status, _, error) = ending(&events);
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(error, told("the model's answer broke off; try again"));
    let events = run(&s, "hal", "thread-2", "cut").await;
    let (status, _, error) = ending(&events);
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(error, told("the model's answer broke off; try again"));
    assert_nothing_internal(&events, &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tool_is_reported_to_the_model_and_the_run_goes_on() {
    let s = setup(
        calls_then_answer(
            "mystery",
            vec![call("teleport", json!({"to": "mars"}))],
            "I cannot teleport.",
        ),
        |c| c,
    )
    .await;
    let events = run(&s, "ivy", "thread-1", "mystery").await;
    assert_eq!(ending(&events).1.as_deref(), Some("I cannot teleport."));
    assert_eq!(tool_results(&events)[0].1, ToolStatus::Error);
    let told = &bodies(&s.server)[1]["messages"];
    let last = &told.as_array().unwrap().last().unwrap()["content"];
    assert!(
        last.as_str().unwrap().contains("no tool `teleport`"),
        "{last}"
    );
}

async fn approval_case(decision: ApprovalDecision) -> (Vec<EventEnvelope>, Vec<Value>) {
    let s = setup(
        calls_then_answer(
            "note",
            vec![call("save_note", json!({"text": "buy milk"}))],
            "Done deciding.",
        ),
        |c| c,
    )
    .await;
    let events = run_with(&s, "jan", "thread-1", "note this", |e, _| match &e.event {
        AgentEvent::ApprovalRequested { call_id, .. } => Some(Action::Approve(*call_id, decision)),
        _ => None,
    })
    .await;
    let sent = bodies(&s.server);
    (events, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_needing_approval_waits_for_the_user_approve_and_deny() {
    let (events, sent) = approval_case(ApprovalDecision::Approve).await;
    assert_eq!(ending(&events).0, RunStatus::Completed);
    assert_eq!(tool_results(&events)[0].1, ToolStatus::Success);
    let last = sent[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], r#"{"saved":true}"#);

    let (events, sent) = approval_case(ApprovalDecision::Deny).await;
    assert_eq!(ending(&events).0, RunStatus::Completed);
    assert_eq!(tool_results(&events)[0].1, ToolStatus::Denied);
    let last = sent[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        last["content"].as_str().unwrap().contains("denied"),
        "{last}"
    );
}

/// Whether a TCP connection to `port` on loopback is established (from /proc/net/tcp).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1).and_then(|a| a.rsplit(':').next());
            local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                && f.get(3) == Some(&"01")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_the_middle_of_a_stream_closes_the_upstream_connection() {
    let s = setup(
        vec![Fixture::new()
            .match_user_message("long")
            .respond_with_content(&"word ".repeat(400))
            .with_streaming(Some(20), Some(5))],
        |c| c,
    )
    .await;
    let port = s.server.port();
    let mut open_during = 0;
    let events = run_with(&s, "kim", "thread-1", "long story", |e, _| {
        if let AgentEvent::AnswerDelta { .. } = e.event {
            if open_during == 0 {
                open_during = established_to(port);
                return Some(Action::Cancel);
            }
        }
        None
    })
    .await;
    assert!(open_during >= 1, "the stream was open on the server side");
    assert_eq!(ending(&events).0, RunStatus::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(2);
    while established_to(port) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server still holds the connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(deltas(&events).len() < 200, "cut short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_timeout_also_closes_the_upstream_connection() {
    let s = setup_with(
        vec![Fixture::new()
            .match_user_message("long")
            .respond_with_content(&"word ".repeat(400))
            .with_streaming(Some(20), Some(5))],
        |c| c,
        engine_core::EngineConfig::builder()
            .run_timeout(Duration::from_millis(400))
            .build()
            .unwrap(),
    )
    .await;
    let port = s.server.port();
    let mut open_during = 0;
    let events = run_with(&s, "kit", "thread-1", "long story", |e, _| {
        if matches!(e.event, AgentEvent::AnswerDelta { .. }) && open_during == 0 {
            open_during = established_to(port);
        }
        None
    })
    .await;
    assert!(open_during >= 1);
    assert_eq!(ending(&events).0, RunStatus::TimedOut);
    let deadline = Instant::now() + Duration::from_secs(2);
    while established_to(port) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server still holds the connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_in_the_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = setup(vec![], move |_| {
        LlmConfig::new(format!("http://127.0.0.1:{port}/v1"), "m")
            .with_retries(1, Duration::from_millis(10))
    })
    .await;
    let events = run(&s, "lee", "thread-1", "anyone there?").await;
    let error = ending(&events).2.unwrap();
    assert_eq!(
        Some(error.clone()),
        told("the model server is unavailable; try again")
    );
    assert!(!error.contains(&port.to_string()), "{error}");
    // The operator's text names the server and the attempts.
    let operator = engine_llm::LlmError::Unreachable {
        url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
        attempts: 2,
        cause: "connection refused".into(),
    };
    let failure = engine_llm::ModelFailure(operator);
    let source = std::error::Error::source(&failure).unwrap().to_string();
    assert!(source.contains(&format!("127.0.0.1:{port}")) && source.contains("after 2 attempts"));
    assert!(error.ends_with(&failure.to_string()), "{error}");
}

/// The terminal error a user gets when the model agent fails with `message`.
fn told(message: &str) -> Option<String> {
    Some(format!("agent `assistant` failed: {message}"))
}

/// No frame a user gets names the API key, the server's address or the upstream's text.
fn assert_nothing_internal(events: &[EventEnvelope], s: &Setup) {
    let port = s
        .server
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    for e in events {
        let text = serde_json::to_string(&e.event).unwrap();
        for secret in [
            "sk-test-secret-0042",
            "127.0.0.1",
            "upstream exploded",
            "invalid api key",
        ] {
            assert!(!text.contains(secret), "{secret} reached the user: {text}");
        }
        assert!(
            !text.contains(&format!(":{port}")),
            "the port reached the user: {text}"
        );
    }
}

/// A model server that misbehaves at the HTTP level: accepts on loopback and, for every
/// request, `behave`s on the raw socket (bounded: it stops when the client goes away or after
/// 30 s).
async fn raw_server(behave: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                let _ = socket.read(&mut buf).await;
                let head: &[u8] = match behave {
                    "error_body" => b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
                    "endless_event" => b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                    _ => b"",
                };
                if head.is_empty() {
                    // Never answers: hold the socket until the client gives up.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf)).await;
                    return;
                }
                if socket.write_all(head).await.is_err() {
                    return;
                }
                let piece = if behave == "endless_event" {
                    // One event that never ends: no blank line, ever.
                    "data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                } else {
                    "the upstream says: internal details at http://10.0.0.7:9000 "
                };
                let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if socket.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_servers_end_the_run_within_the_limits_with_a_clear_error() {
    for (behave, expected) in [
        ("no_headers", "the model server is unavailable; try again"),
        ("error_body", "the model server is unavailable; try again"),
        ("endless_event", "the model's answer broke off; try again"),
    ] {
        let port = raw_server(behave).await;
        let s = setup(vec![], move |_| {
            LlmConfig::new(format!("http://127.0.0.1:{port}/v1"), "m")
                .with_api_key(ApiKey::new("sk-test-secret-0042"))
                .with_retries(1, Duration::from_millis(10))
                .with_header_timeout(Duration::from_millis(300))
                .with_read_limits(4096, 4096)
        })
        .await;
        let started = Instant::now();
        let events = run(&s, "ora", "thread-1", "hello").await;
        let (status, _, error) = ending(&events);
        assert_eq!(status, RunStatus::Failed, "{behave}");
        assert_eq!(error, told(expected), "{behave}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{behave}: ended within the limits, not after {:?}",
            started.elapsed()
        );
        for e in &events {
            let text = serde_json::to_string(&e.event).unwrap();
            assert!(
                !text.contains("10.0.0.7") && !text.contains("sk-test"),
                "{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_remembers_its_own_user_only() {
    let s = setup(
        vec![
            Fixture::new()
                .match_user_message("my name is")
                .respond_with_content("Nice to meet you."),
            Fixture::new()
                .match_user_message("who am i")
                .respond_with_content("You told me."),
        ],
        |c| c,
    )
    .await;
    run(&s, "mia", "thread-1", "my name is Mia").await;
    run(&s, "mia", "thread-1", "who am i?").await;
    run(&s, "ned", "thread-1", "who am i?").await;
    let sent = bodies(&s.server);
    let texts = |b: &Value| -> Vec<String> {
        b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        texts(&sent[1]),
        vec![
            "You are a test.",
            "my name is Mia",
            "Nice to meet you.",
            "who am i?"
        ]
    );
    assert_eq!(
        texts(&sent[2]),
        vec!["You are a test.", "who am i?"],
        "ned sees nothing of mia's thread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_users_stream_at_once_and_each_gets_only_their_tokens() {
    let fixtures: Vec<Fixture> = (0..100)
        .map(|i| {
            Fixture::new()
                .match_user_message(&format!("from user-{i:03} "))
                .respond_with_content(&format!("answer for user-{i:03}, streamed in small pieces"))
                .with_streaming(Some(1), Some(3))
        })
        .collect();
    let s = Arc::new(setup(fixtures, |c| c).await);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let user = format!("user-{i:03}");
            let events = run(&s, &user, "thread-1", &format!("hello from {user} now")).await;
            let me = UserId::new(&user).unwrap();
            assert!(
                events.iter().all(|e| e.user_id == me),
                "{user} got another user's event"
            );
            assert_eq!(
                deltas(&events),
                format!("answer for {user}, streamed in small pieces")
            );
            assert_eq!(ending(&events).0, RunStatus::Completed);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Answers for the billing desk.
struct Billing;

#[async_trait]
impl engine_core::Agent for Billing {
    async fn run(
        &mut self,
        _ctx: &mut engine_core::RunContext,
        input: &str,
    ) -> Result<String, BoxError> {
        Ok(format!("billing here: {input}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_hands_the_run_to_another_agent_with_a_transfer_tool() {
    let server = ServerBuilder::new()
        .fixtures(vec![Fixture::new()
            .match_user_message("invoice")
            .respond_with_tool_calls(vec![call(
                "transfer_to_billing",
                json!({"reason": "a billing question"}),
            )])])
        .build()
        .await
        .expect("llmposter starts");
    let kit =
        LlmAgentKit::with_history(config(&server), Arc::new(InMemoryHistory::default())).unwrap();
    let registry = AgentRegistry::builder()
        .agent("assistant", move || kit.agent())
        .agent("billing", || Billing)
        .handoffs("assistant", ["billing"])
        .build()
        .unwrap();
    let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry).unwrap();
    let s = Setup { server, factory };
    let events = run(&s, "uma", "thread-1", "where is my invoice?").await;
    let handoff = events
        .iter()
        .find_map(|e| match &e.event {
            AgentEvent::Handoff { from, to, reason } => {
                Some((from.to_string(), to.to_string(), reason.clone()))
            }
            _ => None,
        })
        .expect("a handoff event");
    assert_eq!(
        handoff,
        (
            "assistant".to_owned(),
            "billing".to_owned(),
            Some("a billing question".to_owned())
        )
    );
    match &events.last().unwrap().event {
        AgentEvent::AgentCompleted {
            agent_name, result, ..
        } => {
            assert_eq!(&**agent_name, "billing", "the agent that answered");
            assert_eq!(
                result.as_deref(),
                Some("billing here: where is my invoice?")
            );
        }
        other => panic!("not terminal: {other:?}"),
    }
    // The model was offered the transfer, and was asked once (the handoff ends its turn).
    let sent = bodies(&s.server);
    assert_eq!(sent.len(), 1);
    let offered: Vec<&str> = sent[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(offered.contains(&"transfer_to_billing"), "{offered:?}");
}
