//! `resume` on the real binary: a replay larger than the connection's queue ends with a `gap`
//! frame naming what was not sent (never a silent cut), so the client resumes again from where
//! it got to; and resumes count against a per-user limit (`rate_limited` past it).

use std::time::Duration;

use serde_json::{json, Value};

mod common;

use common::{connect, next, send, start_gateway, Ws};

/// Starts a supervisor run (many events) and reads frames until the socket is quiet.
async fn a_long_run(ws: &mut Ws) -> String {
    send(
        ws,
        json!({"type":"user_message","thread_id":"t","text":"what is 6 * 7?","agent":"supervisor"}),
    )
    .await;
    let run = loop {
        let f = next(ws).await;
        if f["type"] == "run_accepted" {
            break f["run_id"].as_str().unwrap().to_owned();
        }
    };
    while tokio::time::timeout(Duration::from_millis(1500), next(ws))
        .await
        .is_ok()
    {}
    run
}

/// One resume of `run` after `after`: its event frames and the gap that ended it, if any
/// (`None` when it reached the terminal event).
async fn resume_once(ws: &mut Ws, run: &str, after: u64) -> (Vec<Value>, Option<Value>) {
    send(ws, json!({"type":"resume","run_id":run,"after_seq":after})).await;
    let mut events = Vec::new();
    loop {
        let f = next(ws).await;
        assert_ne!(f["type"], "error", "{f}");
        if f["run_id"] != run {
            continue;
        }
        if f["type"] == "gap" {
            return (events, Some(f));
        }
        let end = f["event"]["type"] == "agent_completed";
        events.push(f);
        if end {
            return (events, None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_larger_than_the_queue_ends_with_a_gap_and_resumes_are_metered() {
    let gw = start_gateway(&["--connection-queue", "16", "--resumes-per-minute", "8"]).await;
    let mut ws = connect(&gw.addr, "rhea").await;
    let run = a_long_run(&mut ws).await;
    let (first, gap) = resume_once(&mut ws, &run, 0).await;
    let gap = gap.expect("a replay of more than 16 frames ends with a gap");
    assert!(first.len() < 16, "{} frames", first.len());
    assert_eq!(gap["from_seq"], first.len() as u64 + 1, "{gap}");
    let named_last = gap["to_seq"].as_u64().unwrap();
    // Resuming from where it got to brings the rest, up to the terminal event.
    let mut seqs: Vec<u64> = first.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let mut used = 1;
    loop {
        let after = *seqs.last().unwrap();
        let (more, gap) = resume_once(&mut ws, &run, after).await;
        used += 1;
        seqs.extend(more.iter().map(|e| e["seq"].as_u64().unwrap()));
        if gap.is_none() {
            break;
        }
        assert!(used < 8, "the replay ends within the resume limit");
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every event, in order"
    );
    assert_eq!(
        *seqs.last().unwrap(),
        named_last,
        "the first gap named every event not sent"
    );
    // The rest of the minute's resumes, then `rate_limited`.
    let mut refused: Option<Value> = None;
    for _ in used..=8 {
        send(
            &mut ws,
            json!({"type":"resume","run_id":run,"after_seq":named_last}),
        )
        .await;
        let f = tokio::time::timeout(Duration::from_millis(500), next(&mut ws)).await;
        if let Ok(f) = f {
            if f["type"] == "error" {
                refused = Some(f);
                break;
            }
        }
    }
    let refused = refused.expect("a resume past the limit is refused");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
}
