//! The real binary under abuse: a client that stops answering pings is closed (1011) and its
//! slot freed; a token that expires while connected closes the socket (4401); a slowloris
//! client is cut off by the header-read timeout; the per-address and global caps refuse with
//! 429 and 503 and count it; `--dev-tokens` relaxes nothing (a short secret is refused at start,
//! `/dev/token` answers loopback callers only, no token is printed); tokens ride in the
//! header, the subprotocol (echoed `engine-gateway.v1`) or a one-time ticket, the query string
//! only behind `--allow-query-token`; `aud`, `iss`, `nbf` and the lifetime as configured.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine_core::UserId;
use engine_gateway::{Claims, TokenKeys, TokenRules};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{self, Message};

mod common;

use common::{start_gateway, ws_request, Running, Ws, SECRET};

fn token(user: &str, secs: u64) -> String {
    TokenKeys::new(SECRET.as_bytes())
        .issue(&UserId::new(user).unwrap(), secs)
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Opens a WebSocket from the local address `from` (any of 127.0.0.0/8 on Linux).
async fn connect_from(
    from: IpAddr,
    addr: &str,
    request: Request,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await
}

fn status(r: &Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error>) -> u16 {
    match r {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected {e}"),
    }
}

/// The close frame the socket ends with (20 s at most), answering pings on the way.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("the socket closes within 20 s");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) | None => return 1005,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error before the close frame: {e}"),
        }
    }
}

/// The value of a sample of `/metrics`, 0 when absent.
async fn metric(gw: &Running, sample: &str) -> f64 {
    let (_, _, body) = common::http_get(&gw.addr, "/metrics", "").await;
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Does the WebSocket handshake by hand and then reads raw bytes without ever answering a
/// ping; returns the close code the server sends and when it came (the server's frames are
/// unmasked: opcode in the low nibble of byte 0, payload length in byte 1).
async fn silent_client(addr: &str, token: &str) -> (u16, Instant) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The response head, then frames.
    let head_end = loop {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    buf.drain(..head_end);
    loop {
        // Parse whole frames from the front of `buf`.
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let len = usize::from(buf[1] & 0x7f);
            let (start, len) = match len {
                126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
                126 => break,
                127 => panic!("no frame this large is expected"),
                n => (2, n),
            };
            if buf.len() < start + len {
                break;
            }
            if opcode == 0x8 {
                let code = u16::from_be_bytes([buf[start], buf[start + 1]]);
                return (code, Instant::now());
            }
            buf.drain(..start + len);
        }
        let n = tcp.read(&mut chunk).await.unwrap_or(0);
        assert!(n > 0, "closed without a close frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_1011_and_its_slot_freed() {
    let gw = start_gateway(&[
        "--ping-interval-ms",
        "400",
        "--pong-timeout-ms",
        "400",
        "--max-connections-per-user",
        "1",
    ])
    .await;
    // A client that answers pings (tokio-tungstenite does while it reads) stays open across
    // several intervals: it sees pings, and no close.
    let mut alive = common::connect(&gw.addr, "pinged").await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(2000);
    while let Ok(msg) = tokio::time::timeout_at(until, alive.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("an answering client got {other:?}"),
        }
    }
    assert!(pings >= 3, "pings every 400 ms, got {pings} in 2 s");

    let opened = Instant::now();
    let (code, at) = tokio::time::timeout(
        Duration::from_secs(10),
        silent_client(&gw.addr, &token("silent", 600)),
    )
    .await
    .expect("the silent client is closed within 10 s");
    assert_eq!(code, 1011);
    let took = at - opened;
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before ping interval + pong timeout"
    );
    // The user's only slot is free again: a new socket for the same user opens (bounded retry:
    // the server releases it as the closed connection's task ends).
    let mut reopened = false;
    for _ in 0..50 {
        let r = tokio_tungstenite::connect_async(ws_request(&gw.addr, &token("silent", 600))).await;
        if status(&r) == 101 {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened, "the reaped socket's slot was never freed");
    assert!(
        metric(
            &gw,
            "engine_gateway_connections_closed_total{reason=\"ping_timeout\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_while_connected_closes_the_socket_4401() {
    let gw = start_gateway(&["--token-leeway-secs", "0"]).await;
    let mut ws = common::connect(&gw.addr, "short-lived").await;
    // A token living 2 s.
    let keys = TokenKeys::new(SECRET.as_bytes());
    let short = keys.issue(&UserId::new("brief").unwrap(), 2).unwrap();
    let (mut brief, _) = tokio_tungstenite::connect_async(ws_request(&gw.addr, &short))
        .await
        .unwrap();
    let opened = Instant::now();
    assert_eq!(close_code(&mut brief).await, 4401);
    assert!(
        opened.elapsed() <= Duration::from_secs(4),
        "{:?}",
        opened.elapsed()
    );
    // The other socket (a 600 s token) is still open: it answers a frame.
    common::send(
        &mut ws,
        serde_json::json!({"type":"cancel","run_id":"run_x"}),
    )
    .await;
    assert_eq!(common::next(&mut ws).await["code"], "unknown_run");
    assert_eq!(
        metric(
            &gw,
            "engine_gateway_connections_closed_total{reason=\"token_expired\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_by_the_header_read_timeout() {
    let gw = start_gateway(&["--header-read-timeout-ms", "1000"]).await;
    let mut tcp = TcpStream::connect(&gw.addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = None;
    // One byte every 100 ms: the whole head would take about 7 s.
    for byte in head {
        if tcp.write_all(&[*byte]).await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut probe)).await {
            Ok(Ok(0) | Err(_)) => {
                cut = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => {
                // A 408 answer counts as cut off too: the connection then closes.
                cut = Some(started.elapsed());
                break;
            }
            Err(_) => {}
        }
    }
    let cut = cut.expect("the server waited for the whole slow head");
    assert!(
        cut >= Duration::from_millis(900) && cut <= Duration::from_secs(4),
        "cut off after {cut:?}"
    );
    // A normal request still works.
    let (code, _, _) = common::http_get(&gw.addr, "/healthz", "").await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_and_global_caps_refuse_with_429_and_503() {
    let gw = start_gateway(&["--max-connections-per-ip", "2", "--max-connections", "3"]).await;
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    let three: IpAddr = "127.0.0.3".parse().unwrap();
    let req = |user: &str| ws_request(&gw.addr, &token(user, 600));
    let a = connect_from(one, &gw.addr, req("a")).await;
    let b = connect_from(one, &gw.addr, req("b")).await;
    assert_eq!((status(&a), status(&b)), (101, 101));
    assert_eq!(status(&connect_from(one, &gw.addr, req("c")).await), 429);
    let d = connect_from(two, &gw.addr, req("d")).await;
    assert_eq!(status(&d), 101);
    let full = connect_from(three, &gw.addr, req("e")).await;
    assert_eq!(status(&full), 503);
    assert_eq!(
        metric(
            &gw,
            "engine_gateway_upgrades_refused_total{reason=\"address_full\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "engine_gateway_upgrades_refused_total{reason=\"server_full\"}"
        )
        .await,
        1.0
    );
    // A socket that closes gives its slots back.
    let (mut a, _) = a.unwrap();
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = a.next().await {}
    let mut opened = false;
    for _ in 0..50 {
        if status(&connect_from(three, &gw.addr, req("f")).await) == 101 {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opened, "the closed socket's slot never came back");
}

/// The binary's exit code and stderr.
fn run_cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine-gateway"))
        .args(args)
        .env_remove("GATEWAY_JWT_SECRET")
        .env_remove("GATEWAY_DEV_TOKENS")
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dev_tokens_with_a_short_secret_is_refused_at_start() {
    let (code, err) = run_cli(&[
        "--addr",
        "127.0.0.1:0",
        "--database-url",
        "memory",
        "--jwt-secret",
        "short",
        "--dev-tokens",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least 32"), "{err}");
    assert!(!err.contains("token for user"), "{err}");
}

/// This machine's first non-loopback IPv4 address, if it has one (a UDP "connect" sends
/// nothing; it only picks the route's source address).
fn outside_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_answer_loopback_callers_only_and_print_no_token() {
    let mut gw = start_gateway(&["--addr", "0.0.0.0:0", "--dev-tokens"]).await;
    let port: u16 = gw.addr.rsplit(':').next().unwrap().parse().unwrap();
    let local = format!("127.0.0.1:{port}");
    let (code, _, body) = common::http_get(&local, "/dev/token?user=alice", "").await;
    assert_eq!(code, 200, "{body}");
    // Another loopback source address (127.0.0.2) counts as loopback.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(local.parse().unwrap()).await.unwrap();
    tcp.write_all(b"GET /dev/token?user=bob HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    match outside_address() {
        Some(ip) => {
            let outside = SocketAddr::new(ip, port).to_string();
            let (code, _, body) = common::http_get(&outside, "/dev/token?user=alice", "").await;
            assert_eq!(code, 403, "{body}");
            assert!(!body.contains("token\""), "{body}");
        }
        None => eprintln!("no non-loopback address on this machine: the 403 case is not run"),
    }
    // The start line named the mode; no line so far carries a token.
    common::terminate(&gw.child);
    let mut lines = Vec::new();
    while let Ok(Some(line)) = gw.logs.next_line().await {
        lines.push(line);
    }
    let text = lines.join("\n");
    assert!(!text.contains("eyJ"), "a token in the logs:\n{text}");
}

/// Claims with every registered field set for `alice`, changed by `f`.
fn claims(f: impl FnOnce(&mut Claims)) -> Claims {
    let now = now();
    let mut c = Claims {
        sub: "alice".into(),
        exp: now + 300,
        iat: Some(now),
        nbf: Some(now),
        iss: Some("https://id.example".into()),
        aud: Some("engine".into()),
    };
    f(&mut c);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_against_aud_iss_nbf_and_lifetime_and_ride_where_allowed() {
    let gw = start_gateway(&[
        "--jwt-issuer",
        "https://id.example",
        "--jwt-audience",
        "engine",
        "--max-token-lifetime-secs",
        "3600",
    ])
    .await;
    let keys = TokenKeys::with_rules(SECRET.as_bytes(), TokenRules::default());
    let sign = |c: Claims| keys.sign(&c).unwrap();
    let cases: Vec<(&str, Claims, u16)> = vec![
        ("aud and iss as configured", claims(|_| {}), 101),
        (
            "another audience",
            claims(|c| c.aud = Some("other".into())),
            401,
        ),
        ("no audience", claims(|c| c.aud = None), 401),
        (
            "another issuer",
            claims(|c| c.iss = Some("https://x.example".into())),
            401,
        ),
        ("no issuer", claims(|c| c.iss = None), 401),
        (
            "not valid for a minute",
            claims(|c| c.nbf = Some(now() + 60)),
            401,
        ),
        ("two hours long", claims(|c| c.exp = now() + 7200), 401),
        ("expired", claims(|c| c.exp = now() - 60), 401),
    ];
    for (what, c, expected) in cases {
        let r = tokio_tungstenite::connect_async(ws_request(&gw.addr, &sign(c))).await;
        assert_eq!(status(&r), expected, "{what}");
    }
    let good = sign(claims(|_| {}));

    // The subprotocol: the server answers engine-gateway.v1, never the token.
    let mut request = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("engine-gateway.v1, bearer.{good}").parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "engine-gateway.v1"
    );
    assert_eq!(common::next(&mut ws).await["type"], "welcome");

    // The query string: refused by default, with a message saying what to do.
    let query = tokio_tungstenite::connect_async(format!("ws://{}/ws?token={good}", gw.addr)).await;
    match &query {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(body.contains("query string"), "{body}");
        }
        other => panic!("a query-string token was not refused: {other:?}"),
    }

    // A one-time ticket, bought with the bearer token.
    let (code, _, body) = post(
        &gw.addr,
        "/ws/ticket",
        &format!("Authorization: Bearer {good}\r\n"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let ticket: Value = serde_json::from_str(&body).unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    let url = format!("ws://{}/ws?ticket={ticket}", gw.addr);
    let (mut by_ticket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    assert_eq!(common::next(&mut by_ticket).await["user_id"], "alice");
    let again = tokio_tungstenite::connect_async(url.as_str()).await;
    assert_eq!(status(&again), 401, "a ticket works once");
    let (code, _, _) = post(&gw.addr, "/ws/ticket", "Authorization: Bearer forged\r\n").await;
    assert_eq!(code, 401);

    // Behind the flag, the query string works.
    let flagged = start_gateway(&["--allow-query-token"]).await;
    let plain = token("alice", 600);
    let r =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={plain}", flagged.addr)).await;
    assert_eq!(status(&r), 101);
}

/// A plain HTTP/1.1 POST with an empty body; returns (status, head, body).
async fn post(addr: &str, path: &str, extra: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}
