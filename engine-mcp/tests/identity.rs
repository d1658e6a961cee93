//! Sessions against a small MCP server of our own (tests/support/identity_server.py, run by a
//! real Python process): per-user identity for 100 users at once, cancellation reaching the
//! server, a server killed mid-call and started again, errors, `list_changed`, idle close.

mod support;

use std::time::{Duration, Instant};

use engine_core::{EngineConfig, ToolSource, ToolStatus};
use serde_json::json;
use support::{call, completions, identity_script, python, setup, Setup};

fn config(python: &std::path::Path, per_user: bool, extra: &str) -> String {
    let env = if per_user {
        r#""MCP_USER": "{user}""#.to_owned()
    } else {
        r#""MCP_USER": "shared""#.to_owned()
    };
    format!(
        r#"{{"mcpServers": {{"id": {{"command": {cmd}, "args": [{script}], "env": {{{env}{extra}}},
            "perUser": {per_user}, "idleTimeoutSecs": 1}}}}}}"#,
        cmd = json!(python.display().to_string()),
        script = json!(identity_script()),
    )
}

async fn started(per_user: bool, extra: &str, engine: EngineConfig) -> Option<Setup> {
    let py = python()?;
    Some(setup(&config(&py, per_user, extra), engine).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_users_at_once_each_reach_only_their_own_session() {
    let Some(s) = started(true, "", EngineConfig::default()).await else {
        return;
    };
    let s = std::sync::Arc::new(s);
    let users: Vec<String> = (0..100).map(|i| format!("user-{i:03}")).collect();
    let calls = users.iter().map(|u| {
        let s = std::sync::Arc::clone(&s);
        let u = u.clone();
        tokio::spawn(async move {
            let (first, _) = call(&s, &u, "id.whoami", json!({})).await;
            let (second, _) = call(&s, &u, "id.whoami", json!({})).await;
            (u, first, second)
        })
    });
    let calls: Vec<_> = calls.collect();
    for c in calls {
        let (user, first, second) = c.await.unwrap();
        assert_eq!(
            first,
            json!(user).to_string(),
            "{user} saw another identity"
        );
        assert_eq!(second, first, "{user}'s second call");
    }
    let status = &s.tools.status()[0];
    assert_eq!(
        status.sessions, 100,
        "one session per user, reused: {status:?}"
    );
    // The user's last engine closed: the session goes; others stay.
    s.tools
        .close_user(&engine_core::UserId::new("user-000").unwrap());
    assert_eq!(s.tools.status()[0].sessions, 99);
    // Idle sessions (idleTimeoutSecs 1) are closed by the upkeep.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.tools.status()[0].sessions > 0 {
        assert!(
            Instant::now() < deadline,
            "idle sessions stay open: {:?}",
            s.tools.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_timeout_tells_the_server_to_cancel_and_ends_the_call_at_once() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let extra = format!(
        r#", "MCP_CANCEL_LOG": {}"#,
        json!(log.path().display().to_string())
    );
    let engine = EngineConfig::builder()
        .tool_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let Some(s) = started(false, &extra, engine).await else {
        return;
    };
    let t = Instant::now();
    let (_, events) = call(&s, "ann", "id.wait", json!({})).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(completions(&events)[0].1, ToolStatus::Timeout);
    // The server heard of it: its log gets the request's id (bounded wait for the file).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log.path()).unwrap();
        if !text.trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The session is still good for the next call.
    let (who, _) = call(&s, "ann", "id.whoami", json!({})).await;
    assert_eq!(who, json!("shared").to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancel_tells_the_server_to_cancel() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let extra = format!(
        r#", "MCP_CANCEL_LOG": {}"#,
        json!(log.path().display().to_string())
    );
    let Some(s) = started(false, &extra, EngineConfig::default()).await else {
        return;
    };
    let input = json!({"tool": "id.wait", "args": {}}).to_string();
    let mut cancelled_at = None;
    let events = support::run_as(&s, "ann", "caller", &input, |e, _, _| {
        if matches!(e.event, engine_core::AgentEvent::ToolExecuting { .. }) {
            cancelled_at = Some(Instant::now());
            return true;
        }
        false
    })
    .await;
    assert!(cancelled_at.unwrap().elapsed() < Duration::from_secs(3));
    assert_eq!(completions(&events)[0].1, ToolStatus::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(log.path())
        .unwrap()
        .trim()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the server never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_call_fails_the_call_clearly_and_is_started_again() {
    let Some(s) = started(false, "", EngineConfig::default()).await else {
        return;
    };
    let (_, events) = call(&s, "ann", "id.crash", json!({})).await;
    let (_, status, error) = &completions(&events)[0];
    assert_eq!(*status, ToolStatus::Error);
    let error = error.as_deref().unwrap();
    assert!(
        error.contains("stopped during the call") && error.contains("`id`"),
        "{error}"
    );
    let (who, _) = call(&s, "ann", "id.whoami", json!({})).await;
    assert_eq!(who, json!("shared").to_string(), "started again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_errors_and_bad_arguments_reach_the_agent_as_tool_errors() {
    let Some(s) = started(false, "", EngineConfig::default()).await else {
        return;
    };
    let (_, events) = call(&s, "ann", "id.fail", json!({"why": "no disk"})).await;
    let (_, status, error) = &completions(&events)[0];
    assert_eq!(*status, ToolStatus::Error);
    assert!(
        error.as_deref().unwrap().contains("failed because no disk"),
        "{error:?}"
    );
    let (answer, _) = call(&s, "ann", "id.whoami", json!([1])).await;
    assert!(answer.contains("must be a JSON object"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changed_from_the_server_refreshes_the_cached_tool_list() {
    let Some(s) = started(false, "", EngineConfig::default()).await else {
        return;
    };
    assert!(s.tools.tool("id.extra").is_none());
    call(&s, "ann", "id.grow", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.tools.tool("id.extra").is_none() {
        assert!(Instant::now() < deadline, "list_changed was not acted on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_start_is_reported_and_retried_while_others_work() {
    let py = match python() {
        Some(p) => p,
        None => return,
    };
    let text = format!(
        r#"{{"mcpServers": {{
            "id": {{"command": {cmd}, "args": [{script}]}},
            "gone": {{"command": "/nonexistent/mcp-server"}}}}}}"#,
        cmd = json!(py.display().to_string()),
        script = json!(identity_script()),
    );
    let s = setup(&text, EngineConfig::default()).await;
    let status = s.tools.status();
    assert!(status.iter().any(|x| x.name == "id" && x.listed));
    assert!(status.iter().any(|x| x.name == "gone" && !x.listed));
    let (who, _) = call(&s, "ann", "id.whoami", json!({})).await;
    assert_eq!(who, json!("").to_string());
    // Either the refresh tried a start itself, or a retry is already scheduled (the backoff
    // after the boot attempt): both name the server and say it does not run.
    let err = s.tools.refresh("gone").await.unwrap_err().to_string();
    assert!(
        err.contains("`gone`")
            && (err.contains("could not be started") || err.contains("its last start failed")),
        "{err}"
    );
}
