//! Thread history: the in-memory store forgets the least recently used users past its bounds,
//! and the store-backed history reads a thread's turns from a real SQLite run store (so a model
//! remembers a thread after a restart), one user's only.

use std::sync::Arc;

use engine_core::{
    async_trait, Agent, AgentRegistry, BoxError, RunContext, ThreadId, UserExecutionContext, UserId,
};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, RunStore, Seams};
use engine_llm::{HistoryStore, InMemoryHistory, StoreHistory, Turn};
use engine_store::{SqlStore, StoreConfig};

#[tokio::test]
async fn memory_history_forgets_the_least_recently_used_users_past_its_bounds() {
    let history = InMemoryHistory::new(10, 10).with_bounds(3, 1_000_000);
    let t = ThreadId::new("t").unwrap();
    for i in 0..5 {
        let user = UserId::new(format!("user-{i}")).unwrap();
        history
            .append(&user, &t, Turn::new("q", "a"))
            .await
            .unwrap();
    }
    // user-0 used again: user-1 and user-2 are the oldest now.
    let u0 = UserId::new("user-0").unwrap();
    assert!(
        history.load(&u0, &t, 10).await.unwrap().is_empty(),
        "user-0 was forgotten at the 4th user"
    );
    history.append(&u0, &t, Turn::new("q", "a")).await.unwrap();
    assert_eq!(history.footprint().0, 3);
    for gone in ["user-1", "user-2"] {
        let u = UserId::new(gone).unwrap();
        assert!(history.load(&u, &t, 10).await.unwrap().is_empty(), "{gone}");
    }
    for kept in ["user-3", "user-4", "user-0"] {
        let u = UserId::new(kept).unwrap();
        assert_eq!(history.load(&u, &t, 10).await.unwrap().len(), 1, "{kept}");
    }

    let bytes = InMemoryHistory::new(100, 10).with_bounds(1000, 100);
    for i in 0..10 {
        let user = UserId::new(format!("b-{i}")).unwrap();
        bytes
            .append(&user, &t, Turn::new("x".repeat(20), "y".repeat(20)))
            .await
            .unwrap();
        assert!(bytes.footprint().1 <= 100, "{:?}", bytes.footprint());
    }
    assert_eq!(bytes.footprint(), (2, 80));
}

struct Echo;

#[async_trait]
impl Agent for Echo {
    async fn run(&mut self, _ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        Ok(format!("answer to {input}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_history_reads_a_threads_turns_after_a_restart_and_only_the_users_own() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    {
        let store = SqlStore::open(StoreConfig::new(url.clone())).await.unwrap();
        let factory = ExecutionEngineFactory::with_seams(
            FactoryConfig::default(),
            AgentRegistry::builder()
                .agent("echo", || Echo)
                .build()
                .unwrap(),
            Seams::default().run_store(Arc::new(store.clone())),
        )
        .unwrap();
        for (user, n) in [("alice", 4), ("bob", 1)] {
            let c = UserExecutionContext::new(user, "t", "r0").unwrap();
            let engine = factory.create_for_user(&c).unwrap();
            for i in 0..n {
                let c = UserExecutionContext::new(user, "t", format!("r{i}")).unwrap();
                engine
                    .execute(&c, "echo", format!("{user} question {i}"))
                    .await
                    .unwrap();
            }
        }
        factory.shutdown().await;
        drop(factory);
        store.close().await;
    }
    // A new process: the history comes from the file.
    let store = SqlStore::open(StoreConfig::new(url)).await.unwrap();
    let history = StoreHistory::new(Arc::new(store.clone()) as Arc<dyn RunStore>);
    let t = ThreadId::new("t").unwrap();
    let alice = history
        .load(&UserId::new("alice").unwrap(), &t, 2)
        .await
        .unwrap();
    assert_eq!(
        alice,
        vec![
            Turn::new("alice question 2", "answer to alice question 2"),
            Turn::new("alice question 3", "answer to alice question 3"),
        ]
    );
    let bob = history
        .load(&UserId::new("bob").unwrap(), &t, 10)
        .await
        .unwrap();
    assert_eq!(
        bob,
        vec![Turn::new("bob question 0", "answer to bob question 0")]
    );
    let nobody = history
        .load(&UserId::new("carol").unwrap(), &t, 10)
        .await
        .unwrap();
    assert!(nobody.is_empty());
}
