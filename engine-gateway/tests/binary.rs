//! The real `engine-gateway` binary: its command line (help, version, unknown flags, bad values,
//! a short production secret), and a shutdown by SIGTERM with 120 sockets and 60 slow runs in
//! flight, over three rounds: every socket gets its runs' terminal events and a 1001 close frame
//! before the process exits 0.

use std::time::Duration;

use engine_core::UserId;
use engine_gateway::TokenKeys;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_engine-gateway");
mod common;

use common::SECRET;

fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("GATEWAY_ADDR")
        .env_remove("GATEWAY_JWT_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_helps_and_refuses_bad_input_by_name() {
    let (code, out, _) = run_cli(&["--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--addr",
        "--jwt-secret",
        "--log-format",
        "--max-queued-runs",
        "GATEWAY_ADDR",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
    let (code, out, _) = run_cli(&["--version"], &[]);
    assert_eq!((code, out.trim()), (0, "engine-gateway 0.1.0"));

    // Each refusal exits 2 and names the flag (or variable) and the value.
    /// Arguments, environment, words the error must contain.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (&["--adr", "127.0.0.1:1"], &[], &["--adr", "--addr"]),
        (&["--addr=127.0.0.1"], &[], &["--addr", "127.0.0.1"]),
        (
            &[],
            &[("GATEWAY_ADDR", "nonsense")],
            &["--addr", "nonsense"],
        ),
        (
            &["--max-frame-bytes", "lots"],
            &[],
            &["--max-frame-bytes", "lots"],
        ),
        (
            &["--max-frame-bytes", "10"],
            &[],
            &["max_frame_bytes", "10"],
        ),
        (
            &["--jwt-secret", "hunter"],
            &[],
            &["6 bytes", "at least 32"],
        ),
        (&["--agent", "nobody"], &[], &["nobody", "assistant"]),
        (&["--log-format", "xml"], &[], &["--log-format", "xml"]),
        (
            &["--database-url", "mysql://app:pw@127.0.0.1:1/db"],
            &[],
            &["mysql://app:***@127.0.0.1:1/db", "sqlite://", "postgres://"],
        ),
        (
            &["--database-url", "postgres://app:pw@127.0.0.1:1/db"],
            &[],
            &["cannot open the database postgres://app:***@127.0.0.1:1/db"],
        ),
        (
            &[
                "--redis-url",
                "redis://127.0.0.1:1",
                "--database-url",
                "sqlite:///tmp/x.db",
            ],
            &[],
            &["--redis-url", "postgres://", "one process"],
        ),
    ];
    for (args, env, words) in cases {
        let (code, out, err) = run_cli(args, env);
        assert_eq!(code, 2, "{args:?} {env:?}: {out}{err}");
        for w in *words {
            assert!(
                err.contains(w),
                "{args:?} {env:?}: {w:?} missing from:\n{err}"
            );
        }
        assert!(
            !err.contains("hunter") && !err.contains(":pw@"),
            "the secret is never printed: {err}"
        );
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(40), ws.next())
            .await
            .expect("a frame within 40 s")?;
        match msg {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(c)) => {
                return Some(json!({"type":"closed","code": c.map(|c| u16::from(c.code))}))
            }
            Ok(_) => {}
            Err(_) => return Some(json!({"type":"closed","code": null})),
        }
    }
}

/// One round: start the binary, 60 users x 2 sockets, one slow run per user, SIGTERM.
async fn round(round: usize) {
    let common::Running {
        mut child,
        addr,
        logs: mut lines,
        data: _data,
    } = common::start_gateway(&[]).await;
    let logs = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });

    let keys = TokenKeys::new(SECRET.as_bytes());
    let mut sockets = Vec::new();
    for u in 0..60 {
        let user = UserId::new(format!("round{round}-user{u}")).unwrap();
        let token = keys.issue(&user, 600).unwrap();
        for _ in 0..2 {
            let (mut ws, _) = tokio_tungstenite::connect_async(common::ws_request(&addr, &token))
                .await
                .expect("upgrade");
            assert_eq!(next(&mut ws).await.unwrap()["type"], "welcome");
            sockets.push((user.clone(), ws));
        }
    }
    // One slow run per user, sent on its first socket; both sockets see it start. Its first
    // events may reach the socket before `run_accepted` does: keep them.
    let mut runs = Vec::new();
    let mut early: Vec<Vec<Value>> = Vec::new();
    for pair in sockets.chunks_mut(2) {
        let ws = &mut pair[0].1;
        ws.send(Message::Text(
            json!({"type":"user_message","thread_id":"t","text":"600000","agent":"waiter"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let mut seen = Vec::new();
        let run = loop {
            let f = next(ws).await.unwrap();
            if f["type"] == "run_accepted" {
                break f["run_id"].as_str().unwrap().to_owned();
            }
            seen.push(f);
        };
        runs.push(run);
        early.push(seen);
        early.push(Vec::new());
    }
    for (i, (_, ws)) in sockets.iter_mut().enumerate() {
        let started =
            |f: &Value| f["run_id"] == json!(runs[i / 2]) && f["event"]["type"] == "agent_thinking";
        if early[i].iter().any(started) {
            continue;
        }
        loop {
            let f = next(ws).await.unwrap();
            if started(&f) {
                break;
            }
        }
    }

    common::terminate(&child);

    for (i, (user, ws)) in sockets.iter_mut().enumerate() {
        let mut terminal = None;
        let close = loop {
            let f = match tokio::time::timeout(Duration::from_secs(30), next(ws)).await {
                Ok(Some(f)) => f,
                Ok(None) => break Value::Null,
                Err(_) => {
                    let alive = child.try_wait().map(|s| s.is_none()).unwrap_or(false);
                    panic!("round {round} socket {i}: nothing for 30 s after SIGTERM (gateway alive: {alive}, terminal seen: {})", terminal.is_some());
                }
            };
            if f["type"] == "closed" {
                break f["code"].clone();
            }
            if f["type"] == "event" {
                assert_eq!(f["user_id"], json!(user.as_str()), "another user's event");
                if f["event"]["type"] == "agent_completed" {
                    terminal = Some(f);
                }
            }
        };
        let terminal =
            terminal.unwrap_or_else(|| panic!("round {round} socket {i} got no terminal event"));
        assert_eq!(terminal["run_id"], json!(runs[i / 2]));
        assert_eq!(terminal["event"]["status"], "cancelled");
        assert_eq!(
            close,
            json!(1001),
            "round {round} socket {i} closed with {close}"
        );
    }
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the gateway exits after the shutdown")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
    let logs = logs.await.unwrap();
    assert!(
        logs.iter().any(|l| l.contains("shutdown signal received")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "JSON logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_socket_after_its_terminal_events() {
    for r in 0..3 {
        round(r).await;
    }
}

#[test]
fn an_invalid_mcp_config_stops_the_start_naming_file_server_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mcp.json");
    std::fs::write(
        &file,
        r#"{"mcpServers": {"files": {"command": "x", "perUser": "yes"}}}"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    for (args, env) in [
        (vec!["--mcp-config", path], vec![]),
        (vec![], vec![("GATEWAY_MCP_CONFIG", path)]),
    ] {
        let (code, out, err) = run_cli(&args, &env);
        assert_eq!(code, 2, "{out}{err}");
        for w in [path, "`files`", "`perUser`", "true or false"] {
            assert!(err.contains(w), "{w:?} missing from:\n{err}");
        }
    }
}
