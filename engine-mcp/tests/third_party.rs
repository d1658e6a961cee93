//! Against third-party servers installed by `.ci/run`: `@modelcontextprotocol/server-everything`
//! (npm) and `mcp-server-time` (PyPI): listing with descriptions and schemas, calls, errors from
//! the server, the long-running tool cut by a run cancel and by the tool timeout, approvals.

mod support;

use std::time::{Duration, Instant};

use engine_core::{AgentEvent, ApprovalDecision, EngineConfig, ToolStatus};
use serde_json::{json, Value};
use support::{call, completions, everything, run_as, setup, time_server, Setup};

async fn everything_setup(extra: &str, engine: EngineConfig) -> Option<Setup> {
    let bin = everything()?;
    let text = format!(
        r#"{{"mcpServers": {{"everything": {{"command": {cmd}{extra}}}}}}}"#,
        cmd = json!(bin.display().to_string())
    );
    Some(setup(&text, engine).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_tools_are_offered_with_their_schemas_and_called() {
    let Some(s) = everything_setup("", EngineConfig::default()).await else {
        return;
    };
    let events = run_as(&s, "ann", "lister", "", |_, _, _| false).await;
    let specs: Vec<Value> = serde_json::from_str(&support::result(&events)).unwrap();
    let echo = specs
        .iter()
        .find(|t| t["name"] == "everything.echo")
        .expect("echo is offered");
    assert!(echo["description"].as_str().unwrap().contains("Echo"));
    assert_eq!(
        echo["parameters"]["properties"]["message"]["type"],
        "string"
    );
    assert!(specs.iter().any(|t| t["name"] == "everything.get-sum"));

    let (answer, _) = call(&s, "ann", "everything.echo", json!({"message": "hi"})).await;
    assert!(answer.contains("hi"), "{answer}");
    let (answer, _) = call(&s, "ann", "everything.get-sum", json!({"a": 2, "b": 3})).await;
    assert!(answer.contains('5'), "{answer}");
    // The server refuses bad arguments: a tool error, the run goes on.
    let (answer, events) = call(&s, "ann", "everything.get-sum", json!({"a": "x"})).await;
    assert_eq!(completions(&events)[0].1, ToolStatus::Error, "{answer}");
    assert!(answer.starts_with("error:"), "{answer}");
    // A name the server does not have is the engine's NotFound.
    let (answer, _) = call(&s, "ann", "everything.nope", json!({})).await;
    assert!(answer.contains("nope"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_running_tool_ends_at_once_on_a_run_cancel() {
    let Some(s) = everything_setup("", EngineConfig::default()).await else {
        return;
    };
    let input = json!({"tool": "everything.trigger-long-running-operation",
                       "args": {"duration": 30, "steps": 30}})
    .to_string();
    let mut cancelled_at = None;
    let events = run_as(&s, "ann", "caller", &input, |e, _, _| {
        if matches!(e.event, AgentEvent::ToolExecuting { .. }) {
            cancelled_at = Some(Instant::now());
            return true;
        }
        false
    })
    .await;
    let took = cancelled_at.unwrap().elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the call took {took:?} after the cancel"
    );
    assert_eq!(completions(&events)[0].1, ToolStatus::Cancelled);
    // The shared session still serves.
    let (answer, _) = call(&s, "ann", "everything.echo", json!({"message": "after"})).await;
    assert!(answer.contains("after"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_running_tool_ends_at_the_tool_timeout() {
    let engine = EngineConfig::builder()
        .tool_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let Some(s) = everything_setup("", engine).await else {
        return;
    };
    let t = Instant::now();
    let (_, events) = call(
        &s,
        "ann",
        "everything.trigger-long-running-operation",
        json!({"duration": 30, "steps": 30}),
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(completions(&events)[0].1, ToolStatus::Timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_tool_requiring_approval_waits_for_the_user() {
    let Some(s) =
        everything_setup(r#", "requireApproval": ["echo"]"#, EngineConfig::default()).await
    else {
        return;
    };
    for (decision, status) in [
        (ApprovalDecision::Approve, ToolStatus::Success),
        (ApprovalDecision::Deny, ToolStatus::Denied),
    ] {
        let input = json!({"tool": "everything.echo", "args": {"message": "ok?"}}).to_string();
        let events = run_as(&s, "ann", "caller", &input, |e, engine, ctx| {
            if let AgentEvent::ApprovalRequested { call_id, .. } = e.event {
                engine.approve(ctx.run_id(), call_id, decision).unwrap();
            }
            false
        })
        .await;
        assert!(events
            .iter()
            .any(|e| matches!(e.event, AgentEvent::ApprovalRequested { .. })));
        assert_eq!(completions(&events)[0].1, status);
    }
    // Tools not in the list run without approval.
    let (answer, events) = call(&s, "ann", "everything.get-sum", json!({"a": 1, "b": 1})).await;
    assert_eq!(completions(&events)[0].1, ToolStatus::Success, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_time_answers_and_its_errors_reach_the_agent() {
    let Some(bin) = time_server() else {
        return;
    };
    let text = format!(
        r#"{{"mcpServers": {{"time": {{"command": {cmd}, "args": ["--local-timezone", "UTC"]}}}}}}"#,
        cmd = json!(bin.display().to_string())
    );
    let s = setup(&text, EngineConfig::default()).await;
    let (answer, events) = call(
        &s,
        "ann",
        "time.get_current_time",
        json!({"timezone": "Europe/Paris"}),
    )
    .await;
    assert_eq!(completions(&events)[0].1, ToolStatus::Success, "{answer}");
    assert!(answer.contains("Europe/Paris"), "{answer}");
    let (answer, events) = call(
        &s,
        "ann",
        "time.get_current_time",
        json!({"timezone": "Mars/Olympus"}),
    )
    .await;
    assert_eq!(completions(&events)[0].1, ToolStatus::Error, "{answer}");
    assert!(answer.contains("Mars/Olympus"), "{answer}");
}
