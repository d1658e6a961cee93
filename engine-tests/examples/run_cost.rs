//! Instructions per run, for `valgrind --tool=callgrind` (deterministic, unlike wall time on a
//! shared VM): runs N trivial 6-event runs through one engine with a reading subscriber
//! (`ours`), or N raw-tokio tasks sending 6 events to a consumer (`baseline`), on a
//! current-thread runtime. BENCHMARKS.md divides the difference between two N by the runs.
//!
//! `cargo build --release -p engine-tests --example run_cost`, then
//! `valgrind --tool=callgrind target/release/examples/run_cost ours 2000`.
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use engine_core::{AgentEvent, EventEnvelope, ThreadId};
use engine_tests::bench::{bench_engines, bench_factory, bench_users};
use tokio::sync::mpsc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("ours", String::as_str).to_owned();
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let events = rt.block_on(async move {
        let users = bench_users(1);
        if mode == "ours" {
            let factory = bench_factory(8192);
            let mut sub = factory.subscribe(users[0].user_id());
            let engines = bench_engines(&factory, &users);
            let reader = tokio::spawn(async move {
                let mut got = 0usize;
                while sub.recv().await.is_some() {
                    got += 1;
                }
                got
            });
            for _ in 0..n {
                let ctx = users[0].new_run();
                engines[0].1.execute(&ctx, "six", "").await.expect("ran");
            }
            drop(engines);
            factory.shutdown().await;
            reader.await.expect("reader")
        } else {
            let (tx, mut rx) = mpsc::channel::<Arc<EventEnvelope>>(8192);
            let reader = tokio::spawn(async move {
                let mut got = 0usize;
                while rx.recv().await.is_some() {
                    got += 1;
                }
                got
            });
            let user = users[0].user_id().clone();
            let thread = ThreadId::new("thread").expect("id");
            for _ in 0..n {
                let ctx = Arc::new(users[0].new_run());
                let tx = tx.clone();
                let user = user.clone();
                let thread = thread.clone();
                tokio::spawn(async move {
                    for seq in 1..=6 {
                        let e = EventEnvelope {
                            user_id: user.clone(),
                            thread_id: thread.clone(),
                            run_id: ctx.run_id().clone(),
                            request_id: ctx.request_id().clone(),
                            seq,
                            timestamp_us: 0,
                            event: AgentEvent::AgentThinking {
                                reasoning: "step".into(),
                            },
                        };
                        let _ = tx.send(Arc::new(e)).await;
                    }
                })
                .await
                .expect("task");
            }
            drop(tx);
            reader.await.expect("reader")
        }
    });
    println!("{events} events");
}
