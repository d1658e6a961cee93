//! A real browser on the gateway's page: headless Chromium loads `/`, connects as a
//! development user and sends a message whose answer needs a tool the user must approve; the
//! test clicks Approve, watches the answer stream in, runs the supervisor and finds its four
//! sub-agents nested in the run's card, then switches the tab to another user (the first user's
//! runs vanish and their new events never show), and drops the socket to see the page reconnect
//! and finish a run it was showing. Another test sends the demo's `frontdesk` a message that
//! asks for a secret (the card shows the `no_secrets` trip) and a billing question (the card
//! shows the handoff to `billing`, and frontdesk's retracted words vanish from the answer).
//!
//! Chromium is driven over the DevTools protocol (a WebSocket, with tokio-tungstenite). `.ci/run`
//! installs Debian's `chromium` when missing; outside CI the test is skipped (with a message)
//! if no Chromium is found. `CHROMIUM=/path/to/chrome` picks another binary.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
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
async fn the_page_streams_asks_for_approval_switches_users_and_reconnects() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let gateway = Gateway::new(GatewayConfig::development(), demo_registry()).expect("gateway");
    let served = Served::start(&gateway).await;
    let addr = served.addr;

    let page =
        format!("http://{addr}/?user=alice&send=please%20remember%3A%20what%20is%206%20*%207");
    drive(&browser, &page, "a", served, async |page: &mut Page| {
        scenario(page, &gateway, addr).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_trip_and_a_handoff_and_removes_retracted_text() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let gateway = Gateway::new(GatewayConfig::development(), demo_registry()).expect("gateway");
    let served = Served::start(&gateway).await;
    let addr = served.addr;
    let url = format!("http://{addr}/?user=alice");
    drive(&browser, &url, "g", served, async |page: &mut Page| {
        guardrails_and_handoffs(page).await
    })
    .await;
}

/// The trip and the handoff of the demo's `frontdesk`, as the page shows them.
async fn guardrails_and_handoffs(page: &mut Page) -> Result<(), String> {
    page.wait(
        "connected as alice",
        "document.getElementById('status').textContent === 'connected as alice'",
    )
    .await?;
    // Every state of every card's answer, to see retracted text come and go.
    page.eval(
        "window.snaps = []; new MutationObserver(() => { document.querySelectorAll('.run .answer')          .forEach((a) => window.snaps.push(a.textContent)); }).observe(document.getElementById('runs'),          { subtree: true, childList: true, characterData: true }); true",
    )
    .await;
    page.eval(
        "document.getElementById('agent').value = 'frontdesk';          document.getElementById('message').value = 'what is my password?';          document.getElementById('send').click(); true",
    )
    .await;
    page.wait(
        "the run is stopped by the guardrail",
        "document.querySelectorAll('.run').length === 1 &&          document.querySelector('.run').dataset.status === 'guardrail_tripped'",
    )
    .await?;
    let trip = page
        .eval("document.querySelector('.run .guardrail').textContent")
        .await;
    let trip = trip.as_str().unwrap_or_default();
    if !(trip.contains("no_secrets") && trip.contains("asks for a secret")) {
        return Err(format!("the card does not show the trip: {trip:?}"));
    }
    page.eval(
        "document.getElementById('message').value = 'how much was my last invoice?';          document.getElementById('send').click(); true",
    )
    .await;
    page.wait(
        "the handed-off run completes",
        "document.querySelectorAll('.run').length === 2 &&          document.querySelectorAll('.run')[1].dataset.status === 'completed'",
    )
    .await?;
    let card = page
        .eval(
            "(() => { const r = document.querySelectorAll('.run')[1]; return {              agent: r.querySelector('.agent').textContent,              handoff: r.querySelector('.handoff').textContent,              retracted: r.querySelectorAll('.retracted').length,              answer: r.querySelector('.answer').textContent }; })()",
        )
        .await;
    if card["agent"] != json!("frontdesk \u{2192} billing") {
        return Err(format!("the header does not show the handoff: {card}"));
    }
    if !card["handoff"]
        .as_str()
        .unwrap_or_default()
        .contains("frontdesk handed the run to billing")
        || card["retracted"] != json!(1)
    {
        return Err(format!("the card does not show the handoff: {card}"));
    }
    if card["answer"] != json!("your last invoice is 42.00 EUR, paid on 1 December") {
        return Err(format!(
            "the answer keeps retracted text or lacks billing's: {card}"
        ));
    }
    let snaps: Vec<String> =
        serde_json::from_value(page.eval("window.snaps").await).unwrap_or_default();
    if !snaps.iter().any(|s| s.starts_with("One moment")) {
        return Err(format!("frontdesk's words were never shown: {snaps:?}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_remembers_threads_and_a_running_run_across_a_reload() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let store = engine_store::SqlStore::open(engine_store::StoreConfig::new(format!(
        "sqlite://{}",
        data.path().join("gateway.db").display()
    )))
    .await
    .expect("the store opens");
    let gateway = Gateway::with_backends(
        GatewayConfig::development(),
        demo_registry(),
        engine_gateway::Backends::default().with_store(store),
    )
    .expect("gateway");
    let served = Served::start(&gateway).await;
    let addr = served.addr;
    let url = format!("http://{addr}/?user=alice");
    drive(
        &browser,
        &url,
        "remembers",
        served,
        async |page: &mut Page| remembers(page).await,
    )
    .await;
}

/// Sends on two threads (the second a run of 2.5 s), reloads mid-run, finds both threads in
/// the sidebar and the running run continuing to its end, opens the first thread's past run,
/// then deletes that thread.
async fn remembers(page: &mut Page) -> Result<(), String> {
    page.wait(
        "connected as alice",
        "document.getElementById('status').textContent === 'connected as alice'",
    )
    .await?;
    page.eval(
        "document.getElementById('thread').value = 'math'; \
         document.getElementById('message').value = 'what is 6 * 7?'; \
         document.getElementById('send').click(); true",
    )
    .await;
    page.wait(
        "the math run completes",
        "document.querySelector('.run') && document.querySelector('.run').dataset.status === 'completed'",
    )
    .await?;
    page.wait(
        "the sidebar lists the math thread",
        "document.querySelector('#thread-list li[data-thread=\"math\"]') !== null",
    )
    .await?;
    page.eval(
        "document.getElementById('thread').value = 'slow'; \
         document.getElementById('agent').value = 'waiter'; \
         document.getElementById('message').value = '2500'; \
         document.getElementById('send').click(); true",
    )
    .await;
    page.wait(
        "the waiter's card",
        "document.querySelectorAll('.run').length === 2 && \
         document.querySelectorAll('.run')[1].querySelector('.thinking') !== null",
    )
    .await?;
    let run_id = page
        .eval("document.querySelectorAll('.run')[1].dataset.run")
        .await;
    // Reload while the run goes on: the page comes back as alice, on the `slow` thread.
    page.eval("location.reload(); true").await;
    page.wait(
        "connected again after the reload",
        "document.getElementById('status') && \
         document.getElementById('status').textContent === 'connected as alice'",
    )
    .await?;
    page.wait(
        "both threads listed",
        "document.querySelectorAll('#thread-list li').length === 2",
    )
    .await?;
    let card = format!(
        "document.querySelector('.run[data-run=\"{}\"]')",
        run_id.as_str().unwrap_or_default()
    );
    page.wait(
        "the running run's card is back",
        &format!("{card} !== null"),
    )
    .await?;
    page.wait(
        "the run continues to its end after the reload",
        &format!("{card}.dataset.status === 'completed' && {card}.querySelector('.answer').textContent === 'waited 2500 ms'"),
    )
    .await?;
    // The old thread: its past run, answer and input, from the API.
    page.eval("document.querySelector('#thread-list li[data-thread=\"math\"] button.open-thread').click(); true")
        .await;
    page.wait(
        "the math thread's past run",
        "document.querySelectorAll('.run').length === 1 && \
         document.querySelector('.run').dataset.status === 'completed' && \
         document.querySelector('.run .answer').textContent.includes('42') && \
         document.querySelector('.run .input').textContent === 'you: what is 6 * 7?'",
    )
    .await?;
    // Delete it: gone from the sidebar and from the API.
    page.eval("document.querySelector('#thread-list li[data-thread=\"math\"] button.delete-thread').click(); true")
        .await;
    page.wait(
        "the math thread is gone from the sidebar",
        "document.querySelector('#thread-list li[data-thread=\"math\"]') === null && \
         document.querySelectorAll('#thread-list li').length === 1",
    )
    .await?;
    page.eval(
        "window.deleted = null; fetch('/v1/threads/math', { headers: { Authorization: 'Bearer ' + token } }) \
         .then((r) => { window.deleted = r.status; }); true",
    )
    .await;
    page.wait("the API answers 404", "window.deleted === 404")
        .await?;
    Ok(())
}

/// Chromium, or `None` outside CI when none is found (the test is skipped, with a message).
fn browser_or_skip() -> Option<String> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium (.ci/run installs it)"
        );
        eprintln!("skipped: no Chromium found (install Debian's `chromium` or set CHROMIUM)");
    }
    found
}

/// A gateway serving on a free loopback port until [`drive`] stops it.
struct Served {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(gateway: &Gateway) -> Self {
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
        Self { addr, stop, server }
    }
}

/// Opens Chromium (profile `name`) on `url`, runs `scenario` on its page, then stops the
/// browser and the server, and fails the test with the scenario's error if it had one.
async fn drive(
    browser: &str,
    url: &str,
    name: &str,
    served: Served,
    scenario: impl AsyncFnOnce(&mut Page) -> Result<(), String>,
) {
    let (mut child, mut page, profile) = open_browser(browser, url, name).await;
    let result = scenario(&mut page).await;
    let _ = child.kill().await;
    let _ = served.stop.send(());
    let _ = served.server.await;
    let _ = std::fs::remove_dir_all(&profile);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Starts headless Chromium on `url` with a fresh profile named `name`, attached over the
/// DevTools protocol to its page.
async fn open_browser(
    browser: &str,
    url: &str,
    name: &str,
) -> (tokio::process::Child, Page, std::path::PathBuf) {
    let profile = std::env::temp_dir().join(format!(
        "engine-gateway-chromium-{}-{name}",
        std::process::id()
    ));
    let mut child = tokio::process::Command::new(browser)
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
            "--window-size=1000,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
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
    (child, Page { cdp, session }, profile)
}

struct Page {
    cdp: Cdp,
    session: String,
}

impl Page {
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .cdp
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expr` every 50 ms until it is truthy (10 s at most); the last value otherwise.
    async fn wait(&mut self, what: &str, expr: &str) -> Result<Value, String> {
        let mut last = Value::Null;
        for _ in 0..200 {
            last = self.eval(expr).await;
            if !(last.is_null() || last == json!(false) || last == json!("") || last == json!(0)) {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let page = self.eval("document.body.innerText").await;
        Err(format!(
            "{what}: still {last} after 10 s; the page shows:\n{page}"
        ))
    }
}

const ANSWER: &str =
    "document.querySelector('.run .answer') && document.querySelector('.run .answer').textContent";

async fn scenario(
    page: &mut Page,
    gateway: &Gateway,
    addr: std::net::SocketAddr,
) -> Result<(), String> {
    // 0. The link connects and fills the message box, and sends nothing by itself.
    page.wait(
        "connected as alice",
        "document.getElementById('status').textContent === 'connected as alice'",
    )
    .await?;
    let prefilled = page.eval("document.getElementById('message').value").await;
    if prefilled != json!("please remember: what is 6 * 7") {
        return Err(format!(
            "the link did not fill the message box: {prefilled}"
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cards = page.eval("document.querySelectorAll('.run').length").await;
    if cards != json!(0) {
        return Err(format!("the link sent a message by itself: {cards} run(s)"));
    }
    page.eval("document.getElementById('send').click(); true")
        .await;
    // 1. The message needs `save_note`: the page shows Approve / Deny and no answer yet.
    page.wait(
        "approval buttons",
        "document.querySelectorAll('.approval button').length === 2",
    )
    .await?;
    let before = page.eval(ANSWER).await;
    if before != json!("") {
        return Err(format!("an answer before the approval: {before}"));
    }
    // Record every state of the answer as it grows, then approve.
    page.eval(
        "window.snaps = []; new MutationObserver(() => { const a = document.querySelector('.run .answer'); \
         if (a) window.snaps.push(a.textContent); }).observe(document.getElementById('runs'), \
         { subtree: true, childList: true, characterData: true }); true",
    )
    .await;
    page.eval("document.querySelector('.approval button.approve').click(); true")
        .await;
    page.wait(
        "the run completes",
        "document.querySelector('.run').dataset.status === 'completed'",
    )
    .await?;
    let answer = page
        .eval(ANSWER)
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !(answer.contains("6 * 7 = 42") && answer.contains("noted")) {
        return Err(format!("answer: {answer:?}"));
    }
    let snaps: Vec<String> =
        serde_json::from_value(page.eval("window.snaps").await).unwrap_or_default();
    let partial: std::collections::BTreeSet<&String> = snaps
        .iter()
        .filter(|s| !s.is_empty() && s.len() < answer.len() && answer.starts_with(s.as_str()))
        .collect();
    if partial.len() < 3 {
        return Err(format!("the answer did not grow in place: {snaps:?}"));
    }
    let steps = page
        .eval("document.querySelector('.run .steps').innerText")
        .await;
    let steps = steps.as_str().unwrap_or_default();
    for expected in ["calculator", "save_note", "approved", "success"] {
        if !steps.contains(expected) {
            return Err(format!("the card lacks {expected:?}: {steps}"));
        }
    }

    // 2. The supervisor: one message, four sub-agents nested in its card, each completed.
    page.eval(
        "document.getElementById('agent').value = 'supervisor'; \
         document.getElementById('message').value = 'what is 6 * 7?'; \
         document.getElementById('send').click(); true",
    )
    .await;
    page.wait(
        "the supervisor run completes",
        "document.querySelectorAll('.run').length === 2 && \
         document.querySelectorAll('.run')[1].dataset.status === 'completed'",
    )
    .await?;
    let nested = page
        .eval(
            "Array.from(document.querySelectorAll('.run')[1].querySelectorAll('.sub')) \
             .map((s) => s.querySelector('.subhead').firstChild.textContent + ':' + s.dataset.status)",
        )
        .await;
    let expected = json!([
        "triage:completed",
        "data:completed",
        "optimization:completed",
        "reporting:completed"
    ]);
    if nested != expected {
        return Err(format!("sub-agents shown as {nested}, expected {expected}"));
    }
    if let Ok(path) = std::env::var("BROWSER_SCREENSHOT") {
        // For a person to look at: the page after the supervisor run.
        let shot = page
            .cdp
            .call(Some(&page.session), "Page.captureScreenshot", json!({}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| format!("screenshot: {e}"))?;
        std::fs::write(&path, png).map_err(|e| format!("{path}: {e}"))?;
    }
    // 2b. A run that waits until cancelled: its card's Cancel button stops it.
    page.eval(
        "document.getElementById('agent').value = 'waiter'; \
         document.getElementById('message').value = 'wait'; \
         document.getElementById('send').click(); true",
    )
    .await;
    page.wait(
        "the waiter's card with its Cancel button",
        "document.querySelectorAll('.run').length === 3 && \
         document.querySelectorAll('.run')[2].querySelector('button.cancel') !== null",
    )
    .await?;
    page.eval("document.querySelectorAll('.run')[2].querySelector('button.cancel').click(); true")
        .await;
    page.wait(
        "the waiter run ends and its Cancel button goes",
        "document.querySelectorAll('.run')[2].dataset.status !== 'running' && \
         document.querySelectorAll('.run')[2].querySelector('button.cancel') === null",
    )
    .await?;
    page.eval("document.getElementById('agent').value = 'assistant'; true")
        .await;

    // 3. Switch the tab to carol: alice's run vanishes, and alice's new events never show.
    page.eval("document.getElementById('user').value = 'carol'; document.getElementById('connect').click(); true")
        .await;
    page.wait(
        "connected as carol",
        "document.getElementById('status').textContent === 'connected as carol'",
    )
    .await?;
    let cards = page.eval("document.querySelectorAll('.run').length").await;
    if cards != json!(0) {
        return Err(format!("alice's runs still shown after switching: {cards}"));
    }
    let alice = gateway
        .keys()
        .issue(&engine_core::UserId::new("alice").unwrap(), 600)
        .unwrap();
    let mut request = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        format!("ws://{addr}/ws").into_client_request().unwrap()
    };
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {alice}").parse().unwrap());
    let (mut alice_ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    alice_ws
        .send(Message::Text(
            json!({"type":"user_message","thread_id":"t","text":"what time is it?"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    // Wait until alice's run has ended on her own socket; the page must still show nothing.
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), alice_ws.next())
            .await
            .map_err(|_| "alice's run did not end".to_string())?
            .ok_or("alice's socket closed")?
            .map_err(|e| e.to_string())?;
        if let Message::Text(t) = frame {
            if t.as_str().contains("agent_completed") {
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shown = page.eval("document.getElementById('runs').innerText").await;
    if shown != json!("") {
        return Err(format!("carol's tab shows alice's events: {shown}"));
    }

    // 4. Carol's run waits for approval; the socket drops; the page reconnects, resumes the run,
    //    and the Approve button still finishes it.
    page.eval("document.getElementById('message').value = 'remember this'; document.getElementById('send').click(); true")
        .await;
    page.wait(
        "carol's approval",
        "document.querySelectorAll('.approval button.approve').length === 1",
    )
    .await?;
    page.eval("ws.close(); true").await;
    page.wait(
        "reconnecting",
        "document.getElementById('status').textContent.includes('reconnecting')",
    )
    .await?;
    page.wait(
        "reconnected",
        "document.getElementById('status').textContent === 'connected as carol'",
    )
    .await?;
    page.eval("document.querySelector('.approval button.approve').click(); true")
        .await;
    page.wait(
        "carol's run completes",
        "document.querySelector('.run').dataset.status === 'completed'",
    )
    .await?;
    let answer = page.eval(ANSWER).await;
    if !answer.as_str().unwrap_or_default().contains("noted") {
        return Err(format!("carol's answer: {answer}"));
    }
    let cards = page.eval("document.querySelectorAll('.run').length").await;
    if cards != json!(1) {
        return Err(format!("after the reconnect the run shows {cards} times"));
    }
    Ok(())
}
