//! OpenTelemetry export (feature `otel`): the real binary, pointed at an OTLP/HTTP endpoint on
//! loopback that this test serves, sends the spans of an HTTP request and of a run, with the
//! user and run ids as attributes. `cargo test -p engine-gateway --features otel --test otel`.
#![cfg(feature = "otel")]

use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use engine_core::UserId;
use engine_gateway::TokenKeys;
use futures_util::{SinkExt, StreamExt};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::SECRET;

/// A span as received: its name and string attributes.
#[derive(Debug)]
struct Span {
    name: String,
    attributes: Vec<(String, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_requests_and_runs_reach_an_otlp_endpoint() {
    // The collector: decodes every OTLP/HTTP protobuf export it is sent.
    let (tx, mut spans) = mpsc::unbounded_channel::<Span>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let attributes = span
                                .attributes
                                .iter()
                                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                    AnyValue::StringValue(s) => Some((kv.key.clone(), s.clone())),
                                    _ => None,
                                })
                                .collect();
                            let _ = tx.send(Span {
                                name: span.name,
                                attributes,
                            });
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let endpoint = format!("http://{otlp}");
    let common::Running {
        mut child,
        addr,
        logs: mut lines,
        data: _data,
    } = common::start_gateway(&["--otlp-endpoint", &endpoint]).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let user = "otel-user";
    let token = TokenKeys::new(SECRET.as_bytes())
        .issue(&UserId::new(user).unwrap(), 600)
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(common::ws_request(&addr, &token))
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"type":"user_message","thread_id":"t","text":"what is 1 + 1?"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let run_id = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("frames")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["event"]["type"] == "agent_completed" {
                break v["run_id"].as_str().unwrap().to_owned();
            }
        }
    };
    // SIGTERM: the gateway stops and flushes its spans before it exits.
    common::terminate(&child);
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(exit.success());

    let mut received = Vec::new();
    while let Ok(Some(span)) = tokio::time::timeout(Duration::from_secs(5), spans.recv()).await {
        received.push(span);
    }
    let has = |s: &Span, k: &str, v: &str| s.attributes.iter().any(|(a, b)| a == k && b == v);
    let run = received
        .iter()
        .find(|s| s.name == "agent_run")
        .unwrap_or_else(|| panic!("no agent_run span among {received:?}"));
    assert!(
        has(run, "user_id", user) && has(run, "run_id", &run_id),
        "{run:?}"
    );
    let http = received
        .iter()
        .find(|s| s.name == "http" && has(s, "path", "/ws"))
        .unwrap_or_else(|| panic!("no http span for /ws among {received:?}"));
    assert!(
        !http.attributes.iter().any(|(_, v)| v.contains(&token)),
        "the token never leaves in a span: {http:?}"
    );
}
