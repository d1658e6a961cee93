//! The gateway's sockets beside a raw floor, each server in a child process (this executable
//! with `--server ours|floor`, mimalloc, 2 workers) and the load generator here on a runtime of
//! its own, loopback only, every loop bounded:
//! - `memory_socket`: resident bytes per idle authenticated socket that received its `welcome`,
//!   at 5,000 sockets (`SOCKETS_IDLE`), ours vs an axum server that accepts, sends one
//!   `welcome` and holds the socket with the same buffer settings; and the resident memory left
//!   once they closed;
//! - `accepts`: upgrades per second (TCP connect, handshake, JWT check for ours, `welcome`);
//! - `latency_stream`: p99 event-to-socket latency with 1,000 users streaming answers, at
//!   15,000 open sockets (`SOCKETS_MANY`) vs 1,000.
//!
//! Prints `name  ours  baseline  ratio` lines. Client sockets take source addresses across
//! 127.0.0.2-127.0.0.201, so that ephemeral ports and TIME_WAIT do not run out.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "a-benchmark-secret-of-at-least-32-bytes";

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Raises this process's open-file limit to its hard limit where allowed.
fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

// ---- the servers (child side) ----

fn serve(which: &str) {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        println!("port {port}");
        std::io::stdout().flush().unwrap();
        // Serve until the parent closes our stdin.
        let stop = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            })
            .await;
        };
        match which {
            "ours" => {
                let mut config = engine_gateway::GatewayConfig::with_secret(SECRET);
                config.max_connections = 100_000;
                config.max_connections_per_ip = 100_000;
                config.messages_per_minute = 10_000;
                let gw =
                    engine_gateway::Gateway::new(config, engine_gateway::demo::demo_registry())
                        .unwrap();
                gw.serve(listener, stop).await.unwrap();
            }
            _ => {
                use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
                let app = axum::Router::new().route(
                    "/ws",
                    axum::routing::get(|ws: WebSocketUpgrade| async move {
                        ws.read_buffer_size(4096).write_buffer_size(0).on_upgrade(
                            |mut socket| async move {
                                let welcome = r#"{"type":"welcome","user_id":"floor"}"#;
                                if socket.send(AxMessage::Text(welcome.into())).await.is_ok() {
                                    while let Some(Ok(_)) = socket.recv().await {}
                                }
                            },
                        )
                    }),
                );
                use axum::serve::ListenerExt as _;
                // TCP_NODELAY as the gateway sets it, or Nagle's delay would cap the floor.
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                    .unwrap();
            }
        }
    });
}

/// A server child and the port it listens on.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(which: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--server", which])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server child starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .expect("the child prints its port");
        Self { child, port }
    }
    fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

// ---- the load generator (this process) ----

fn token(user: &str) -> String {
    engine_gateway::TokenKeys::new(SECRET.as_bytes())
        .issue(&engine_core::UserId::new(user).unwrap(), 3600)
        .unwrap()
}

/// Opens socket number `i` as `user` and reads its `welcome` (30 s at most).
async fn open(port: u16, i: usize, user: &str, token: Option<&str>) -> Ws {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8));
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect");
    let mut request = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let _ = user;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("upgrade within 30 s")
    .expect("upgrade");
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => return ws,
            Ok(Some(Ok(_))) => {}
            other => panic!("no welcome: {other:?}"),
        }
    }
}

/// Opens `n` sockets (users `prefix-0..`) with `parallel` upgrades in flight; returns them and
/// the upgrades per second.
async fn open_many(
    port: u16,
    n: usize,
    first: usize,
    prefix: &str,
    jwt: bool,
    parallel: usize,
) -> (Vec<Ws>, f64) {
    // SOCKETS_PER_USER > 1 (at most 5, the gateway's default per-user cap) shares users.
    let per_user = env_usize("SOCKETS_PER_USER", 1).clamp(1, 5);
    let tokens: Vec<Option<String>> = (0..n)
        .map(|i| jwt.then(|| token(&format!("{prefix}-{}", (first + i) / per_user))))
        .collect();
    let started = Instant::now();
    let sockets: Vec<Ws> = futures_util::stream::iter(tokens.into_iter().enumerate())
        .map(|(i, t)| async move {
            open(
                port,
                first + i,
                &format!("{prefix}-{}", first + i),
                t.as_deref(),
            )
            .await
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    (sockets, rate)
}

/// Closes every socket and waits (bounded) for the server's closing handshakes.
async fn close_all(sockets: Vec<Ws>) {
    futures_util::stream::iter(sockets)
        .for_each_concurrent(256, |mut ws| async move {
            let _ = ws.close(None).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        })
        .await;
}

/// The lowest resident size over `secs` seconds (sampled every 100 ms).
async fn settled_rss(server: &Server, secs: u64) -> u64 {
    let mut low = u64::MAX;
    for _ in 0..secs * 10 {
        low = low.min(server.rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    low
}

struct MemoryRound {
    per_socket: f64,
    accepts_per_s: f64,
    /// Resident bytes left after close, above the resident size before any socket.
    left_after_close: i64,
}

async fn memory_round(which: &str, n: usize) -> MemoryRound {
    let server = Server::start(which);
    let jwt = which == "ours";
    // Warm up the runtime, the allocator and the handshake path, then measure from there.
    let (warm, _) = open_many(server.port, 100, 0, "warm", jwt, 50).await;
    let start = settled_rss(&server, 1).await;
    let (held, rate) = open_many(server.port, n, 100, "idle", jwt, 64).await;
    let loaded = settled_rss(&server, 1).await;
    close_all(held).await;
    close_all(warm).await;
    let after = settled_rss(&server, 3).await;
    server.stop();
    MemoryRound {
        per_socket: loaded.saturating_sub(start) as f64 / n as f64,
        accepts_per_s: rate,
        left_after_close: after as i64 - start as i64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// p99 event-to-socket latency (µs) with `streaming` users each sending one message while
/// `total` sockets are open.
async fn latency_round(total: usize, streaming: usize) -> f64 {
    let server = Server::start("ours");
    let (active, _) = open_many(server.port, streaming, 0, "stream", true, 64).await;
    let (idle, _) = open_many(server.port, total - streaming, streaming, "quiet", true, 64).await;
    // One run first, so the measured burst does not pay the server's first-run costs.
    {
        let mut warm = open(server.port, total, "warm-run", Some(&token("warm-run"))).await;
        let msg = r#"{"type":"user_message","thread_id":"t","text":"what time is it?"}"#;
        warm.send(Message::Text(msg.into())).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, warm.next()).await {
            if matches!(&m, Message::Text(t) if t.as_str().contains("agent_completed")) {
                break;
            }
        }
    }
    let lat = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    futures_util::stream::iter(active)
        .for_each_concurrent(None, |mut ws| {
            let lat = Arc::clone(&lat);
            async move {
                let msg = r#"{"type":"user_message","thread_id":"t","text":"what time is it?"}"#;
                ws.send(Message::Text(msg.into())).await.unwrap();
                let mut mine = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
                    let Message::Text(t) = m else { continue };
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if let Some(ts) = v["timestamp_us"].as_u64() {
                        mine.push(now_us().saturating_sub(ts));
                    }
                    if v["event"]["type"] == "agent_completed" {
                        break;
                    }
                }
                lat.lock().unwrap().extend(mine);
                let _ = ws.close(None).await;
            }
        })
        .await;
    close_all(idle).await;
    server.stop();
    let mut all = std::mem::take(&mut *lat.lock().unwrap());
    all.sort_unstable();
    if all.is_empty() {
        return f64::NAN;
    }
    all[(all.len() * 99 / 100).min(all.len() - 1)] as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--server") {
        serve(args.get(i + 1).map_or("ours", String::as_str));
        return;
    }
    // `cargo bench` passes `--bench`; only our own flags matter.
    let limit = raise_nofile();
    let idle_n = env_usize("SOCKETS_IDLE", 5_000);
    let many = env_usize("SOCKETS_MANY", 15_000);
    let streaming = env_usize("SOCKETS_STREAMING", 1_000);
    let rounds = env_usize("SOCKETS_ROUNDS", 3);
    if (limit as usize) < many + 200 {
        println!("memory_socket skipped: the open-file limit is {limit}, below {many} sockets");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            // Interleaved, alternating which side goes first.
            let order = if r % 2 == 0 { ["floor", "ours"] } else { ["ours", "floor"] };
            for side in order {
                let m = memory_round(side, idle_n).await;
                if side == "ours" {
                    ours.push(m);
                } else {
                    floor.push(m);
                }
            }
        }
        let per = |v: &[MemoryRound]| median(v.iter().map(|m| m.per_socket).collect());
        let acc = |v: &[MemoryRound]| median(v.iter().map(|m| m.accepts_per_s).collect());
        let left = |v: &[MemoryRound]| median(v.iter().map(|m| m.left_after_close as f64).collect());
        let (o, f) = (per(&ours), per(&floor));
        println!(
            "memory_socket ({idle_n} idle)        {:>10.0} B/socket {:>10.0} B/socket {:>8.2}x",
            o,
            f,
            o / f
        );
        println!(
            "memory_socket left after close  {:>10.1} MB        {:>10.1} MB",
            left(&ours) / 1e6,
            left(&floor) / 1e6
        );
        let (ao, af) = (acc(&ours), acc(&floor));
        println!(
            "memory_socket accepts/s (JWT)   {:>10.0} /s       {:>10.0} /s       {:>8.2}x",
            ao,
            af,
            ao / af
        );
        let (mut small, mut big) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            if r % 2 == 0 {
                small.push(latency_round(streaming, streaming).await);
                big.push(latency_round(many, streaming).await);
            } else {
                big.push(latency_round(many, streaming).await);
                small.push(latency_round(streaming, streaming).await);
            }
        }
        let (small, big) = (median(small), median(big));
        println!(
            "latency_stream p99 at {many} vs {streaming} sockets ({streaming} streaming) {:>8.0} µs {:>8.0} µs {:>8.2}x",
            big,
            small,
            big / small
        );
    });
}
