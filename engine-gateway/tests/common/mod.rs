//! Shared by the tests that run the real `engine-gateway` binary: start it in production mode
//! on a free loopback port with JSON logs, and wait until it says where it listens.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

/// The production secret the tests start the gateway with (and mint tokens from).
pub(crate) const SECRET: &str = "a-production-secret-of-at-least-32-bytes!";

/// The running gateway, its address, and the rest of its log lines.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) logs: Lines<BufReader<ChildStderr>>,
}

/// Starts the binary with `extra` flags and waits (30 s at most) for its listening line.
pub(crate) async fn start_gateway(extra: &[&str]) -> Running {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine-gateway"))
        .args(["--addr", "127.0.0.1:0", "--log-format", "json"])
        .args(extra)
        .env("GATEWAY_JWT_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway starts");
    let mut logs = BufReader::new(child.stderr.take().expect("piped")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = logs.next_line().await {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(a) = v["fields"]["addr"].as_str() {
                return a.to_owned();
            }
        }
        panic!("the gateway exited before listening");
    })
    .await
    .expect("listening within 30 s");
    Running { child, addr, logs }
}

/// Sends SIGTERM to the gateway.
pub(crate) fn terminate(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}
