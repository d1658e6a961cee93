//! A real browser on the gateway's page: headless Chromium loads `/`, connects as a
//! development user, sends "what is 6 * 7?" and the answer arrives in the page.
//!
//! Chromium is driven over the DevTools protocol (a WebSocket, with tokio-tungstenite). `.ci/run`
//! installs Debian's `chromium` when missing; outside CI the test is skipped (with a message)
//! if no Chromium is found. `CHROMIUM=/path/to/chrome` picks another binary.

use std::process::Stdio;
use std::time::Duration;

use engine_gateway::{demo::demo_registry, Gateway, GatewayConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.is_file())
                    .map(|p| p.display().to_string())
            })
        })
}

struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Cdp {
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("devtools answers")
                .expect("devtools open")
                .expect("frame");
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_sends_a_message_and_shows_the_answer() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium (.ci/run installs it)"
        );
        eprintln!("skipped: no Chromium found (install Debian's `chromium` or set CHROMIUM)");
        return;
    };
    let gateway = Gateway::new(GatewayConfig::development(), demo_registry()).expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let g = gateway.clone();
    let server = tokio::spawn(async move {
        g.serve(listener, async {
            let _ = stopped.await;
        })
        .await
    });

    let profile =
        std::env::temp_dir().join(format!("engine-gateway-chromium-{}", std::process::id()));
    let page = format!("http://{addr}/?user=alice&send=what%20is%206%20*%207");
    let mut child = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&page)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let devtools = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                return url.trim().to_owned();
            }
        }
        panic!("chromium exited without a DevTools endpoint");
    })
    .await
    .expect("chromium announces DevTools within 30 s");
    // Keep draining stderr so chromium never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let (ws, _) = tokio_tungstenite::connect_async(devtools.as_str())
        .await
        .unwrap();
    let mut cdp = Cdp { ws, next_id: 0 };
    let targets = cdp.call(None, "Target.getTargets", json!({})).await;
    let target = targets["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target")["targetId"]
        .clone();
    let session = cdp
        .call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )
        .await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = |expr: &str| json!({ "expression": expr, "returnByValue": true });
    let mut answer = String::new();
    for _ in 0..100 {
        let r = cdp
            .call(
                Some(&session),
                "Runtime.evaluate",
                read("document.getElementById('answer').textContent"),
            )
            .await;
        answer = r["result"]["value"].as_str().unwrap_or_default().to_owned();
        if !answer.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = cdp
        .call(
            Some(&session),
            "Runtime.evaluate",
            read("document.getElementById('log').innerText"),
        )
        .await["result"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let _ = child.kill().await;
    let _ = stop.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        answer.contains("6 * 7 = 42"),
        "answer: {answer:?}\nlog:\n{log}"
    );
    assert!(log.contains("assistant started"), "{log}");
    assert!(
        log.contains("calculator"),
        "the tool call is rendered: {log}"
    );
    assert!(log.contains("completed"), "{log}");
}
