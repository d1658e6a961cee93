//! The gateway's HTTP API on the real router (a `Gateway` serving on loopback, its run store on
//! a SQLite file), with a real HTTP client (`reqwest`, keep-alive) and a real WebSocket client.
//! Prints its own rows (what `cargo xtask bench api` runs):
//!
//! * `api_thread_read`: `GET /v1/threads/{id}?limit=20` of a 200-turn thread, 2,000 reads:
//!   p50 / p99, against the store's own `thread_messages(.., 20)` in the same process (the
//!   floor: what is left is HTTP, auth and JSON).
//! * `api_events`: `GET /v1/runs/{id}/events?limit=1000` pages of a stored 2,002-event run,
//!   events served per second, against `events_after(.., 1000)` on the store directly.
//! * `api_stream_vs_socket`: a run started with `POST /v1/threads/{id}/runs?stream=true` and
//!   read to its terminal Server-Sent Event, against the same run started with a socket's
//!   `user_message` and read to its terminal `event` frame; 300 of each, alternated, on a
//!   client runtime of its own. p50 / p99 of the time to the terminal event, and their ratio
//!   (target p50 ratio <= 1.2x).
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use engine_core::{async_trait, Agent, AgentRegistry, BoxError, RunContext, UserId};
use engine_factory::RunStore;
use engine_gateway::{Backends, Gateway, GatewayConfig};
use engine_store::{SqlStore, StoreConfig};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Answers at once with a short text streamed in three pieces (a chat turn).
struct Turn;

#[async_trait]
impl Agent for Turn {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let answer = format!("answer to {input}");
        for piece in ["answer", " to ", input] {
            ctx.stream(piece).await;
        }
        Ok(answer)
    }
}

/// Streams 2,000 pieces (a long answer).
struct Streamer;

#[async_trait]
impl Agent for Streamer {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        for i in 0..2_000 {
            ctx.stream(format!("w{i} ")).await;
        }
        Ok("streamed".into())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

struct Served {
    gateway: Gateway,
    store: SqlStore,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqlStore::open(StoreConfig::new(format!(
        "sqlite://{}",
        dir.path().join("gateway.db").display()
    )))
    .await
    .expect("store");
    let registry = AgentRegistry::builder()
        .agent("assistant", || Turn)
        .agent("streamer", || Streamer)
        .build()
        .expect("registry");
    let mut config = GatewayConfig::development();
    config.messages_per_minute = 10_000;
    config.resumes_per_minute = 10_000;
    let gateway = Gateway::with_backends(
        config,
        registry,
        Backends::default().with_store(store.clone()),
    )
    .expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let g = gateway.clone();
    tokio::spawn(async move {
        let _ = g
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    Served {
        gateway,
        store,
        addr,
        _dir: dir,
        stop,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Starts a run over HTTP and waits until its record has ended; returns its id.
async fn run_to_end(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    thread: &str,
    body: serde_json::Value,
) -> String {
    let run: serde_json::Value = http
        .post(format!("{base}/v1/threads/{thread}/runs"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("record");
    let id = run["run_id"].as_str().expect("run id").to_owned();
    loop {
        let r: serde_json::Value = http
            .get(format!("{base}/v1/runs/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("read")
            .json()
            .await
            .unwrap_or_default();
        if r["status"].as_str().is_some_and(|s| s != "running") {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn thread_read(s: &Served, http: &reqwest::Client, token: &str) {
    const TURNS: usize = 200;
    const READS: usize = 2_000;
    let base = format!("http://{}", s.addr);
    for turn in 0..TURNS {
        run_to_end(
            http,
            &base,
            token,
            "long-thread",
            serde_json::json!({"text": format!("question {turn}")}),
        )
        .await;
    }
    s.store.flush().await;
    let user = UserId::new("reader").expect("user");
    let thread = engine_core::ThreadId::new("long-thread").expect("thread");
    let url = format!("{base}/v1/threads/long-thread?limit=20");
    let mut ours = Vec::with_capacity(READS);
    let mut floor = Vec::with_capacity(READS);
    for _ in 0..READS {
        let start = Instant::now();
        let body = http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        ours.push(start.elapsed());
        assert!(body.len() > 100);
        let start = Instant::now();
        let got = s
            .store
            .thread_messages(&user, &thread, 20)
            .await
            .expect("read");
        floor.push(start.elapsed());
        assert_eq!(got.len(), 20);
    }
    ours.sort_unstable();
    floor.sort_unstable();
    let (o50, o99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
    let (f50, f99) = (percentile(&floor, 0.5), percentile(&floor, 0.99));
    println!(
        "{:<28} {:>22} {:>22} {:>8.2}x  (p99 against the store read; target p99 <= 2 ms: {})",
        "api_thread_read",
        format!("p50 {} us p99 {} us", us(o50), us(o99)),
        format!("p50 {} us p99 {} us", us(f50), us(f99)),
        o99.as_secs_f64() / f99.as_secs_f64().max(1e-9),
        if o99 <= Duration::from_millis(2) {
            "met"
        } else {
            "not met"
        }
    );
}

async fn events_served(s: &Served, http: &reqwest::Client, token: &str) {
    const READS: usize = 50;
    let base = format!("http://{}", s.addr);
    let run = run_to_end(
        http,
        &base,
        token,
        "long-run",
        serde_json::json!({"text": "go", "agent": "streamer"}),
    )
    .await;
    s.store.flush().await;
    let user = UserId::new("reader").expect("user");
    let run_id = engine_core::RunId::new(&run).expect("run id");
    let total = s
        .store
        .events_after(&user, &run_id, 0, 10_000)
        .await
        .expect("read")
        .expect("run")
        .events
        .len();
    let read_all_http = || async {
        let mut after = 0u64;
        let mut n = 0usize;
        loop {
            let page: serde_json::Value = http
                .get(format!(
                    "{base}/v1/runs/{run}/events?after_seq={after}&limit=1000"
                ))
                .bearer_auth(token)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("page");
            let events = page["events"].as_array().expect("events");
            n += events.len();
            after = events
                .last()
                .and_then(|e| e["seq"].as_u64())
                .unwrap_or(after);
            if page["more"] != true {
                return n;
            }
        }
    };
    let started = Instant::now();
    for _ in 0..READS {
        assert_eq!(read_all_http().await, total);
    }
    let ours = (READS * total) as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..READS {
        let mut after = 0u64;
        let mut n = 0;
        loop {
            let page = s
                .store
                .events_after(&user, &run_id, after, 1_000)
                .await
                .expect("read")
                .expect("run");
            n += page.events.len();
            after = page.events.last().map_or(after, |e| e.seq);
            if !page.more {
                break;
            }
        }
        assert_eq!(n, total);
    }
    let floor = (READS * total) as f64 / started.elapsed().as_secs_f64();
    println!(
        "{:<28} {:>22} {:>22} {:>8.2}x  ({total} events per read, pages of 1,000; events/s, baseline over ours)",
        "api_events",
        format!("{ours:.0} events/s"),
        format!("{floor:.0} events/s"),
        floor / ours.max(1e-9),
    );
}

/// One run over HTTP with `?stream=true`, read to its terminal event.
async fn http_stream_run(http: &reqwest::Client, base: &str, token: &str, i: usize) -> Duration {
    let start = Instant::now();
    let response = http
        .post(format!("{base}/v1/threads/h{i}/runs?stream=true"))
        .bearer_auth(token)
        .json(&serde_json::json!({"text": "hi"}))
        .send()
        .await
        .expect("start");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let mut took = None;
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        if took.is_none() && seen.contains("agent_completed") {
            took = Some(start.elapsed());
        }
    }
    // Read to the end (the stream ends after the terminal event): the connection goes back
    // to the client's pool for the next run, untimed.
    if let Some(took) = took {
        return took;
    }
    panic!("the stream ended without a terminal event: {seen}");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One run over the socket, read to its terminal event frame (frames of the user's other runs,
/// the HTTP ones included, pass by).
async fn socket_run(ws: &mut Ws, i: usize) -> Duration {
    let start = Instant::now();
    let frame = serde_json::json!({"type":"user_message","thread_id":format!("s{i}"),"text":"hi"});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    let mut run = None;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg.expect("frame") {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
            if v["type"] == "run_accepted" {
                run = v["run_id"].as_str().map(str::to_owned);
            } else if v["type"] == "event"
                && v["event"]["type"] == "agent_completed"
                && run.is_some()
                && v["run_id"].as_str() == run.as_deref()
            {
                return start.elapsed();
            }
        }
    }
    panic!("the socket closed");
}

fn stream_vs_socket(addr: std::net::SocketAddr, token: String) {
    const RUNS: usize = 300;
    // The client on a runtime of its own (one thread), not the server's workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut http_times, mut ws_times) = rt.block_on(async move {
        let http = client();
        let base = format!("http://{addr}");
        let mut request = {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            format!("ws://{addr}/ws")
                .into_client_request()
                .expect("request")
        };
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("upgrade");
        let _welcome = ws.next().await;
        // Warm both paths.
        for i in 0..20 {
            http_stream_run(&http, &base, &token, 10_000 + i).await;
            socket_run(&mut ws, 10_000 + i).await;
        }
        let (mut h, mut w) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
        for i in 0..RUNS {
            if i % 2 == 0 {
                h.push(http_stream_run(&http, &base, &token, i).await);
                w.push(socket_run(&mut ws, i).await);
            } else {
                w.push(socket_run(&mut ws, i).await);
                h.push(http_stream_run(&http, &base, &token, i).await);
            }
        }
        (h, w)
    });
    http_times.sort_unstable();
    ws_times.sort_unstable();
    let (h50, h99) = (percentile(&http_times, 0.5), percentile(&http_times, 0.99));
    let (w50, w99) = (percentile(&ws_times, 0.5), percentile(&ws_times, 0.99));
    let ratio = h50.as_secs_f64() / w50.as_secs_f64().max(1e-9);
    println!(
        "{:<28} {:>22} {:>22} {:>8.2}x  (p50, time to the terminal event; p99 {:.2}x; target p50 <= 1.2x: {})",
        "api_stream_vs_socket",
        format!("p50 {} us p99 {} us", us(h50), us(h99)),
        format!("p50 {} us p99 {} us", us(w50), us(w99)),
        ratio,
        h99.as_secs_f64() / w99.as_secs_f64().max(1e-9),
        if ratio <= 1.2 { "met" } else { "not met" }
    );
}

fn main() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let served = server_rt.block_on(serve());
    let token = served
        .gateway
        .keys()
        .issue(&UserId::new("reader").expect("user"), 3_600)
        .expect("token");
    let addr = served.addr;
    // The reads' client shares the server's runtime (as an in-process caller would).
    server_rt.block_on(async {
        let http = client();
        thread_read(&served, &http, &token).await;
        events_served(&served, &http, &token).await;
    });
    stream_vs_socket(addr, token);
    let Served {
        gateway,
        store,
        stop,
        _dir: dir,
        ..
    } = served;
    let _ = stop.send(());
    drop(gateway);
    server_rt.block_on(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.close().await;
    });
    drop(dir);
}
