//! The store on a real PostgreSQL server (`engine_store::testing::PostgresServer`: initdb into a
//! temporary directory, a free loopback port): what it keeps, nodes migrating one database at
//! once, a dead node's runs interrupted exactly once by racing nodes, the database going away
//! and coming back under a live factory, and ids that would break a careless query.
//!
//! Where PostgreSQL is not installed each test says it is skipped and passes, except under
//! `CI=true` (`.ci/run` installs Debian's `postgresql`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_interrupted_once, ctx, factory, stored_events};
use engine_core::{AgentEvent, RunId, RunStatus, UserExecutionContext, UserId};
use engine_factory::RunStore;
use engine_store::testing::PostgresServer;
use engine_store::{SqlStore, StoreConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A server of this test's own, or `None` (the test is skipped) without PostgreSQL.
fn server(test: &str) -> Option<PostgresServer> {
    let server = PostgresServer::start();
    if server.is_none() {
        eprintln!("{test}: skipped (PostgreSQL is not installed)");
    }
    server
}

async fn open(url: &str, node: &str) -> SqlStore {
    SqlStore::open(StoreConfig::new(url).with_node_id(node))
        .await
        .expect("the store opens")
}

async fn pg_pool(url: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(url)
        .await
        .expect("a direct connection")
}

/// Polls `check` every 50 ms until it holds; panics with `what` past `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn runs_threads_and_events_are_kept_and_read_back_exactly_on_postgres() {
    let Some(server) = server("read back") else {
        return;
    };
    let url = server.create_database("read_back");
    runtime().block_on(async {
        let store = open(&url, "n1").await;
        assert_eq!(store.backend(), "postgres");
        common::runs_threads_and_events_read_back(&store, "n1").await;
    });
}

#[test]
fn a_deleted_thread_is_gone_whole_and_webhook_deliveries_wait_on_postgres() {
    let Some(server) = server("delete and webhooks") else {
        return;
    };
    let url = server.create_database("delete_webhooks");
    runtime().block_on(async {
        let store = SqlStore::open(
            StoreConfig::new(url.clone())
                .with_node_id("n1")
                .with_webhooks(true),
        )
        .await
        .unwrap();
        common::deletes_threads_and_keeps_webhook_deliveries(&store, &url).await;
    });
}

#[test]
fn adversarial_ids_are_stored_and_read_back_exactly_on_postgres() {
    let Some(server) = server("adversarial ids") else {
        return;
    };
    let url = server.create_database("adversarial");
    runtime().block_on(async {
        let store = open(&url, "n1").await;
        common::adversarial_ids_read_back(&store).await;
    });
}

#[test]
fn threads_page_most_recent_first_with_a_cursor_on_postgres() {
    let Some(server) = server("thread paging") else {
        return;
    };
    let url = server.create_database("paging");
    runtime().block_on(async {
        let store = open(&url, "n1").await;
        common::threads_page_most_recent_first(&store).await;
    });
}

/// The versions of this crate's Postgres migrations, from their file names.
fn migration_versions() -> Vec<i64> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let mut versions: Vec<i64> = std::fs::read_dir(dir)
        .expect("the migrations")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".sql")?.split('_').next()?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    versions
}

#[test]
fn three_nodes_opening_one_empty_database_at_once_migrate_it_once() {
    let Some(server) = server("concurrent migrations") else {
        return;
    };
    let known = migration_versions();
    assert!(!known.is_empty());
    runtime().block_on(async {
        // A few rounds, each on an empty database: a missing lock would show in one of them.
        for round in 0..5 {
            let url = server.create_database(&format!("migrate_{round}"));
            let (a, b, c) = tokio::join!(
                SqlStore::open(StoreConfig::new(&url).with_node_id("a")),
                SqlStore::open(StoreConfig::new(&url).with_node_id("b")),
                SqlStore::open(StoreConfig::new(&url).with_node_id("c")),
            );
            for (node, opened) in [("a", &a), ("b", &b), ("c", &c)] {
                if let Err(e) = opened {
                    panic!("round {round}: node {node} did not open: {e}");
                }
            }
            let pool = pg_pool(&url).await;
            let applied: Vec<(i64, bool)> =
                sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let expected: Vec<(i64, bool)> = known.iter().map(|v| (*v, true)).collect();
            assert_eq!(applied, expected, "round {round}: one row per migration");
            let nodes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(nodes, 3, "round {round}: each node's heartbeat");
            pool.close().await;
        }
    });
}

/// Heartbeat every 200 ms; a node silent for 1 s is dead.
const HEARTBEAT: Duration = Duration::from_millis(200);
const LEASE: Duration = Duration::from_secs(1);

fn node(url: &str, id: &str) -> StoreConfig {
    StoreConfig::new(url)
        .with_node_id(id)
        .with_node_lease(HEARTBEAT, LEASE)
}

/// Node `a`, on a runtime of its own on a thread of its own, starts runs that never end (two
/// `forever`, one `saver` waiting for approval, each on a thread of its own: runs of one
/// thread id wait for each other) and finishes one, then dies: its runtime is shut down with
/// nothing closed. Returns the runs left in flight and the finished one.
fn node_a_dies_with_runs_in_flight(
    url: String,
) -> (Vec<UserExecutionContext>, UserExecutionContext) {
    std::thread::spawn(move || {
        let rt = runtime();
        let runs = rt.block_on(async {
            let store = SqlStore::open(node(&url, "a")).await.expect("node a opens");
            let factory = factory(&store);
            let eve = UserId::new("eve").unwrap();
            let mut live = factory.subscribe(&eve);
            let handle = factory.create_for_user(&ctx("eve", "t", "r")).unwrap();
            let mut runs = Vec::new();
            for (i, agent) in ["forever", "saver", "forever"].iter().enumerate() {
                let c = ctx("eve", &format!("t{i}"), &format!("in-flight-{i}"));
                handle.spawn(&c, agent, "work").unwrap();
                runs.push(c);
            }
            let done = ctx("eve", "t-done", "finished");
            handle
                .execute(&done, "talker", "done before")
                .await
                .unwrap();
            // Until the saver asks for approval; then everything so far is committed.
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let e = live.recv().await.expect("eve's events");
                    if matches!(e.event, AgentEvent::ApprovalRequested { .. }) {
                        return;
                    }
                }
            })
            .await
            .expect("the saver asks for approval");
            store.flush().await;
            // No orderly close: the node dies.
            std::mem::forget(handle);
            std::mem::forget(factory);
            std::mem::forget(live);
            (runs, done)
        });
        rt.shutdown_background();
        runs
    })
    .join()
    .expect("node a's thread")
}

/// One round of the cluster scenario on the empty database `url`.
async fn a_dead_node_is_swept_once(url: &str, round: usize) {
    // A live node with a run of its own: its heartbeat is fresh, so nobody may touch its run.
    // (It sweeps with a lease of an hour itself: every mark of node a's runs is b's or c's.)
    let live = SqlStore::open(
        StoreConfig::new(url)
            .with_node_id("live")
            .with_node_lease(HEARTBEAT, Duration::from_secs(3600)),
    )
    .await
    .expect("the live node opens");
    let live_factory = factory(&live);
    let dan = ctx("dan", "t", "live-run");
    let dan_handle = live_factory.create_for_user(&dan).unwrap();
    dan_handle.spawn(&dan, "forever", "keep going").unwrap();

    let url_a = url.to_owned();
    let (in_flight, finished) =
        tokio::task::spawn_blocking(move || node_a_dies_with_runs_in_flight(url_a))
            .await
            .expect("node a");
    live.flush().await;

    // Nodes b and c sweep at once, again and again, until node a's lease has run out and its
    // runs are marked.
    let (b, c) = tokio::join!(
        SqlStore::open(node(url, "b")),
        SqlStore::open(node(url, "c"))
    );
    let (b, c) = (b.expect("node b opens"), c.expect("node c opens"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sweeps = 0;
    let mut errors = Vec::new();
    loop {
        let (from_b, from_c) = tokio::join!(
            b.sweep_interrupted(Some(LEASE)),
            c.sweep_interrupted(Some(LEASE))
        );
        sweeps += 1;
        errors.extend(from_b.err());
        errors.extend(from_c.err());
        let mut marked = 0;
        for run in &in_flight {
            let record = b.run(run.user_id(), run.run_id()).await.unwrap().unwrap();
            marked += usize::from(record.status == Some(RunStatus::Interrupted));
        }
        if marked == in_flight.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: {marked} of {} runs marked after {sweeps} sweeps; errors: {errors:?}",
            in_flight.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        errors.is_empty(),
        "round {round}: sweeps failed: {errors:?}"
    );
    // A few more sweeps from both: nothing is left to mark.
    for _ in 0..3 {
        let (from_b, from_c) = tokio::join!(
            b.sweep_interrupted(Some(LEASE)),
            c.sweep_interrupted(Some(LEASE))
        );
        assert_eq!((from_b.unwrap(), from_c.unwrap()), (0, 0), "round {round}");
    }

    // Exactly one mark per run between the two nodes (their sweeps at open and at each
    // heartbeat count too), and none by the live node.
    let (by_b, by_c) = (b.health().runs_interrupted, c.health().runs_interrupted);
    assert_eq!(
        by_b + by_c,
        in_flight.len() as u64,
        "round {round}: b marked {by_b}, c marked {by_c}"
    );
    assert_eq!(live.health().runs_interrupted, 0, "round {round}");
    for run in &in_flight {
        assert_interrupted_once(&b, run).await;
        assert_interrupted_once(&c, run).await;
    }
    let done = b
        .run(finished.user_id(), finished.run_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        done.status,
        Some(RunStatus::Completed),
        "round {round}: a finished run is untouched"
    );
    // The saver's pending approval ended with its run.
    let pool = pg_pool(url).await;
    let approvals: Vec<(String, String)> =
        sqlx::query_as("SELECT run_id, status FROM approvals ORDER BY run_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        approvals,
        vec![("in-flight-1".to_owned(), "timed_out".to_owned())],
        "round {round}"
    );
    pool.close().await;

    // The live node's run is still running, with no terminal event.
    let record = b.run(dan.user_id(), dan.run_id()).await.unwrap().unwrap();
    assert_eq!(
        record.status, None,
        "round {round}: a live node's run is not swept"
    );
    assert_eq!(record.node_id, "live");
    let events = stored_events(&b, &dan).await;
    assert!(
        !events.iter().any(|e| e.event.is_terminal()),
        "round {round}: {events:?}"
    );
    drop(dan_handle);
    live_factory.shutdown().await;
}

#[test]
fn a_dead_nodes_runs_are_interrupted_exactly_once_by_racing_nodes_twenty_times() {
    let Some(server) = server("node loss") else {
        return;
    };
    let started = Instant::now();
    let rt = runtime();
    for round in 0..20 {
        let url = server.create_database(&format!("cluster_{round}"));
        rt.block_on(a_dead_node_is_swept_once(&url, round));
    }
    eprintln!("20 rounds of node loss in {:?}", started.elapsed());
}

#[test]
fn runs_complete_while_postgres_is_down_and_their_records_land_after_it_restarts() {
    let Some(mut server) = server("database restart") else {
        return;
    };
    let url = server.create_database("restart");
    let commit_timeout = Duration::from_millis(300);
    let rt = runtime();
    let store = rt.block_on(async {
        SqlStore::open(
            StoreConfig::new(&url)
                .with_node_id("n1")
                .with_node_lease(HEARTBEAT, LEASE)
                .with_commit_timeout(commit_timeout),
        )
        .await
        .expect("the store opens")
    });
    let factory = Arc::new(rt.block_on(async { factory(&store) }));
    let handle = factory.create_for_user(&ctx("ivy", "t", "r")).unwrap();
    let run = |name: String| {
        let c = ctx("ivy", "t", &name);
        let started = Instant::now();
        let outcome = rt
            .block_on(handle.execute(&c, "talker", "still here"))
            .expect("the run");
        assert!(outcome.is_success(), "{name}: {outcome:?}");
        (c, started.elapsed())
    };
    let mut runs = Vec::new();
    for i in 0..2 {
        runs.push(run(format!("before-{i}")).0);
    }
    rt.block_on(store.flush());
    assert!(store.health().up);

    server.stop();
    for i in 0..5 {
        let (c, took) = run(format!("while-down-{i}"));
        // The run waits for its record's commit up to the commit timeout, then ends anyway.
        assert!(
            took < commit_timeout + Duration::from_secs(2),
            "{}: took {took:?} with the database down",
            c.run_id()
        );
        runs.push(c);
    }
    rt.block_on(eventually(
        Duration::from_secs(20),
        "health().up turns false",
        || async { !store.health().up },
    ));
    assert!(store.health().write_errors > 0);

    server.restart();
    rt.block_on(async {
        eventually(
            Duration::from_secs(60),
            "every record and terminal event lands",
            || async {
                for c in &runs {
                    let Ok(Some(record)) = store.run(c.user_id(), c.run_id()).await else {
                        return false;
                    };
                    if record.status != Some(RunStatus::Completed) {
                        return false;
                    }
                    let Ok(Some(page)) = store.events_after(c.user_id(), c.run_id(), 0, 1000).await
                    else {
                        return false;
                    };
                    if page.events.iter().filter(|e| e.event.is_terminal()).count() != 1 {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        eventually(Duration::from_secs(20), "health().up again", || async {
            store.health().up
        })
        .await;
        for c in &runs {
            let record = store.run(c.user_id(), c.run_id()).await.unwrap().unwrap();
            assert_eq!(record.result.as_deref(), Some("echo: still here"));
            let events = stored_events(&store, c).await;
            assert_eq!(
                events.iter().filter(|e| e.event.is_terminal()).count(),
                1,
                "{}",
                c.run_id()
            );
            assert_eq!(events.last().map(|e| e.seq), Some(events.len() as u64));
        }
        let ivy = UserId::new("ivy").unwrap();
        let thread = store
            .thread_runs(&ivy, &engine_core::ThreadId::new("t").unwrap())
            .await
            .unwrap();
        let ids: Vec<&RunId> = thread.iter().map(|r| &r.run_id).collect();
        assert_eq!(ids.len(), runs.len(), "{ids:?}");
        drop(handle);
        factory.shutdown().await;
    });
}
