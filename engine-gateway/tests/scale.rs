//! The real binary holding 5,000 idle authenticated sockets (one user each, every one having
//! received its `welcome`): resident memory per socket within the issue's 16 KB, every socket
//! still answering after they are all open, every slot freed once they close, and the memory
//! they took reused by the next 5,000 (the allocator keeps it resident for reuse rather than
//! returning it to the system; see README). Client
//! sockets take source addresses across 127.0.0.2-127.0.0.201 (ephemeral ports last), and the
//! test raises its own open-file limit (the gateway inherits it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use engine_core::UserId;
use engine_gateway::TokenKeys;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{start_gateway, ws_request, SECRET};

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

const SOCKETS: usize = 5_000;

fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

async fn open(addr: SocketAddr, i: usize, keys: &TokenKeys) -> Ws {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8));
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(addr).await.expect("connect");
    let token = keys
        .issue(&UserId::new(format!("idle-{i}")).unwrap(), 600)
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(ws_request(addr, &token), stream)
        .await
        .expect("upgrade");
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert!(t.as_str().contains("welcome"), "{t}"),
        other => panic!("no welcome: {other:?}"),
    }
    ws
}

/// The lowest resident size of `pid` over `tenths` tenths of a second.
async fn settled(pid: u32, tenths: u32) -> u64 {
    let mut low = u64::MAX;
    for _ in 0..tenths {
        low = low.min(rss_of(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    low
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_sockets_fit_in_16_kb_and_free_their_slots() {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if limit < (SOCKETS as u64) * 2 + 200 && std::env::var_os("CI").is_none() {
        eprintln!(
            "skipped: the open-file limit is {limit}; {SOCKETS} sockets need about twice that"
        );
        return;
    }
    let gw = start_gateway(&[
        "--database-url",
        "memory",
        "--log",
        "warn,engine_gateway=info",
    ])
    .await;
    let common::Running {
        child,
        addr: gw_addr,
        mut logs,
        data: _data,
    } = gw;
    // Drain the logs, so that a full pipe never blocks the gateway.
    tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });
    let pid = child.id().unwrap();
    let addr: SocketAddr = gw_addr.parse().unwrap();
    let keys = TokenKeys::new(SECRET.as_bytes());
    // Warm up the handshake path and the allocator, then measure from there.
    let warm: Vec<Ws> = futures_util::stream::iter(0..100)
        .map(|i| open(addr, SOCKETS + i, &keys))
        .buffer_unordered(32)
        .collect()
        .await;
    let start = settled(pid, 5).await;
    let mut held: Vec<Ws> = futures_util::stream::iter(0..SOCKETS)
        .map(|i| open(addr, i, &keys))
        .buffer_unordered(64)
        .collect()
        .await;
    let loaded = settled(pid, 5).await;
    let per_socket = loaded.saturating_sub(start) / SOCKETS as u64;
    eprintln!(
        "{SOCKETS} idle sockets: {} MB -> {} MB, {per_socket} bytes per socket",
        start / 1_000_000,
        loaded / 1_000_000
    );
    // Every socket is alive: a few of them answer a frame.
    for ws in held.iter_mut().step_by(SOCKETS / 10) {
        ws.send(Message::Text(
            r#"{"type":"cancel","run_id":"run_x"}"#.into(),
        ))
        .await
        .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s");
        assert!(
            matches!(reply, Some(Ok(Message::Text(ref t))) if t.as_str().contains("unknown_run")),
            "{reply:?}"
        );
    }
    assert!(
        per_socket <= 16 * 1024,
        "{per_socket} bytes per idle socket (the bound: 16 KiB)"
    );
    close_all(held).await;
    // The gateway's connection gauge reaches 0 (each socket's task ended and freed its slot).
    assert_eq!(
        open_gauge(&gw_addr).await,
        100.0,
        "only the warm-up sockets are left open"
    );
    let after = settled(pid, 20).await;
    let grown = loaded.saturating_sub(start);
    eprintln!(
        "after close: {} MB ({} MB of the {} MB the sockets took stay resident)",
        after / 1_000_000,
        after.saturating_sub(start) / 1_000_000,
        grown / 1_000_000
    );
    // What stays resident is kept for reuse, not lost: 5,000 new sockets (other users) take
    // at most two thirds of what the first 5,000 took (measured: a sixth to two fifths, by
    // which of the allocator's thread heaps the new sockets land on; a leak takes it all).
    let again: Vec<Ws> = futures_util::stream::iter(0..SOCKETS)
        .map(|i| open(addr, 2 * SOCKETS + i, &keys))
        .buffer_unordered(64)
        .collect()
        .await;
    let reloaded = settled(pid, 5).await;
    let regrown = reloaded.saturating_sub(after);
    eprintln!("5,000 new sockets after close: +{} MB", regrown / 1_000_000);
    assert!(
        regrown * 3 <= grown * 2,
        "the closed sockets' memory was not reused: +{regrown} bytes for 5,000 new sockets after +{grown} for the first"
    );
    close_all(again.into_iter().chain(warm).collect()).await;
    assert_eq!(
        open_gauge(&gw_addr).await,
        0.0,
        "connections still counted open after every client closed"
    );
}

async fn close_all(sockets: Vec<Ws>) {
    futures_util::stream::iter(sockets)
        .for_each_concurrent(256, |mut ws| async move {
            let _ = ws.close(None).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        })
        .await;
}

/// `engine_gateway_connections` once it stops changing (10 s at most).
async fn open_gauge(addr: &str) -> f64 {
    let mut last = f64::NAN;
    for _ in 0..100 {
        let (_, _, body) = common::http_get(addr, "/metrics", "").await;
        let now = body
            .lines()
            .find_map(|l| {
                l.strip_prefix("engine_gateway_connections ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(f64::NAN);
        if now == last {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}
