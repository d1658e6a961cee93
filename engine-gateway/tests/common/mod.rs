//! Shared by the gateway's tests: start the real binary in production mode on a free loopback
//! port with JSON logs and wait until it says where it listens; plain HTTP GETs.
// Each test binary uses some of these helpers, not all.
#![allow(dead_code)]

pub(crate) mod sse;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

/// The production secret the tests start the gateway with (and mint tokens from).
pub(crate) const SECRET: &str = "a-production-secret-of-at-least-32-bytes!";

/// The running gateway, its address, and the rest of its log lines.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) logs: Lines<BufReader<ChildStderr>>,
    /// The data directory of a gateway started without one of its own (removed on drop).
    pub(crate) data: Option<tempfile::TempDir>,
}

/// Starts the binary with `extra` flags and waits (30 s at most) for its listening line.
/// Unless `extra` names a data directory or a database, the gateway keeps its SQLite file in a
/// temporary directory of its own (never in the source tree, never shared between tests).
pub(crate) async fn start_gateway(extra: &[&str]) -> Running {
    let own = !extra
        .iter()
        .any(|a| *a == "--data-dir" || *a == "--database-url");
    let data = own.then(|| tempfile::tempdir().expect("a temporary directory"));
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine-gateway"));
    if let Some(dir) = &data {
        command.arg("--data-dir").arg(dir.path());
    }
    if !extra.contains(&"--addr") {
        command.args(["--addr", "127.0.0.1:0"]);
    }
    let mut child = command
        .args(["--log-format", "json"])
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
    Running {
        child,
        addr,
        logs,
        data,
    }
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

/// A plain HTTP/1.1 GET on loopback with `extra` header lines; returns (status, lower-cased
/// head, body).
pub(crate) async fn http_get(addr: &str, path: &str, extra: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A client's WebSocket.
pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The upgrade request for `ws://{addr}/ws` with `token` in the `Authorization` header.
pub(crate) fn ws_request(
    addr: impl std::fmt::Display,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("a request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    request
}

/// Opens a socket as `user` (a token signed with [`SECRET`]) and reads its `welcome`.
pub(crate) async fn connect(addr: &str, user: &str) -> Ws {
    let token = engine_gateway::TokenKeys::new(SECRET.as_bytes())
        .issue(&engine_core::UserId::new(user).unwrap(), 600)
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(addr, &token))
        .await
        .expect("upgrade");
    let welcome = next(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

/// The next text frame, as JSON (20 s at most; the socket must stay open).
pub(crate) async fn next(ws: &mut Ws) -> Value {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("socket open")
            .expect("no socket error");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Sends one JSON frame.
pub(crate) async fn send(ws: &mut Ws, frame: Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        frame.to_string().into(),
    ))
    .await
    .unwrap();
}
