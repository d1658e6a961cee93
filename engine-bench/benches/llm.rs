//! The model agent's cost on the engine against the same HTTP client reading the same local
//! stream without the engine, in one run. The server is `llmposter` (an OpenAI-compatible mock,
//! in process, on loopback) with no pacing, so both sides read as fast as it streams:
//!
//! * `llm_tokens`: one answer of 400 streamed pieces; ours runs it as a run (answer_delta per
//!   piece, delivered to a subscriber the caller reads), the baseline reads and parses the
//!   same SSE stream with reqwest + eventsource-stream in a task and hands each piece to the
//!   caller through a channel; per piece;
//! * `llm_tool_round`: a turn with one tool call, the tool run, and the answer turn; ours
//!   through the engine (tool events, the demo calculator), the baseline as two requests and a
//!   direct call of the same tool function; per round.
#![allow(clippy::print_stdout)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine_core::{AgentRegistry, UserExecutionContext};
use engine_factory::{ExecutionEngineFactory, FactoryConfig};
use engine_gateway::demo::Calculator;
use engine_llm::{LlmAgentKit, LlmConfig};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use llmposter::fixture::ToolCall;
use llmposter::{Fixture, MockServer, ServerBuilder};
use serde_json::{json, Value};

const PIECES: usize = 400;

struct Setup {
    rt: tokio::runtime::Runtime,
    /// The mock server's own runtime: one thread, apart from the measured side's two workers.
    _server_rt: tokio::runtime::Runtime,
    server: MockServer,
    factory: ExecutionEngineFactory,
    http: reqwest::Client,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let server = server_rt.block_on(async {
        ServerBuilder::new()
            .fixture(
                Fixture::new()
                    .match_user_message("tokens")
                    .respond_with_content(&"abcd".repeat(PIECES))
                    .with_streaming(None, Some(4)),
            )
            .fixture(
                Fixture::new()
                    .match_user_message("tool")
                    .respond_with_tool_calls(vec![ToolCall {
                        name: "calculator".into(),
                        arguments: json!({"expression": "6 * 7"}),
                    }])
                    .with_scenario("round", Some(""), Some("called")),
            )
            .fixture(
                Fixture::new()
                    .match_user_message("tool")
                    .respond_with_content("42")
                    .with_scenario("round", Some("called"), Some("")),
            )
            .build()
            .await
            .expect("llmposter")
    });
    // llmposter does not set TCP_NODELAY, so a reused connection can wait 40 ms on a delayed
    // ACK, at random, on either side: both sides open a fresh connection per request.
    let kit = LlmAgentKit::new(
        LlmConfig::new(format!("{}/v1", server.url()), "mock").with_keep_alive(false),
    )
    .expect("kit");
    let registry = AgentRegistry::builder()
        .agent("model", move || kit.agent())
        .tool("calculator", Calculator)
        .build()
        .expect("registry");
    let factory = ExecutionEngineFactory::new(
        FactoryConfig::builder()
            .subscriber_buffer(4096)
            .build()
            .expect("config"),
        registry,
    )
    .expect("factory");
    Setup {
        rt,
        _server_rt: server_rt,
        server,
        factory,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client"),
    }
}

/// One run through the engine, read at a subscriber until its terminal event.
async fn through_engine(s: &Setup, text: &str, n: u64) {
    let ctx = UserExecutionContext::new("bench-llm", "thread", format!("run-{n}")).expect("ctx");
    let mut sub = s.factory.subscribe(ctx.user_id());
    let engine = s.factory.create_for_user(&ctx).expect("engine");
    let run = engine.spawn(&ctx, "model", text).expect("spawn");
    while let Some(e) = sub.recv().await {
        if e.event.is_terminal() {
            break;
        }
    }
    let outcome = run.outcome().await.expect("outcome");
    assert!(outcome.is_success(), "{outcome:?}");
    engine.close().await;
}

/// One streamed request read and parsed without the engine; returns the tool call, if any.
async fn raw_turn(s: &Setup, messages: &Value) -> Option<Value> {
    let body = json!({"model": "mock", "messages": messages, "stream": true});
    let response = s
        .http
        .post(format!("{}/v1/chat/completions", s.server.url()))
        .json(&body)
        .send()
        .await
        .expect("send");
    let mut events = response.bytes_stream().eventsource();
    let mut call = None;
    while let Some(event) = events.next().await {
        let event = event.expect("event");
        if event.data == "[DONE]" {
            continue; // read to the end, as the agent does: the connection goes back to the pool
        }
        let chunk: Value = serde_json::from_str(&event.data).expect("chunk");
        let delta = &chunk["choices"][0]["delta"];
        std::hint::black_box(delta["content"].as_str());
        if let Some(c) = delta["tool_calls"].get(0) {
            call = Some(c.clone());
        }
    }
    call
}

/// The floor of `llm_tokens`: the same request read and parsed in a task, each piece handed
/// to the caller through a channel, as any server must hand tokens on to the user's reader.
async fn raw_delivered(s: &Setup) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4096);
    let http = s.http.clone();
    let url = format!("{}/v1/chat/completions", s.server.url());
    let reader = tokio::spawn(async move {
        let body = json!({"model": "mock", "messages": [{"role": "user", "content": "tokens please"}], "stream": true});
        let response = http.post(url).json(&body).send().await.expect("send");
        let mut events = response.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let event = event.expect("event");
            if event.data == "[DONE]" {
                continue;
            }
            let chunk: Value = serde_json::from_str(&event.data).expect("chunk");
            if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                if tx.send(text.to_owned()).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut got = 0;
    while let Some(piece) = rx.recv().await {
        got += piece.len();
    }
    assert_eq!(got, 4 * PIECES);
    reader.await.expect("reader");
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut n = 0u64;
    let mut g = c.benchmark_group("llm_tokens");
    g.throughput(Throughput::Elements(PIECES as u64));
    g.bench_function("ours", |b| {
        b.iter(|| {
            n += 1;
            s.rt.block_on(through_engine(&s, "tokens please", n));
        });
    });
    g.bench_function("baseline", |b| {
        b.iter(|| {
            s.rt.block_on(raw_delivered(&s));
        });
    });
    g.finish();

    let mut g = c.benchmark_group("llm_tool_round");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ours", |b| {
        b.iter(|| {
            n += 1;
            s.rt.block_on(through_engine(&s, "tool please", n));
        });
    });
    g.bench_function("baseline", |b| {
        b.iter(|| {
            s.rt.block_on(async {
                let ask = json!([{"role": "user", "content": "tool please"}]);
                let call = raw_turn(&s, &ask).await.expect("a tool call");
                let args: Value =
                    serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or("{}"))
                        .expect("args");
                let expr = args["expression"].as_str().unwrap_or_default();
                let parts: Vec<f64> = expr
                    .split(" * ")
                    .filter_map(|p| p.trim().parse().ok())
                    .collect();
                let result = parts.iter().product::<f64>();
                let answer = json!([
                    {"role": "user", "content": "tool please"},
                    {"role": "assistant", "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": result.to_string()},
                ]);
                raw_turn(&s, &answer).await;
            });
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
