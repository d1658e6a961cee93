//! The gateway's HTTP side on a real server (loopback): `/metrics` is Prometheus text that a
//! Prometheus parser reads (counters, gauges, histograms with `status` labels, no user id in
//! any label), `/metrics.json` keeps the JSON view, and every response carries a request id.

use std::time::Duration;

use engine_core::UserId;
use engine_gateway::{demo::demo_registry, Gateway, GatewayConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod common;

async fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    common::http_get(&addr.to_string(), path, extra).await
}

/// Reads a chunked body as text (axum streams the metrics text with chunked encoding or a
/// length; both read fine for a line-based parser once the chunk sizes are dropped).
fn lines_of(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| !l.is_empty() && u64::from_str_radix(l.trim(), 16).is_err())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_without_user_ids() {
    let gateway = Gateway::new(GatewayConfig::development(), demo_registry()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let g = gateway.clone();
    let server = tokio::spawn(async move {
        g.serve(listener, async {
            let _ = stopped.await;
        })
        .await
    });

    // Some traffic: one completed run, one refused upgrade.
    let user = "metrics-user-7f3a";
    let token = gateway
        .keys()
        .issue(&UserId::new(user).unwrap(), 600)
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(common::ws_request(addr, &token))
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"type":"user_message","thread_id":"t","text":"what is 2 + 2?"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("socket ended early");
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["event"]["type"] == "agent_completed" {
            break;
        }
    }
    let refused = tokio_tungstenite::connect_async(common::ws_request(addr, "forged")).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status().as_u16() == 401),
        "{refused:?}"
    );
    // The run's outcome is recorded by a task of its own: scrape until it shows (5 s at most).
    let mut scraped = get(addr, "/metrics", "").await;
    for _ in 0..100 {
        if scraped
            .2
            .contains("engine_gateway_runs_total{status=\"completed\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        scraped = get(addr, "/metrics", "").await;
    }
    let (status, head, body) = scraped;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        !body.contains(user),
        "a user id reached the metrics:\n{body}"
    );
    assert!(body.contains("# HELP engine_gateway_runs "), "{body}");
    assert!(
        body.contains("# TYPE engine_gateway_run_duration_seconds histogram"),
        "{body}"
    );
    let scrape = prometheus_parse::Scrape::parse(lines_of(&body).into_iter().map(Ok))
        .expect("Prometheus text parses");
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum::<f64>()
    };
    assert_eq!(
        value("engine_gateway_runs_total", Some(("status", "completed"))),
        1.0
    );
    assert_eq!(
        value(
            "engine_gateway_run_duration_seconds",
            Some(("status", "completed"))
        ),
        1.0,
        "one run in the histogram"
    );
    assert!(
        value("engine_gateway_emit_to_socket_seconds", None) >= 6.0,
        "every event's lag"
    );
    assert_eq!(
        value(
            "engine_gateway_upgrades_refused_total",
            Some(("reason", "unauthorized"))
        ),
        1.0
    );
    assert_eq!(value("engine_gateway_connections", None), 1.0);
    assert_eq!(value("engine_gateway_engines_created_total", None), 1.0);
    for sample in &scrape.samples {
        for (k, v) in sample.labels.iter() {
            assert!(
                !v.contains(user) && k != "user_id",
                "user in a label: {sample:?}"
            );
        }
    }

    // The JSON view stays, and every response carries a request id (kept if the client sent one).
    let (status, head, body) = get(addr, "/metrics.json", "x-request-id: trace-me-42\r\n").await;
    assert_eq!(status, 200);
    assert!(head.contains("x-request-id: trace-me-42"), "{head}");
    let body = lines_of(&body).join("");
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(v["connections"], 1, "{body}");
    let (_, head, _) = get(addr, "/healthz", "").await;
    assert!(head.contains("x-request-id: "), "{head}");

    drop(ws);
    let _ = stop.send(());
    let _ = server.await;
}
