//! Agents, a factory on a store, and the checks both store suites share.

#![allow(dead_code)]

use std::sync::Arc;

use engine_core::{
    async_trait, Agent, AgentEvent, AgentRegistry, BoxError, EngineConfig, EventEnvelope,
    RunContext, RunStatus, ThreadId, Tool, ToolContext, UserExecutionContext, UserId,
};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, Role, RunStore, Seams};
use engine_store::{SqlStore, INTERRUPTED};
use serde_json::{json, Value};

/// Thinks, streams its answer word by word, and answers `echo: <input>`.
pub(crate) struct Talker;

#[async_trait]
impl Agent for Talker {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        ctx.think("reading").await;
        let answer = format!("echo: {input}");
        for (i, word) in answer.split(' ').enumerate() {
            let piece = if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            ctx.stream(piece).await;
        }
        Ok(answer)
    }
}

/// Calls `save`, which needs the user's approval, and so waits for it.
pub(crate) struct Saver;

#[async_trait]
impl Agent for Saver {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let saved = ctx.call_tool("save", json!({ "text": input })).await?;
        Ok(saved.to_string())
    }
}

/// Never answers (until cancelled).
pub(crate) struct Forever;

#[async_trait]
impl Agent for Forever {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        ctx.think("working").await;
        std::future::pending::<()>().await;
        Ok(String::new())
    }
}

struct Save;

#[async_trait]
impl Tool for Save {
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        Ok(args)
    }
}

pub(crate) fn registry() -> AgentRegistry {
    AgentRegistry::builder()
        .agent("talker", || Talker)
        .agent("saver", || Saver)
        .agent("forever", || Forever)
        .tool_requiring_approval("save", Save)
        .build()
        .expect("a registry")
}

/// A factory whose engines record their runs in `store`.
pub(crate) fn factory(store: &SqlStore) -> ExecutionEngineFactory {
    let config = FactoryConfig::builder()
        .max_engines_per_user(4)
        .engine(
            EngineConfig::builder()
                .max_concurrent_runs(8)
                .max_queued_runs(64)
                .approval_timeout(std::time::Duration::from_secs(600))
                .run_timeout(std::time::Duration::from_secs(600))
                .build()
                .expect("an engine config"),
        )
        .build()
        .expect("a factory config");
    let seams = Seams::default().run_store(Arc::new(store.clone()));
    ExecutionEngineFactory::with_seams(config, registry(), seams).expect("a factory")
}

pub(crate) fn ctx(user: &str, thread: &str, run: &str) -> UserExecutionContext {
    UserExecutionContext::new(user, thread, run).expect("valid ids")
}

/// Reads every stored event of `user`'s run, in pages of 7 (so paging is exercised).
pub(crate) async fn stored_events(
    store: &SqlStore,
    ctx: &UserExecutionContext,
) -> Vec<EventEnvelope> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .events_after(ctx.user_id(), ctx.run_id(), after, 7)
            .await
            .expect("a read")
            .expect("the user's run");
        assert!(page.gaps.is_empty(), "no gap expected: {:?}", page.gaps);
        after = page.events.last().map_or(after, |e| e.seq);
        all.extend(page.events);
        if !page.more {
            return all;
        }
    }
}

/// Three turns of alice's thread and one run of bob's, on `store` (node id `node`): the run
/// records, the thread's messages, every event equal to the one delivered live, and none of
/// bob's rows readable as alice.
pub(crate) async fn runs_threads_and_events_read_back(store: &SqlStore, node: &str) {
    let factory = factory(store);
    let alice = UserId::new("alice").unwrap();
    let mut live = factory.subscribe(&alice);
    let handle = factory.create_for_user(&ctx("alice", "t1", "r1")).unwrap();
    let mut runs = Vec::new();
    for (i, text) in ["hello there", "how are you", "bye now"].iter().enumerate() {
        let c = ctx("alice", "t1", &format!("run-{i}"));
        let outcome = handle.execute(&c, "talker", *text).await.unwrap();
        assert_eq!(outcome.result(), Some(format!("echo: {text}").as_str()));
        runs.push(c);
    }
    let bob = factory.create_for_user(&ctx("bob", "t9", "rb")).unwrap();
    let bob_run = ctx("bob", "t9", "bob-run");
    bob.execute(&bob_run, "talker", "secret of bob")
        .await
        .unwrap();
    store.flush().await;

    // The run records, ended, in order.
    let records = store
        .thread_runs(&alice, &ThreadId::new("t1").unwrap())
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    for (record, c) in records.iter().zip(&runs) {
        assert_eq!(record.run_id, *c.run_id());
        assert_eq!(record.status, Some(RunStatus::Completed));
        assert_eq!(record.agent_name, "talker");
        assert_eq!(record.node_id, node);
        assert!(record.ended_at_us.unwrap() >= record.accepted_at_us);
    }
    // The thread's messages: each input, then its answer.
    let messages = store
        .thread_messages(&alice, &ThreadId::new("t1").unwrap(), 100)
        .await
        .unwrap();
    let texts: Vec<(Role, &str)> = messages
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(
        texts,
        vec![
            (Role::User, "hello there"),
            (Role::Assistant, "echo: hello there"),
            (Role::User, "how are you"),
            (Role::Assistant, "echo: how are you"),
            (Role::User, "bye now"),
            (Role::Assistant, "echo: bye now"),
        ]
    );
    let last_two = store
        .thread_messages(&alice, &ThreadId::new("t1").unwrap(), 2)
        .await
        .unwrap();
    assert_eq!(last_two[1].content, "echo: bye now");
    assert_eq!(last_two[0].content, "bye now");

    // Every event as delivered live, read back equal (ids, seq, timestamps, payloads).
    let mut delivered = Vec::new();
    while let Some(e) = live.try_recv() {
        delivered.push(e);
    }
    let mut stored = Vec::new();
    for c in &runs {
        stored.extend(stored_events(store, c).await);
    }
    assert_eq!(stored, delivered);
    assert!(stored.iter().filter(|e| e.event.is_terminal()).count() == 3);

    // Threads: alice sees hers only; bob's rows are not there for her, by any read.
    let threads = store.threads(&alice, 10, None).await.unwrap();
    assert_eq!(threads.len(), 1);
    assert_eq!(threads[0].thread_id.as_str(), "t1");
    assert_eq!(threads[0].run_count, 3);
    assert_eq!(threads[0].preview.as_deref(), Some("echo: bye now"));
    assert!(store.run(&alice, bob_run.run_id()).await.unwrap().is_none());
    assert!(store
        .events_after(&alice, bob_run.run_id(), 0, 100)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .thread_messages(&alice, bob_run.thread_id(), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .thread_runs(&alice, bob_run.thread_id())
        .await
        .unwrap()
        .is_empty());
    let bobs = store
        .run(bob_run.user_id(), bob_run.run_id())
        .await
        .unwrap();
    assert_eq!(bobs.unwrap().input, "secret of bob");
    drop((handle, bob));
    factory.shutdown().await;
}

/// Ids with quotes, `%`, `_`, backslashes and non-ASCII text, stored and read back exactly on
/// `store`, each user seeing only its own rows.
pub(crate) async fn adversarial_ids_read_back(store: &SqlStore) {
    let factory = factory(store);
    let users = [
        "o'brien",
        "100%_sure\\",
        "\"quoted\" user",
        "ユーザー🙂",
        "a_b%c",
        "x' OR '1'='1",
    ];
    for (i, user) in users.iter().enumerate() {
        let thread = format!("thr'ead_%{i}\\");
        let c = ctx(user, &thread, &format!("run'%_\\{i}"));
        let handle = factory.create_for_user(&c).unwrap();
        handle
            .execute(&c, "talker", &format!("text of {user}"))
            .await
            .unwrap();
        drop(handle);
    }
    store.flush().await;
    for (i, user) in users.iter().enumerate() {
        let user_id = UserId::new(*user).unwrap();
        let threads = store.threads(&user_id, 10, None).await.unwrap();
        assert_eq!(threads.len(), 1, "{user}: only its own thread");
        assert_eq!(threads[0].thread_id.as_str(), format!("thr'ead_%{i}\\"));
        let runs = store
            .thread_runs(&user_id, &threads[0].thread_id)
            .await
            .unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].input, format!("text of {user}"));
        let events = store
            .events_after(&user_id, &runs[0].run_id, 0, 100)
            .await
            .unwrap()
            .unwrap();
        assert!(events.events.iter().all(|e| e.user_id == user_id));
    }
    // `a_b%c` must not match `a%b...` as a LIKE pattern would, nor another user's rows.
    let wildcard = UserId::new("a%").unwrap();
    assert!(store.threads(&wildcard, 10, None).await.unwrap().is_empty());
    factory.shutdown().await;
}

/// `run` was marked `interrupted` exactly once: its record says so, and its stored events end
/// with exactly one terminal event (status `interrupted`), their seqs contiguous up to one gap
/// just before it: the room left for events the dead process may have delivered unstored.
pub(crate) async fn assert_interrupted_once(store: &SqlStore, run: &UserExecutionContext) {
    let record = store
        .run(run.user_id(), run.run_id())
        .await
        .expect("a read")
        .expect("the run's record");
    assert_eq!(
        record.status,
        Some(RunStatus::Interrupted),
        "{}",
        run.run_id()
    );
    assert_eq!(record.error.as_deref(), Some(INTERRUPTED));
    let page = store
        .events_after(run.user_id(), run.run_id(), 0, 100_000)
        .await
        .expect("a read")
        .expect("the user's run");
    let events = page.events;
    let before_last = events.len() as u64 - 1;
    assert_eq!(
        page.gaps,
        vec![(before_last + 1, events.last().expect("events").seq - 1)],
        "one gap, just before the interrupted terminal event"
    );
    let terminal: Vec<_> = events.iter().filter(|e| e.event.is_terminal()).collect();
    assert_eq!(terminal.len(), 1, "one terminal event for {}", run.run_id());
    assert_eq!(
        terminal[0].seq,
        events.last().expect("events").seq,
        "and it is last"
    );
    assert!(
        events[..events.len() - 1]
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1),
        "contiguous seq before the gap"
    );
    assert!(matches!(
        terminal[0].event,
        AgentEvent::AgentCompleted {
            status: RunStatus::Interrupted,
            ..
        }
    ));
}

/// Seven threads of frank, listed three at a time with a cursor, most recent first.
pub(crate) async fn threads_page_most_recent_first(store: &SqlStore) {
    let factory = factory(store);
    let c = ctx("frank", "t0", "r");
    let handle = factory.create_for_user(&c).unwrap();
    for i in 0..7 {
        let run = ctx("frank", &format!("t{i}"), &format!("r{i}"));
        handle.execute(&run, "talker", "hi").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    store.flush().await;
    let frank = UserId::new("frank").unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<engine_factory::ThreadCursor> = None;
    let mut deleted_cursor_thread = false;
    loop {
        let page = store.threads(&frank, 3, cursor.as_ref()).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        cursor = page.last().map(engine_factory::ThreadCursor::after);
        seen.extend(page.iter().map(|t| t.thread_id.to_string()));
        if !deleted_cursor_thread {
            // The cursor's own thread deleted between two pages: the next page still follows.
            let last = page.last().unwrap();
            assert!(store.delete_thread(&frank, &last.thread_id).await.unwrap());
            deleted_cursor_thread = true;
        }
    }
    assert_eq!(seen, ["t6", "t5", "t4", "t3", "t2", "t1", "t0"]);
    drop(handle);
    factory.shutdown().await;
}

/// An envelope of `ctx`'s run, as the engine stamps them.
pub(crate) fn envelope(
    ctx: &UserExecutionContext,
    seq: u64,
    event: engine_core::AgentEvent,
) -> EventEnvelope {
    EventEnvelope {
        user_id: ctx.user_id().clone(),
        thread_id: ctx.thread_id().clone(),
        run_id: ctx.run_id().clone(),
        request_id: ctx.request_id().clone(),
        seq,
        timestamp_us: seq,
        event,
    }
}

/// Deleting a thread takes its messages, runs, events and webhook deliveries and nothing of
/// another thread or user (bob's thread has the same id); webhook deliveries are enqueued one
/// per ended run, claimed once per lease, retried when settled with a time, gone when settled
/// without. `store` has webhooks on; `url` is its database (read directly to count rows).
pub(crate) async fn deletes_threads_and_keeps_webhook_deliveries(store: &SqlStore, url: &str) {
    use std::collections::BTreeSet;
    use std::time::Duration;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url)
        .await
        .expect("a direct connection");
    /// Rows of `table` for `user`'s run `run`.
    async fn count_rows(pool: &sqlx::AnyPool, table: &str, user: &str, run: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE user_id = $1 AND run_id = $2");
        sqlx::query_scalar(&sql)
            .bind(user)
            .bind(run)
            .fetch_one(pool)
            .await
            .unwrap()
    }
    let factory = factory(store);
    let mut contexts = Vec::new();
    for (user, thread, run) in [
        ("alice", "t1", "a1"),
        ("alice", "t1", "a2"),
        ("alice", "t2", "a3"),
        ("bob", "t1", "b1"),
    ] {
        let c = ctx(user, thread, run);
        let handle = factory.create_for_user(&c).unwrap();
        handle.execute(&c, "talker", run).await.unwrap();
        contexts.push(c);
    }
    store.flush().await;

    let lease = Duration::from_secs(600);
    let claimed = store.claim_webhooks(100, lease).await.unwrap();
    let got: BTreeSet<(String, String)> = claimed
        .iter()
        .map(|d| (d.user_id.to_string(), d.run_id.to_string()))
        .collect();
    let want: BTreeSet<(String, String)> = contexts
        .iter()
        .map(|c| (c.user_id().to_string(), c.run_id().to_string()))
        .collect();
    assert_eq!(got, want, "one delivery per ended run");
    for d in &claimed {
        assert_eq!(d.attempts, 1);
        let run = d.run.as_ref().expect("the run's record");
        assert_eq!(run.run_id, d.run_id);
        assert_eq!(run.status, Some(RunStatus::Completed));
        assert_eq!(
            run.result.as_deref(),
            Some(format!("echo: {}", d.run_id).as_str()),
            "the delivery carries its own user's run record"
        );
        assert_eq!(run.usage, engine_core::TokenUsage::default());
        assert!(run.execution_ms < 60_000 && run.ended_at_us.is_some());
    }
    assert!(
        store.claim_webhooks(100, lease).await.unwrap().is_empty(),
        "a claimed delivery is held for its lease"
    );
    // One retried (due again now), one delivered.
    let (a1, b1) = (&contexts[0], &contexts[3]);
    store
        .settle_webhook(a1.user_id(), a1.run_id(), Some(Duration::ZERO))
        .await
        .unwrap();
    store
        .settle_webhook(b1.user_id(), b1.run_id(), None)
        .await
        .unwrap();
    let again = store.claim_webhooks(100, lease).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].run_id, *a1.run_id());
    assert_eq!(again[0].attempts, 2);

    let alice = UserId::new("alice").unwrap();
    let t1 = ThreadId::new("t1").unwrap();
    assert!(store.delete_thread(&alice, &t1).await.unwrap());
    assert!(
        !store.delete_thread(&alice, &t1).await.unwrap(),
        "a deleted thread is not found again"
    );
    assert!(store
        .thread_messages(&alice, &t1, 50)
        .await
        .unwrap()
        .is_empty());
    assert!(store.thread_runs(&alice, &t1).await.unwrap().is_empty());
    for c in &contexts[..2] {
        assert_eq!(store.run(&alice, c.run_id()).await.unwrap(), None);
        assert_eq!(
            store.events_after(&alice, c.run_id(), 0, 10).await.unwrap(),
            None
        );
    }
    // Alice's other thread and bob's thread of the same id stay whole.
    let t2 = ThreadId::new("t2").unwrap();
    assert_eq!(
        store.thread_messages(&alice, &t2, 50).await.unwrap().len(),
        2
    );
    let bob = UserId::new("bob").unwrap();
    assert_eq!(store.thread_messages(&bob, &t1, 50).await.unwrap().len(), 2);
    assert!(stored_events(store, b1).await.len() > 2);
    let listed: Vec<String> = store
        .threads(&alice, 10, None)
        .await
        .unwrap()
        .iter()
        .map(|t| t.thread_id.to_string())
        .collect();
    assert_eq!(listed, ["t2"]);
    // Nothing of the deleted runs is left in any table.
    for table in ["runs", "events", "messages", "approvals", "gaps"] {
        for c in &contexts[..2] {
            let left = count_rows(&pool, table, "alice", c.run_id().as_str()).await;
            assert_eq!(left, 0, "{table} rows of deleted run {}", c.run_id());
        }
    }
    // The deleted runs' deliveries are claimed without a record (the dispatcher drops them);
    // making every delivery due again yields a1 (deleted, no record) and alice's t2 run (bob's
    // was delivered; a2's is still leased).
    let a3 = &contexts[2];
    store
        .settle_webhook(a3.user_id(), a3.run_id(), Some(Duration::ZERO))
        .await
        .unwrap();
    store
        .settle_webhook(a1.user_id(), a1.run_id(), Some(Duration::ZERO))
        .await
        .unwrap();
    let mut left: Vec<(String, bool)> = store
        .claim_webhooks(100, lease)
        .await
        .unwrap()
        .iter()
        .map(|d| (d.run_id.to_string(), d.run.is_some()))
        .collect();
    left.sort();
    assert_eq!(left, [("a1".to_owned(), false), ("a3".to_owned(), true)]);
    factory.shutdown().await;
}
