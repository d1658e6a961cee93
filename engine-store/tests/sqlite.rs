//! The store on a real SQLite file: what it keeps, when it commits, what a crash leaves, what it
//! refuses, and that no read reaches another user's rows.

mod common;

use std::time::Duration;

use common::{ctx, factory, stored_events};
use engine_core::{AgentEvent, RunStatus, ThreadId, UserId};
use engine_factory::{Durability, RunStore};
use engine_store::{OpenError, SqlStore, StoreConfig};

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("gateway.db").display())
}

async fn open(dir: &tempfile::TempDir, node: &str) -> SqlStore {
    SqlStore::open(StoreConfig::new(url(dir)).with_node_id(node))
        .await
        .expect("the store opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_threads_and_events_are_kept_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "n1").await;
    common::runs_threads_and_events_read_back(&store, "n1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_record_is_committed_before_the_handle_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "n1").await;
    let factory = factory(&store);
    let handle = factory.create_for_user(&ctx("carol", "t", "r")).unwrap();
    for i in 0..50 {
        let c = ctx("carol", "t", &format!("run-{i}"));
        handle.execute(&c, "talker", "quick").await.unwrap();
        // No flush: the record must already be there.
        let record = store.run(c.user_id(), c.run_id()).await.unwrap().unwrap();
        assert_eq!(record.status, Some(RunStatus::Completed), "run {i}");
        assert_eq!(record.result.as_deref(), Some("echo: quick"));
    }
    drop(handle);
    factory.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_durability_commits_the_record_before_the_terminal_event_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open(
        StoreConfig::new(url(&dir))
            .with_node_id("n1")
            .with_durability(Durability::Sync),
    )
    .await
    .unwrap();
    let factory = factory(&store);
    let dave = UserId::new("dave").unwrap();
    let mut live = factory.subscribe(&dave);
    let handle = factory.create_for_user(&ctx("dave", "t", "r")).unwrap();
    for i in 0..20 {
        let c = ctx("dave", "t", &format!("run-{i}"));
        let spawned = handle.spawn(&c, "talker", "sync please").unwrap();
        loop {
            let e = live.recv().await.unwrap();
            if e.event.is_terminal() {
                let record = store.run(&dave, c.run_id()).await.unwrap().unwrap();
                assert_eq!(record.status, Some(RunStatus::Completed), "run {i}");
                break;
            }
        }
        spawned.outcome().await.unwrap();
    }
    drop(handle);
    factory.shutdown().await;
}

/// Starts `runs` on a runtime of their own and drops the runtime with them in flight: the
/// process "dies" (no terminal event, no record), as with `kill -9`.
fn crash_with_runs_in_flight(dir: &tempfile::TempDir) -> Vec<engine_core::UserExecutionContext> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runs = rt.block_on(async {
        let store = open(dir, "dead-node").await;
        let factory = factory(&store);
        let mut runs = Vec::new();
        let eve = factory.create_for_user(&ctx("eve", "t", "r")).unwrap();
        let mut live = factory.subscribe(&UserId::new("eve").unwrap());
        for (i, agent) in ["forever", "saver", "forever"].iter().enumerate() {
            let c = ctx("eve", &format!("t{i}"), &format!("in-flight-{i}"));
            eve.spawn(&c, agent, "work").unwrap();
            runs.push(c);
        }
        let done = ctx("eve", "t-done", "finished");
        eve.execute(&done, "talker", "done before").await.unwrap();
        // Wait until the saver asks for approval, and everything so far is written.
        loop {
            let e = live.recv().await.unwrap();
            if matches!(e.event, AgentEvent::ApprovalRequested { .. }) {
                break;
            }
        }
        store.flush().await;
        (runs, eve, factory, store)
    });
    // The process dies: its tasks end where they are (no terminal event, no record), and only
    // then are its engine, factory and store dropped (as the OS frees a killed process's files,
    // the SQLite lock included).
    rt.shutdown_background();
    let (runs, eve, factory, store) = runs;
    drop((eve, factory, store));
    runs
}

#[test]
fn a_crash_leaves_exactly_one_interrupted_record_and_event_per_run() {
    crash_and_restart_as("next-node");
}

/// A restart with the same node id (`--node-id` fixed in the deployment) marks the earlier
/// process's runs too: they are not this process's, whatever their node id says.
#[test]
fn a_restart_with_the_same_node_id_also_ends_the_earlier_processs_runs() {
    crash_and_restart_as("dead-node");
}

fn crash_and_restart_as(node: &str) {
    let dir = tempfile::tempdir().unwrap();
    let in_flight = crash_with_runs_in_flight(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(after_the_crash(&dir, &in_flight, node));
}

async fn after_the_crash(
    dir: &tempfile::TempDir,
    in_flight: &[engine_core::UserExecutionContext],
    node: &str,
) {
    // The next start marks them, once.
    let store = reopen(dir, node).await;
    assert_eq!(store.health().runs_interrupted, 3);
    for c in in_flight {
        common::assert_interrupted_once(&store, c).await;
    }
    let finished = store
        .run(
            &UserId::new("eve").unwrap(),
            &engine_core::RunId::new("finished").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        finished.status,
        Some(RunStatus::Completed),
        "a finished run is untouched"
    );
    // Again: nothing more to mark, however often.
    assert_eq!(store.sweep_interrupted(None).await.unwrap(), 0);
    drop(store);
    // The file is free again only once the store is gone (the writer drained).
    let again = reopen(dir, "third-node").await;
    assert_eq!(again.health().runs_interrupted, 0);
    for c in in_flight {
        common::assert_interrupted_once(&again, c).await;
    }
    // The pending approval ended `timed_out` with its run.
    let pending: i64 = {
        let pool = sqlx_pool(dir).await;
        sqlx::query_scalar("SELECT COUNT(*) FROM approvals WHERE status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(pending, 0);
}

async fn sqlx_pool(dir: &tempfile::TempDir) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&url(dir)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_thread_is_gone_whole_and_webhook_deliveries_wait_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open(
        StoreConfig::new(url(&dir))
            .with_node_id("n1")
            .with_webhooks(true),
    )
    .await
    .unwrap();
    common::deletes_threads_and_keeps_webhook_deliveries(&store, &url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_ids_are_stored_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "n1").await;
    common::adversarial_ids_read_back(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_page_most_recent_first_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "n1").await;
    common::threads_page_most_recent_first(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_a_newer_binary_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir, "n1").await);
    let pool = sqlx_pool(&dir).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let err = SqlStore::open(StoreConfig::new(url(&dir)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpenError::NewerSchema { version: 9999, .. }),
        "{err}"
    );
    let line = err.to_string();
    assert!(!line.contains('\n'));
    assert!(line.contains("upgrade the binary"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_foreign_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = SqlStore::open(StoreConfig::new(url(&dir)))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    std::fs::remove_file(&path).unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", url(&dir)))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE invoices (id INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = SqlStore::open(StoreConfig::new(url(&dir)))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("invoices"), "{err}");

    let err = SqlStore::open(StoreConfig::new("mysql://h/db"))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::UnsupportedUrl { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_loses_no_run_record_and_records_event_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open(
        StoreConfig::new(url(&dir))
            .with_node_id("n1")
            .with_buffer(4)
            .with_commit_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let factory = factory(&store);
    // Another connection holds the write lock: every batch fails (busy) and is retried.
    let pool = sqlx_pool(&dir).await;
    let mut blocker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let c = ctx("gina", "t", "r");
    let handle = factory.create_for_user(&c).unwrap();
    let runs: Vec<_> = (0..3)
        .map(|i| ctx("gina", "t", &format!("locked-{i}")))
        .collect();
    for r in &runs {
        // Runs go on and end while the database refuses writes (the commit wait is bounded).
        let outcome = handle
            .execute(r, "talker", "one two three four five six seven eight")
            .await
            .unwrap();
        assert!(outcome.is_success());
    }
    assert!(
        store.health().events_dropped > 0,
        "the buffer of 4 overflowed"
    );
    sqlx::query("COMMIT").execute(&mut *blocker).await.unwrap();
    drop(blocker);
    tokio::time::timeout(Duration::from_secs(30), store.flush())
        .await
        .expect("writes resume once the lock is gone");
    let health = store.health();
    assert!(health.up, "{health:?}");
    for r in &runs {
        let record = store.run(r.user_id(), r.run_id()).await.unwrap().unwrap();
        assert_eq!(record.status, Some(RunStatus::Completed), "no record lost");
        let page = store
            .events_after(r.user_id(), r.run_id(), 0, 1000)
            .await
            .unwrap()
            .unwrap();
        let terminal = page.events.iter().filter(|e| e.event.is_terminal()).count();
        assert_eq!(terminal, 1, "the terminal event is never dropped");
        let stored = page.events.len() as u64;
        let missing: u64 = page.gaps.iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(
            stored + missing,
            page.events.last().unwrap().seq,
            "every seq is an event or a gap"
        );
    }
    drop(handle);
    factory.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_turns_of_a_thread_store_linearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "n1").await;
    let factory = factory(&store);
    let henry = UserId::new("henry").unwrap();
    let mut live = factory.subscribe(&henry);
    let handle = factory.create_for_user(&ctx("henry", "long", "r")).unwrap();
    let empty = store.size_bytes().await.unwrap();
    let mut json_bytes = 0usize;
    let mut sizes = Vec::new();
    for turn in 0..200 {
        let c = ctx("henry", "long", &format!("turn-{turn}"));
        let text = format!("turn {turn}: tell me something about the number {turn} please");
        let outcome = handle.execute(&c, "talker", &text).await.unwrap();
        json_bytes += text.len() + outcome.result().unwrap().len();
        while let Some(e) = live.try_recv() {
            json_bytes += serde_json::to_string(&e).unwrap().len();
        }
        if turn % 50 == 49 {
            store.flush().await;
            sizes.push(store.size_bytes().await.unwrap() - empty);
        }
    }
    let stored = *sizes.last().unwrap();
    eprintln!("200 turns: {stored} bytes stored for {json_bytes} bytes of messages and events as JSON ({:.2}x); at 50/100/150/200 turns: {sizes:?}", stored as f64 / json_bytes as f64);
    assert!(
        (stored as f64) <= 1.5 * json_bytes as f64,
        "{stored} bytes stored for {json_bytes} bytes of JSON"
    );
    // Linear: the last 50 turns cost about what the first 50 did (no per-turn rewrite).
    let first = sizes[0] as f64;
    let last = (sizes[3] - sizes[2]) as f64;
    assert!(last <= first * 1.5, "growth per 50 turns {sizes:?}");
    // Reading the last 20 messages of the thread.
    let messages = store
        .thread_messages(&henry, &ThreadId::new("long").unwrap(), 20)
        .await
        .unwrap();
    assert_eq!(messages.len(), 20);
    assert!(messages[19].content.starts_with("echo: turn 199"));
    drop(handle);
    factory.shutdown().await;
}

/// Writes a run's acceptance and events straight through the store API, as an engine's sink
/// does, ending with `terminal` (and `ended` when given), then drops everything as a crash.
fn crash_after(
    dir: &tempfile::TempDir,
    durability: Durability,
    write_end: bool,
    write_terminal: bool,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async {
        let store = SqlStore::open(
            StoreConfig::new(url(dir))
                .with_node_id("dying")
                .with_durability(durability),
        )
        .await
        .unwrap();
        let c = ctx("ivy", "t", "the-run");
        store.run_accepted(engine_factory::RunAccepted::new(
            &c,
            "talker",
            "hello\0there",
        ));
        let terminal = common::envelope(
            &c,
            2,
            AgentEvent::AgentCompleted {
                agent_name: "talker".into(),
                status: RunStatus::Completed,
                success: true,
                result: Some("answer with a \0 NUL".into()),
                error: None,
                duration_ms: 1,
            },
        );
        store.event(&common::envelope(
            &c,
            1,
            AgentEvent::AgentStarted {
                agent_name: "talker".into(),
            },
        ));
        if write_end {
            let mut end = engine_factory::RunEnded::new(&c, RunStatus::Completed);
            end.result = Some("answer with a \0 NUL".into());
            if durability == Durability::Sync {
                end.terminal = Some(terminal.clone());
            }
            store.run_ended(end).await.unwrap();
        }
        if write_terminal {
            store.event(&terminal);
        }
        store.flush().await;
        store
    });
    rt.shutdown_background();
    drop(store);
}

/// Opens the file again as `node` once the dropped store's writer has let it go (10 s at most).
async fn reopen(dir: &tempfile::TempDir, node: &str) -> SqlStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match SqlStore::open(StoreConfig::new(url(dir)).with_node_id(node)).await {
            Ok(store) => return store,
            Err(OpenError::InUse { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Batch durability: the terminal event is stored, the end record (written later) is not when
/// the process dies. The run is ended by its own terminal event, not marked interrupted too.
#[test]
fn a_crash_between_the_terminal_event_and_the_record_leaves_one_end() {
    let dir = tempfile::tempdir().unwrap();
    crash_after(&dir, Durability::Batch, false, true);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = reopen(&dir, "next").await;
        assert_eq!(store.health().runs_interrupted, 0);
        let c = ctx("ivy", "t", "the-run");
        let record = store.run(c.user_id(), c.run_id()).await.unwrap().unwrap();
        assert_eq!(record.status, Some(RunStatus::Completed));
        assert_eq!(
            record.input, "hello\u{fffd}there",
            "a NUL is kept as U+FFFD"
        );
        let events = stored_events(&store, &c).await;
        assert_eq!(events.iter().filter(|e| e.event.is_terminal()).count(), 1);
        let messages = store
            .thread_messages(c.user_id(), c.thread_id(), 10)
            .await
            .unwrap();
        assert_eq!(messages.len(), 2, "input and answer, once each");
    });
}

/// Sync durability: the record is committed before the terminal event is emitted; the process
/// dies in between. The record carried the terminal event: the run has its end and its event.
#[test]
fn a_crash_between_a_sync_record_and_its_terminal_event_leaves_both() {
    let dir = tempfile::tempdir().unwrap();
    crash_after(&dir, Durability::Sync, true, false);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = reopen(&dir, "next").await;
        assert_eq!(store.health().runs_interrupted, 0);
        let c = ctx("ivy", "t", "the-run");
        let record = store.run(c.user_id(), c.run_id()).await.unwrap().unwrap();
        assert_eq!(record.status, Some(RunStatus::Completed));
        let events = stored_events(&store, &c).await;
        let terminal: Vec<_> = events.iter().filter(|e| e.event.is_terminal()).collect();
        assert_eq!(terminal.len(), 1);
        assert_eq!(terminal[0].seq, 2);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&dir, "first").await;
    let err = SqlStore::open(StoreConfig::new(url(&dir)))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("gateway.db"), "{err}");
    drop(first);
}
