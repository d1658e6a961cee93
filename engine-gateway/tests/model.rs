//! The real gateway binary with `--llm-base-url`: the page's `assistant` is answered by an
//! OpenAI-compatible server (`llmposter`, a third-party mock server started here on
//! loopback), its tokens stream to the WebSocket client, and its tool call runs through the
//! engine (the demo calculator).

use std::time::Duration;

use engine_core::UserId;
use engine_gateway::TokenKeys;
use futures_util::{SinkExt, StreamExt};
use llmposter::fixture::ToolCall;
use llmposter::{Fixture, ServerBuilder};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assistant_streams_a_models_answer_and_runs_its_tool_call() {
    let server = ServerBuilder::new()
        .fixture(
            Fixture::new()
                .match_user_message("6 * 7")
                .respond_with_tool_calls(vec![ToolCall {
                    name: "calculator".into(),
                    arguments: json!({"expression": "6 * 7"}),
                }])
                .with_scenario("calc", Some(""), Some("done")),
        )
        .fixture(
            Fixture::new()
                .match_user_message("6 * 7")
                .respond_with_content("Six times seven is 42.")
                .with_streaming(Some(5), Some(3))
                .with_scenario("calc", Some("done"), None),
        )
        .build()
        .await
        .expect("llmposter starts");
    let base = format!("{}/v1", server.url());
    let gw = common::start_gateway(&["--llm-base-url", &base, "--llm-model", "mock-model"]).await;
    let token = TokenKeys::new(common::SECRET.as_bytes())
        .issue(&UserId::new("alice").unwrap(), 600)
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(common::ws_request(&gw.addr, &token))
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"type":"user_message","thread_id":"t1","text":"what is 6 * 7?"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut deltas = Vec::new();
    let mut tools = Vec::new();
    let result = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("frames keep coming")
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        if f["type"] != "event" {
            continue;
        }
        let e = &f["event"];
        match e["type"].as_str().unwrap() {
            "answer_delta" => deltas.push(e["delta"].as_str().unwrap().to_owned()),
            "tool_completed" => tools.push((e["tool_name"].clone(), e["result"].clone())),
            "agent_completed" => break e.clone(),
            _ => {}
        }
    };
    assert_eq!(result["status"], "completed", "{result}");
    assert!(deltas.len() >= 5, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), "Six times seven is 42.");
    assert_eq!(result["result"], "Six times seven is 42.");
    assert_eq!(tools, vec![(json!("calculator"), json!(42.0))]);
    // The model was told the tools, with their descriptions.
    let first: Value = serde_json::from_str(&server.get_requests()[0].body).unwrap();
    let names: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"calculator") && names.contains(&"save_note"),
        "{names:?}"
    );
}

/// The model calls a tool of an MCP server given by `--mcp-config` (a per-user server: the
/// small Python server of engine-mcp's tests, started for the token's user), through the real
/// binary; the result reaches the socket and the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assistant_calls_a_per_user_mcp_tool_through_the_gateway() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine-mcp/tests/support/identity_server.py");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mcp.json");
    std::fs::write(
        &file,
        json!({"mcpServers": {"id": {
            "command": "python3", "args": [script.display().to_string()],
            "env": {"MCP_USER": "{user}"}, "perUser": true, "prefix": "id_"}}})
        .to_string(),
    )
    .unwrap();
    let server = ServerBuilder::new()
        .fixture(
            Fixture::new()
                .match_user_message("who am I")
                .respond_with_tool_calls(vec![ToolCall {
                    name: "id_whoami".into(),
                    arguments: json!({}),
                }])
                .with_scenario("who", Some(""), Some("done")),
        )
        .fixture(
            Fixture::new()
                .match_user_message("who am I")
                .respond_with_content("You are alice.")
                .with_scenario("who", Some("done"), None),
        )
        .build()
        .await
        .expect("llmposter starts");
    let base = format!("{}/v1", server.url());
    let gw = common::start_gateway(&[
        "--llm-base-url",
        &base,
        "--llm-model",
        "mock-model",
        "--mcp-config",
        file.to_str().unwrap(),
    ])
    .await;
    let mut ws = common::connect(&gw.addr, "alice").await;
    common::send(
        &mut ws,
        json!({"type":"user_message","thread_id":"t1","text":"who am I?"}),
    )
    .await;
    let mut tools = Vec::new();
    let result = loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("frames keep coming")
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        if f["type"] != "event" {
            continue;
        }
        let e = &f["event"];
        match e["type"].as_str().unwrap() {
            "tool_completed" => tools.push((e["tool_name"].clone(), e["result"].clone())),
            "agent_completed" => break e.clone(),
            _ => {}
        }
    };
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(tools, vec![(json!("id_whoami"), json!("alice"))]);
    let first: Value = serde_json::from_str(&server.get_requests()[0].body).unwrap();
    let whoami = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "id_whoami")
        .expect("the model was offered the MCP tool");
    assert!(whoami["function"]["description"]
        .as_str()
        .unwrap()
        .contains("user"));
    // The tool's result went back to the model.
    let second: Value = serde_json::from_str(&server.get_requests()[1].body).unwrap();
    assert!(second.to_string().contains("alice"), "{second}");
}
