//! [`SqlStore`]: the [`RunStore`] on SQLite or Postgres.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_core::{
    AgentEvent, EventEnvelope, RequestId, RunId, RunStatus, ThreadId, TokenUsage, UserId,
};
use engine_factory::{
    BoxFuture, Durability, Role, RunAccepted, RunEnded, RunRecord, RunStore, StoreError,
    StoreHealth, StoredEvents, ThreadCursor, ThreadMessage, ThreadSummary, WebhookDue,
};
use sqlx::any::AnyRow;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::config::StoreConfig;
use crate::db::{cause_of, open, within, Backend, OpenError};
use crate::recover::{heartbeat, interrupt, Sweep};
use crate::writer::{i64_of, write_loop, Counters, Op, Shared, LATENCY_BUCKETS};

/// Threads, runs, events and approvals in SQLite or Postgres, behind the factory's
/// [`RunStore`] seam. Cheap to clone; the background tasks (the writer, and on Postgres the
/// heartbeat and sweep) end when the last clone is dropped, after the writer has drained.
#[derive(Clone)]
pub struct SqlStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Op>,
    durability: Durability,
    commit_timeout: Duration,
    node_lease: Duration,
    url: String,
    heartbeat_task: Option<tokio::task::JoinHandle<()>>,
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat_task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("url", &self.inner.url)
            .field("backend", &self.inner.shared.backend.name())
            .field("node_id", &self.inner.shared.node_id)
            .finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Opens the database of `config` (created if it is a new SQLite file, which this process
    /// then holds: a second process on it is refused), runs the embedded migrations, marks the
    /// runs a stopped process left `running` as `interrupted` (on SQLite: every one, now; on
    /// Postgres: this node id's earlier process's now, and those of nodes whose heartbeat
    /// expired, now and at every heartbeat), and starts the writer. Needs a tokio runtime.
    ///
    /// # Errors
    /// [`OpenError`], each naming the database (password hidden) and what to do: unreachable,
    /// not a database, another application's SQLite file, a file another process holds, a
    /// schema newer than this binary.
    pub async fn open(config: StoreConfig) -> Result<Self, OpenError> {
        let opened = open(&config).await?;
        let shared = Arc::new(Shared {
            _lock: opened.lock,
            pool: opened.pool,
            backend: opened.backend,
            node_id: config.node_id.clone(),
            batch_size: config.batch_size,
            buffer: config.buffer,
            webhooks: config.webhooks,
            buffered: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            lost: Mutex::new(std::collections::HashMap::new()),
            counters: Counters::default(),
        });
        shared.counters.up.store(true, Ordering::Relaxed);
        let url = config.url_redacted();
        let failed = |e: sqlx::Error| OpenError::Unreachable {
            url: url.clone(),
            cause: cause_of(&e),
        };
        heartbeat(&shared).await.map_err(failed)?;
        let (at_start, sweep) = match opened.backend {
            Backend::Sqlite => (Sweep::Everything, Sweep::Everything),
            Backend::Postgres => (
                Sweep::MineAndDead {
                    lease: config.node_lease,
                },
                Sweep::DeadNodes {
                    lease: config.node_lease,
                },
            ),
        };
        interrupt(&shared, at_start).await.map_err(failed)?;
        let heartbeat_task = (opened.backend == Backend::Postgres).then(|| {
            tokio::spawn(heartbeat_loop(
                Arc::downgrade(&shared),
                config.heartbeat,
                sweep,
            ))
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(Arc::clone(&shared), rx));
        tracing::info!(backend = shared.backend.name(), database = %url, node_id = %shared.node_id, "run store open");
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tx,
                durability: config.durability,
                commit_timeout: config.commit_timeout,
                node_lease: config.node_lease,
                url,
                heartbeat_task,
                writer: Some(writer),
            }),
        })
    }

    /// Closes the store: when this is its last handle (the factory that used it is gone), every
    /// buffered write is committed (or given up), the writer ends and the SQLite file is free
    /// for another process when this returns. With other handles left it only drops this one.
    pub async fn close(self) {
        let Ok(mut inner) = Arc::try_unwrap(self.inner) else {
            return;
        };
        let writer = inner.writer.take();
        drop(inner); // the sender: the writer drains what is queued and ends
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }

    /// The backend's name: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.inner.shared.backend.name()
    }

    /// The database URL, password hidden.
    pub fn url_redacted(&self) -> &str {
        &self.inner.url
    }

    /// Whether each run's end enqueues a webhook delivery
    /// ([`StoreConfig::with_webhooks`](crate::StoreConfig::with_webhooks)).
    pub fn webhooks(&self) -> bool {
        self.inner.shared.webhooks
    }

    /// This node's id, as its runs are recorded.
    pub fn node_id(&self) -> &str {
        &self.inner.shared.node_id
    }

    /// Sweeps now for runs of dead nodes (Postgres) or of other processes (SQLite), marking
    /// them `interrupted`; returns how many this call marked. The store also does it at open
    /// and, on Postgres, every heartbeat.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database fails.
    pub async fn sweep_interrupted(&self, lease: Option<Duration>) -> Result<u64, StoreError> {
        let sweep = match (self.inner.shared.backend, lease) {
            (_, Some(lease)) => Sweep::DeadNodes { lease },
            (Backend::Sqlite, None) => Sweep::DeadNodes {
                lease: Duration::ZERO,
            },
            (Backend::Postgres, None) => Sweep::DeadNodes {
                lease: self.inner.node_lease,
            },
        };
        interrupt(&self.inner.shared, sweep)
            .await
            .map_err(unavailable)
    }

    /// Bytes the database takes on disk (SQLite: the file's pages; Postgres: the database).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database fails.
    pub async fn size_bytes(&self) -> Result<u64, StoreError> {
        let pool = &self.inner.shared.pool;
        let bytes: i64 = match self.inner.shared.backend {
            Backend::Sqlite => {
                sqlx::query_scalar(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                )
                .fetch_one(pool)
                .await
            }
            Backend::Postgres => {
                sqlx::query_scalar("SELECT CAST(pg_database_size(current_database()) AS BIGINT)")
                    .fetch_one(pool)
                    .await
            }
        }
        .map_err(unavailable)?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    fn send(&self, op: Op) -> bool {
        let queued = &self.inner.shared.queued;
        queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.inner.tx.send(op).is_ok();
        if !sent {
            queued.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }
}

async fn heartbeat_loop(shared: std::sync::Weak<Shared>, period: Duration, sweep: Sweep) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Bounded: a database that stops answering must not stop the beat for good.
        let beat = within(period.max(Duration::from_secs(5)), async {
            heartbeat(&shared).await?;
            interrupt(&shared, sweep).await
        });
        // The heartbeat says whether the database answers, both ways: an idle writer has
        // nothing to prove it with, and a beat that failed while the database was away must
        // not leave the store `down` once it is back.
        match beat.await {
            Ok(_) => {
                if !shared.counters.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("run store heartbeat answered again");
                }
            }
            Err(e) => {
                shared.counters.up.store(false, Ordering::Relaxed);
                tracing::warn!(error = %cause_of(&e), "run store heartbeat failed; retrying at the next beat");
            }
        }
    }
}

/// Longest a write made outside the writer (a deletion, a webhook claim) may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deletes `user`'s thread and everything of its runs, in one transaction; `true` if it
/// existed.
async fn delete_thread(
    shared: &Shared,
    user: &UserId,
    thread: &ThreadId,
) -> Result<bool, sqlx::Error> {
    let mut tx = shared.pool.begin().await?;
    // Pending webhook deliveries stay: claimed without their record, they are dropped and
    // counted by the dispatcher (nothing of the deleted thread is sent).
    for table in ["events", "gaps", "approvals"] {
        let sql = format!(
            "DELETE FROM {table} WHERE user_id = $1 AND run_id IN \
             (SELECT run_id FROM runs WHERE user_id = $1 AND thread_id = $2)"
        );
        sqlx::query(&sql)
            .bind(user.as_str())
            .bind(thread.as_str())
            .execute(&mut *tx)
            .await?;
    }
    let mut found = 0;
    for table in ["messages", "runs", "threads"] {
        let sql = format!("DELETE FROM {table} WHERE user_id = $1 AND thread_id = $2");
        found += sqlx::query(&sql)
            .bind(user.as_str())
            .bind(thread.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(found > 0)
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(cause_of(&e))
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn status_of(name: &str) -> Option<RunStatus> {
    Some(match name {
        "completed" => RunStatus::Completed,
        "failed" => RunStatus::Failed,
        "timed_out" => RunStatus::TimedOut,
        "cancelled" => RunStatus::Cancelled,
        "guardrail_tripped" => RunStatus::GuardrailTripped,
        "interrupted" => RunStatus::Interrupted,
        _ => return None,
    })
}

/// Ids read back from the store were validated when written; a row that no longer parses
/// (edited by hand) is reported, not trusted.
fn id<'s, T>(
    value: &'s str,
    parse: impl FnOnce(&'s str) -> Result<T, engine_core::IdError>,
) -> Result<T, StoreError> {
    parse(value).map_err(|e| StoreError::Unavailable(format!("a stored id does not parse: {e}")))
}

const RUN_COLUMNS: &str = "run_id, thread_id, request_id, agent_name, status, input, result, error, \
     prompt_tokens, completion_tokens, queue_ms, execution_ms, steps, accepted_us, ended_us, node_id";

fn run_record(row: &AnyRow) -> Result<RunRecord, StoreError> {
    let get_s = |i: usize| row.try_get::<String, _>(i).map_err(unavailable);
    let get_os = |i: usize| row.try_get::<Option<String>, _>(i).map_err(unavailable);
    let get_i = |i: usize| row.try_get::<i64, _>(i).map_err(unavailable);
    let mut record = RunRecord::new(
        id(&get_s(0)?, RunId::new)?,
        id(&get_s(1)?, ThreadId::new)?,
        id(&get_s(2)?, RequestId::new)?,
    );
    record.node_id = get_s(15)?;
    record.agent_name = get_s(3)?;
    record.status = status_of(&get_s(4)?);
    record.input = get_s(5)?;
    record.result = get_os(6)?;
    record.error = get_os(7)?;
    record.usage = TokenUsage::new(u64_of(get_i(8)?), u64_of(get_i(9)?));
    record.queue_ms = u64_of(get_i(10)?);
    record.execution_ms = u64_of(get_i(11)?);
    record.steps = get_os(12)?
        .and_then(|s| serde_json::from_str::<Vec<serde_json::Value>>(&s).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|v| {
            (
                v["agent_name"].as_str().unwrap_or_default().to_owned(),
                v["status"].as_str().and_then(status_of),
            )
        })
        .collect();
    record.accepted_at_us = u64_of(get_i(13)?);
    record.ended_at_us = row
        .try_get::<Option<i64>, _>(14)
        .map_err(unavailable)?
        .map(u64_of);
    Ok(record)
}

impl RunStore for SqlStore {
    fn durability(&self) -> Durability {
        self.inner.durability
    }

    fn run_accepted(&self, run: RunAccepted) {
        if !self.send(Op::Accepted(run)) {
            tracing::warn!("run store closed; an accepted run is not recorded");
        }
    }

    fn event(&self, event: &EventEnvelope) {
        let shared = &self.inner.shared;
        // Terminal events always queue (a run's end is never dropped); others up to the buffer.
        if !event.event.is_terminal()
            && shared.buffered.fetch_add(1, Ordering::Relaxed) >= shared.buffer
        {
            shared.buffered.fetch_sub(1, Ordering::Relaxed);
            shared.lose(&event.user_id, &event.run_id, event.seq);
            return;
        }
        if event.event.is_terminal() {
            shared.buffered.fetch_add(1, Ordering::Relaxed);
        }
        if !self.send(Op::Event(event.clone())) {
            shared.buffered.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn run_ended(&self, end: RunEnded) -> BoxFuture<'static, Result<(), StoreError>> {
        let (ack, committed) = oneshot::channel();
        let sent = self.send(Op::Ended(end, Some(ack)));
        let limit = self.inner.commit_timeout;
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            match tokio::time::timeout(limit, committed).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(StoreError::Closed),
                Err(_) => Err(StoreError::CommitTimeout(limit)),
            }
        })
    }

    fn threads<'a>(
        &'a self,
        user: &'a UserId,
        limit: usize,
        after: Option<&'a ThreadCursor>,
    ) -> BoxFuture<'a, Result<Vec<ThreadSummary>, StoreError>> {
        Box::pin(async move {
            let pool = &self.inner.shared.pool;
            let limit = i64_of(limit as u64);
            let rows = match after {
                None => {
                    sqlx::query(
                        "SELECT thread_id, created_us, updated_us, run_count, preview FROM threads \
                         WHERE user_id = $1 ORDER BY updated_us DESC, thread_id DESC LIMIT $2",
                    )
                    .bind(user.as_str())
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                }
                Some(cursor) => {
                    sqlx::query(
                        "SELECT thread_id, created_us, updated_us, run_count, preview FROM threads \
                         WHERE user_id = $1 AND (updated_us < $2 OR (updated_us = $2 AND thread_id < $3)) \
                         ORDER BY updated_us DESC, thread_id DESC LIMIT $4",
                    )
                    .bind(user.as_str())
                    .bind(i64_of(cursor.updated_at_us))
                    .bind(cursor.thread_id.as_str())
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                }
            }
            .map_err(unavailable)?;
            rows.iter()
                .map(|row| {
                    let thread: String = row.try_get(0).map_err(unavailable)?;
                    Ok(ThreadSummary::new(
                        id(&thread, ThreadId::new)?,
                        u64_of(row.try_get(1).map_err(unavailable)?),
                        u64_of(row.try_get(2).map_err(unavailable)?),
                        u64_of(row.try_get(3).map_err(unavailable)?),
                        row.try_get(4).map_err(unavailable)?,
                    ))
                })
                .collect()
        })
    }

    fn thread_messages<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ThreadMessage>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT role, content, run_id, created_us FROM messages \
                 WHERE user_id = $1 AND thread_id = $2 ORDER BY id DESC LIMIT $3",
            )
            .bind(user.as_str())
            .bind(thread.as_str())
            .bind(i64_of(limit as u64))
            .fetch_all(&self.inner.shared.pool)
            .await
            .map_err(unavailable)?;
            let mut messages = rows
                .iter()
                .map(|row| {
                    let role: String = row.try_get(0).map_err(unavailable)?;
                    let run: String = row.try_get(2).map_err(unavailable)?;
                    Ok(ThreadMessage::new(
                        Role::parse(&role).unwrap_or(Role::Assistant),
                        row.try_get::<String, _>(1).map_err(unavailable)?,
                        id(&run, RunId::new)?,
                        u64_of(row.try_get(3).map_err(unavailable)?),
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            messages.reverse();
            Ok(messages)
        })
    }

    fn thread_runs<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE user_id = $1 AND thread_id = $2 ORDER BY accepted_us, run_id"
            );
            let rows = sqlx::query(&sql)
                .bind(user.as_str())
                .bind(thread.as_str())
                .fetch_all(&self.inner.shared.pool)
                .await
                .map_err(unavailable)?;
            rows.iter().map(run_record).collect()
        })
    }

    fn run<'a>(
        &'a self,
        user: &'a UserId,
        run: &'a RunId,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>> {
        Box::pin(async move {
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE user_id = $1 AND run_id = $2");
            let row = sqlx::query(&sql)
                .bind(user.as_str())
                .bind(run.as_str())
                .fetch_optional(&self.inner.shared.pool)
                .await
                .map_err(unavailable)?;
            row.as_ref().map(run_record).transpose()
        })
    }

    fn events_after<'a>(
        &'a self,
        user: &'a UserId,
        run: &'a RunId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<StoredEvents>, StoreError>> {
        Box::pin(async move {
            let pool = &self.inner.shared.pool;
            let thread: Option<String> =
                sqlx::query_scalar("SELECT thread_id FROM runs WHERE user_id = $1 AND run_id = $2")
                    .bind(user.as_str())
                    .bind(run.as_str())
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
            let Some(thread) = thread else {
                return Ok(None);
            };
            let thread_id = id(&thread, ThreadId::new)?;
            let rows = sqlx::query(
                "SELECT seq, request_id, timestamp_us, body FROM events \
                 WHERE user_id = $1 AND run_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            )
            .bind(user.as_str())
            .bind(run.as_str())
            .bind(i64_of(after_seq))
            .bind(i64_of(limit as u64 + 1))
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
            let mut found = StoredEvents::default();
            found.more = rows.len() > limit;
            let mut expected = after_seq.saturating_add(1);
            for row in rows.iter().take(limit) {
                let seq = u64_of(row.try_get(0).map_err(unavailable)?);
                let request: String = row.try_get(1).map_err(unavailable)?;
                let body: String = row.try_get(3).map_err(unavailable)?;
                let event: AgentEvent = serde_json::from_str(&body).map_err(|e| {
                    StoreError::Unavailable(format!("a stored event does not parse: {e}"))
                })?;
                if seq > expected {
                    found.gaps.push((expected, seq - 1));
                }
                expected = seq + 1;
                found.events.push(EventEnvelope {
                    user_id: user.clone(),
                    thread_id: thread_id.clone(),
                    run_id: run.clone(),
                    request_id: id(&request, RequestId::new)?,
                    seq,
                    timestamp_us: u64_of(row.try_get(2).map_err(unavailable)?),
                    event,
                });
            }
            Ok(Some(found))
        })
    }

    fn delete_thread<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            // What was queued for the thread before is committed first, then deleted with it.
            self.flush().await;
            within(
                WRITE_TIMEOUT,
                delete_thread(&self.inner.shared, user, thread),
            )
            .await
            .map_err(unavailable)
        })
    }

    fn claim_webhooks(
        &self,
        limit: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<WebhookDue>, StoreError>> {
        Box::pin(async move {
            let now = self.inner.shared.backend.now_us();
            let lease = i64_of(u64::try_from(lease.as_micros()).unwrap_or(u64::MAX));
            // On the database's clock. The outer `due_us <= now` is checked again on a row
            // another node claimed meanwhile (Postgres re-reads it): claimed once per lease.
            let sql = format!(
                "UPDATE webhooks SET due_us = {now} + $1, attempts = attempts + 1 \
                 WHERE due_us <= {now} AND (user_id, run_id) IN \
                 (SELECT user_id, run_id FROM webhooks WHERE due_us <= {now} ORDER BY due_us LIMIT $2) \
                 RETURNING user_id, run_id, attempts, enqueued_us"
            );
            let claimed = within(
                WRITE_TIMEOUT,
                sqlx::query(&sql)
                    .bind(lease)
                    .bind(i64_of(limit as u64))
                    .fetch_all(&self.inner.shared.pool),
            )
            .await
            .map_err(unavailable)?;
            let mut due = Vec::with_capacity(claimed.len());
            for row in &claimed {
                let user: String = row.try_get(0).map_err(unavailable)?;
                let run: String = row.try_get(1).map_err(unavailable)?;
                let user = id(&user, UserId::new)?;
                let run = id(&run, RunId::new)?;
                let attempts = u32::try_from(row.try_get::<i64, _>(2).map_err(unavailable)?)
                    .unwrap_or(u32::MAX);
                let enqueued = u64_of(row.try_get(3).map_err(unavailable)?);
                let record = self.run(&user, &run).await?;
                due.push(WebhookDue::new(user, run, record, attempts, enqueued));
            }
            Ok(due)
        })
    }

    fn settle_webhook<'a>(
        &'a self,
        user: &'a UserId,
        run: &'a RunId,
        retry_in: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let pool = &self.inner.shared.pool;
            let now = self.inner.shared.backend.now_us();
            let retry_sql = format!(
                "UPDATE webhooks SET due_us = {now} + $3 WHERE user_id = $1 AND run_id = $2"
            );
            let query = match retry_in {
                None => sqlx::query("DELETE FROM webhooks WHERE user_id = $1 AND run_id = $2")
                    .bind(user.as_str())
                    .bind(run.as_str()),
                Some(delay) => sqlx::query(&retry_sql)
                    .bind(user.as_str())
                    .bind(run.as_str())
                    .bind(i64_of(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX))),
            };
            within(WRITE_TIMEOUT, query.execute(pool))
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        let (ack, done) = oneshot::channel();
        let sent = self.send(Op::Flush(ack));
        Box::pin(async move {
            if sent {
                let _ = done.await;
            }
        })
    }

    fn health(&self) -> StoreHealth {
        let shared = &self.inner.shared;
        let c = &shared.counters;
        // Per bucket, not cumulative; the last bucket is everything above the last bound.
        let mut batch_latency: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&c.latency)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect();
        batch_latency.push((
            f64::INFINITY,
            c.latency[LATENCY_BUCKETS.len()].load(Ordering::Relaxed),
        ));
        let mut health = StoreHealth::default();
        health.up = c.up.load(Ordering::Relaxed);
        health.backend = shared.backend.name();
        health.buffered = shared.queued.load(Ordering::Relaxed);
        health.batches = c.batches.load(Ordering::Relaxed);
        health.write_errors = c.write_errors.load(Ordering::Relaxed);
        health.events_dropped = c.events_dropped.load(Ordering::Relaxed);
        health.runs_interrupted = c.runs_interrupted.load(Ordering::Relaxed);
        health.batch_latency = batch_latency;
        health.batch_latency_sum = c.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        health
    }
}
