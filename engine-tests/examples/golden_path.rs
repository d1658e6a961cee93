//! The golden path: several users chat concurrently through one factory; each user's event
//! stream is printed as JSON lines, grouped by user, and checked for isolation.
//!
//! Run with `cargo run -p engine-tests --example golden_path`.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;

use engine_core::UserExecutionContext;
use engine_factory::{ExecutionEngineFactory, FactoryConfig};
use engine_tests::{check_run, demo_registry};

const MESSAGES: [&str; 2] = ["what is 6 * 7?", "what time is it, and what is 100 / 8?"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let factory =
        ExecutionEngineFactory::new(FactoryConfig::default(), demo_registry()).expect("factory");
    let users = ["alice", "bob", "carol", "dave"];
    let mut tasks = Vec::new();
    for user in users {
        let factory = factory.clone();
        tasks.push(tokio::spawn(async move {
            let base = UserExecutionContext::new(user, format!("{user}-thread"), "run-start")?;
            let mut events = factory.subscribe(base.user_id());
            let engine = factory.create_for_user(&base)?;
            let mut answers = Vec::new();
            for message in MESSAGES {
                let ctx = base.new_run();
                answers.push(engine.execute(&ctx, "assistant", message).await?);
            }
            engine.close().await;
            let received: Vec<_> = std::iter::from_fn(|| events.try_recv()).collect();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((user, answers, received))
        }));
    }
    let mut by_user = BTreeMap::new();
    for t in tasks {
        let (user, answers, received) = t.await?.map_err(|e| e.to_string())?;
        by_user.insert(user, (answers, received));
    }
    for (user, (answers, received)) in &by_user {
        println!("=== {user}: {} events ===", received.len());
        for e in received {
            println!("{}", serde_json::to_string(e)?);
        }
        for a in answers {
            println!("--> {}: {}", a.status().as_str(), a.result().unwrap_or("-"));
        }
        assert!(
            received.iter().all(|e| e.user_id.as_str() == *user),
            "isolation"
        );
        for a in answers {
            let run: Vec<_> = received
                .iter()
                .filter(|e| e.run_id == a.run_id)
                .cloned()
                .collect();
            check_run(&run)?;
        }
    }
    factory.shutdown().await;
    let m = factory.metrics();
    println!(
        "=== {} users, {} engines created, {} active, {} events delivered, {} dropped ===",
        by_user.len(),
        m.engines_created,
        m.active_engines,
        m.events_delivered,
        m.events_dropped
    );
    Ok(())
}
