//! The write-behind path: writes queue in memory and one task commits them in batches (one
//! transaction per batch: group commit). The run's own task never waits on the database, except
//! for its terminal record, and then only up to the commit timeout.
//!
//! The rule when the database is slower than the runs, or down: run records (accepted, ended)
//! always queue; events queue up to the buffer (`StoreConfig::with_buffer`), and an event that
//! finds it full is not stored: its sequence number is recorded as a gap (written with the next
//! batch) and counted. A failed batch is retried, whole, with backoff and jitter until the
//! database takes it; a batch the database refuses (not a connection fault) three times is
//! written one write at a time, and a write it still refuses is logged and, for an event,
//! recorded as a gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_core::{AgentEvent, ApprovalOutcome, EventEnvelope, RunId, RunStatus, ThreadId, UserId};
use engine_factory::{RunAccepted, RunEnded};
use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::db::{cause_of, is_transient, within, Backend};

/// One write waiting for the writer.
pub(crate) enum Op {
    Accepted(RunAccepted),
    Event(EventEnvelope),
    Ended(RunEnded, Option<oneshot::Sender<()>>),
    /// Sequence numbers `from..=to` of a run that were not stored.
    Gap(UserId, RunId, u64, u64),
    /// Answered once every write queued before it is committed (or given up).
    Flush(oneshot::Sender<()>),
}

/// Upper bounds of the batch latency histogram, seconds.
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters shared by the writer, the sinks and `health()`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) up: AtomicBool,
    pub(crate) batches: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) runs_interrupted: AtomicU64,
    pub(crate) latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub(crate) latency_sum_us: AtomicU64,
}

impl Counters {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Events `from..=to` of one run that were not stored.
pub(crate) type LostRange = (RunId, u64, u64);

/// What the sinks and the writer share.
pub(crate) struct Shared {
    /// The SQLite file's lock (one process per file), released when the last user of the
    /// database (the writer, the store) is gone.
    pub(crate) _lock: Option<std::fs::File>,
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    pub(crate) node_id: String,
    pub(crate) batch_size: usize,
    pub(crate) buffer: usize,
    /// Whether a run's end enqueues a webhook delivery.
    pub(crate) webhooks: bool,
    /// Events queued and not yet committed (bounded by `buffer`).
    pub(crate) buffered: AtomicUsize,
    /// Writes of every kind queued and not yet taken by the writer (run records included).
    pub(crate) queued: AtomicUsize,
    /// Gaps of events refused by a full buffer, not yet queued for writing: per user, runs
    /// and their merged ranges `from..=to`.
    pub(crate) lost: Mutex<HashMap<UserId, Vec<LostRange>>>,
    pub(crate) counters: Counters,
}

impl Shared {
    /// The database clock's expression when runs' ends enqueue webhook deliveries.
    pub(crate) fn webhook_clock(&self) -> Option<&'static str> {
        self.webhooks.then(|| self.backend.now_us())
    }

    /// Records that event `seq` of `user`'s run `run` is not stored.
    pub(crate) fn lose(&self, user: &UserId, run: &RunId, seq: u64) {
        self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        let ranges = lost.entry(user.clone()).or_default();
        match ranges.iter_mut().rev().find(|(r, ..)| r == run) {
            Some((_, _, to)) if *to + 1 == seq => *to = seq,
            _ => ranges.push((run.clone(), seq, seq)),
        }
    }
}

/// The writer task: takes what is queued, up to a batch, and commits it; ends when every
/// sender is gone and the queue is drained.
pub(crate) async fn write_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut batch: Vec<Op> = Vec::with_capacity(shared.batch_size);
    loop {
        let closed = match rx.recv().await {
            Some(op) => {
                batch.push(op);
                false
            }
            None => true,
        };
        while !closed && batch.len() < shared.batch_size {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let lost = std::mem::take(&mut *shared.lost.lock().unwrap_or_else(|p| p.into_inner()));
        for (user, ranges) in lost {
            for (run, from, to) in ranges {
                batch.push(Op::Gap(user.clone(), run, from, to));
            }
        }
        if batch.is_empty() {
            break; // closed, and the last gaps are written
        }
        let refused = commit_batch(&shared, &batch).await;
        let mut events = 0;
        for (i, op) in batch.drain(..).enumerate() {
            match op {
                Op::Event(_) => events += 1,
                // A refused record's waiter hears "closed", never "committed".
                Op::Ended(_, Some(ack)) if !refused.contains(&i) => {
                    let _ = ack.send(());
                }
                Op::Flush(ack) => {
                    let _ = ack.send(());
                }
                _ => {}
            }
        }
        shared.buffered.fetch_sub(events, Ordering::Relaxed);
    }
}

/// Longest one batch (or one write of the last resort) may take before it counts as failed
/// (and is retried): a database that stops answering must not hang the writer.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Commits `batch`, retrying until the database takes it (see the module docs); returns the
/// indices of the writes it refused and skipped.
async fn commit_batch(shared: &Shared, batch: &[Op]) -> Vec<usize> {
    if batch.iter().all(|op| matches!(op, Op::Flush(_))) {
        return Vec::new();
    }
    let mut attempt: u32 = 0;
    let mut refused = 0;
    loop {
        let started = Instant::now();
        match within(BATCH_TIMEOUT, apply(shared, batch)).await {
            Ok(()) => {
                shared.counters.observe(started.elapsed());
                shared.counters.batches.fetch_add(1, Ordering::Relaxed);
                if !shared.counters.up.swap(true, Ordering::Relaxed) && attempt > 0 {
                    tracing::info!(attempts = attempt + 1, "run store writes resumed");
                }
                return Vec::new();
            }
            Err(e) => {
                shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                let transient = is_transient(&e);
                if transient {
                    shared.counters.up.store(false, Ordering::Relaxed);
                } else {
                    refused += 1;
                }
                tracing::warn!(
                    backend = shared.backend.name(),
                    attempt = attempt + 1,
                    writes = batch.len(),
                    error = %cause_of(&e),
                    "run store batch not written; retrying"
                );
                if refused >= 3 {
                    return apply_one_by_one(shared, batch).await;
                }
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// 50 ms doubling up to 5 s, with up to 50% jitter (nodes that lost the database together do
/// not come back in step).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 50u64.saturating_mul(1 << attempt.min(7)).min(5_000);
    Duration::from_millis(base / 2 + fastrand::u64(0..=base / 2))
}

/// The last resort for a batch the database keeps refusing: each write on its own (a fault
/// of the connection is retried as for a batch), skipping only the writes the database itself
/// refuses; an event skipped is recorded as a gap. Returns the indices skipped.
async fn apply_one_by_one(shared: &Shared, batch: &[Op]) -> Vec<usize> {
    let mut skipped = Vec::new();
    for (i, op) in batch.iter().enumerate() {
        let mut attempt: u32 = 0;
        let refusal = loop {
            match within(BATCH_TIMEOUT, apply(shared, std::slice::from_ref(op))).await {
                Ok(()) => break None,
                Err(e) if is_transient(&e) => {
                    shared.counters.up.store(false, Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => break Some(e),
            }
        };
        let Some(e) = refusal else { continue };
        let (kind, user, run) = match op {
            Op::Accepted(a) => ("run_accepted", &a.user_id, &a.run_id),
            Op::Event(e) => ("event", &e.user_id, &e.run_id),
            Op::Ended(e, _) => ("run_ended", &e.user_id, &e.run_id),
            Op::Gap(u, r, ..) => ("gap", u, r),
            Op::Flush(_) => continue,
        };
        tracing::error!(kind, user_id = %user, run_id = %run, error = %cause_of(&e), "run store refused a write; it is skipped");
        if let Op::Event(ev) = op {
            shared.lose(&ev.user_id, &ev.run_id, ev.seq);
        }
        skipped.push(i);
    }
    skipped
}

/// `text` as a database can keep it: Postgres refuses a NUL character in TEXT, so it becomes
/// U+FFFD (the one change made to stored text).
pub(crate) fn text(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// Rows of an event insert: user, run, seq, request, timestamp, body.
const EVENT_COLUMNS: usize = 6;
/// Events per multi-row insert.
const EVENT_CHUNK: usize = 256;

/// Writes `batch` in one transaction.
async fn apply(shared: &Shared, batch: &[Op]) -> Result<(), sqlx::Error> {
    let mut tx = shared.pool.begin().await?;
    let mut events: Vec<&EventEnvelope> = Vec::new();
    for op in batch {
        match op {
            Op::Accepted(run) => accepted(&mut tx, &shared.node_id, run).await?,
            Op::Event(event) => {
                if event.event.is_terminal() {
                    // Keep order with the run's other events of this batch.
                    insert_events(&mut tx, &events).await?;
                    events.clear();
                    if terminal_event(&mut tx, event).await? {
                        end_from_terminal(&mut tx, event, shared.webhook_clock()).await?;
                    }
                } else {
                    approval(&mut tx, event).await?;
                    events.push(event);
                }
            }
            Op::Ended(end, _) => ended(&mut tx, end, shared.webhook_clock()).await?,
            Op::Gap(user, run, from, to) => {
                sqlx::query(
                    "INSERT INTO gaps (user_id, run_id, from_seq, to_seq) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (user_id, run_id, from_seq) DO NOTHING",
                )
                .bind(user.as_str())
                .bind(run.as_str())
                .bind(i64_of(*from))
                .bind(i64_of(*to))
                .execute(&mut *tx)
                .await?;
            }
            Op::Flush(_) => {}
        }
    }
    insert_events(&mut tx, &events).await?;
    tx.commit().await
}

pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The first characters of a message, for a thread's listing.
pub(crate) fn preview(text: &str) -> String {
    text.chars().take(120).collect()
}

async fn accepted(
    tx: &mut Transaction<'static, Any>,
    node: &str,
    run: &RunAccepted,
) -> Result<(), sqlx::Error> {
    let at = i64_of(run.accepted_at_us);
    let inserted = sqlx::query(
        "INSERT INTO runs (user_id, run_id, thread_id, request_id, agent_name, node_id, status, input, accepted_us) \
         VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8) ON CONFLICT (user_id, run_id) DO NOTHING",
    )
    .bind(run.user_id.as_str())
    .bind(run.run_id.as_str())
    .bind(run.thread_id.as_str())
    .bind(run.request_id.as_str())
    .bind(&*run.agent_name)
    .bind(node)
    .bind(text(&run.input))
    .bind(at)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        // Written before (a retried batch), or a run id used again after its run ended: the
        // store keeps the first run under that id.
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM runs WHERE user_id = $1 AND run_id = $2")
                .bind(run.user_id.as_str())
                .bind(run.run_id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        if status.as_deref() != Some("running") {
            tracing::warn!(user_id = %run.user_id, run_id = %run.run_id, "run id used again: the store keeps its first run; use a new run id per run");
        }
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO threads (user_id, thread_id, created_us, updated_us, run_count, preview) \
         VALUES ($1, $2, $3, $3, 1, $4) ON CONFLICT (user_id, thread_id) DO UPDATE \
         SET updated_us = excluded.updated_us, run_count = threads.run_count + 1, preview = excluded.preview",
    )
    .bind(run.user_id.as_str())
    .bind(run.thread_id.as_str())
    .bind(at)
    .bind(text(&preview(&run.input)))
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO messages (user_id, thread_id, run_id, role, content, created_us) \
         VALUES ($1, $2, $3, 'user', $4, $5)",
    )
    .bind(run.user_id.as_str())
    .bind(run.thread_id.as_str())
    .bind(run.run_id.as_str())
    .bind(text(&run.input))
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn ended(
    tx: &mut Transaction<'static, Any>,
    end: &RunEnded,
    webhooks: Option<&'static str>,
) -> Result<(), sqlx::Error> {
    let steps = if end.steps.is_empty() {
        None
    } else {
        let steps: Vec<serde_json::Value> = end
            .steps
            .iter()
            .map(|(agent, status)| {
                serde_json::json!({"agent_name": &**agent, "status": status.map(RunStatus::as_str)})
            })
            .collect();
        Some(serde_json::Value::Array(steps).to_string())
    };
    let (user, run) = (end.user_id.as_str(), end.run_id.as_str());
    // The end, unless the run already has one: its stored terminal event (batch durability),
    // or the `interrupted` mark of a node that took it for dead. Exactly one terminal record.
    let ended = mark_ended(
        tx,
        user,
        run,
        end.status,
        end.result.as_deref(),
        end.error.as_deref(),
        end.ended_at_us,
    )
    .await?;
    if ended {
        after_end(
            tx,
            user,
            &end.thread_id,
            run,
            end.result.as_deref(),
            end.ended_at_us,
            webhooks,
        )
        .await?;
        if let Some(terminal) = &end.terminal {
            // Sync durability: the terminal event with its record (the live one, same seq,
            // finds it there).
            terminal_event(tx, terminal).await?;
        }
    }
    // What only the outcome knows (usage, timings, steps), for an end recorded either way,
    // but never over an `interrupted` mark.
    sqlx::query(
        "UPDATE runs SET prompt_tokens = $3, completion_tokens = $4, queue_ms = $5, execution_ms = $6, steps = $7 \
         WHERE user_id = $1 AND run_id = $2 AND status = $8",
    )
    .bind(user)
    .bind(run)
    .bind(i64_of(end.usage.prompt_tokens))
    .bind(i64_of(end.usage.completion_tokens))
    .bind(i64_of(end.queue_ms))
    .bind(i64_of(end.execution_ms))
    .bind(steps)
    .bind(end.status.as_str())
    .execute(&mut **tx)
    .await?;
    if let (Some(now), None) = (webhooks, &end.terminal) {
        // The record is whole now (usage, timings, steps): its delivery need not wait for it.
        let sql = format!(
            "UPDATE webhooks SET due_us = {now} WHERE user_id = $1 AND run_id = $2 AND attempts = 0"
        );
        sqlx::query(&sql)
            .bind(user)
            .bind(run)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Ends a `running` run: `true` if this call ended it.
async fn mark_ended(
    tx: &mut Transaction<'static, Any>,
    user: &str,
    run: &str,
    status: RunStatus,
    result: Option<&str>,
    error: Option<&str>,
    at: u64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE runs SET status = $3, result = $4, error = $5, ended_us = $6 \
         WHERE user_id = $1 AND run_id = $2 AND status = 'running'",
    )
    .bind(user)
    .bind(run)
    .bind(status.as_str())
    .bind(result.map(text))
    .bind(error.map(text))
    .bind(i64_of(at))
    .execute(&mut **tx)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// What follows a run's end: its pending approvals time out, its answer is the thread's next
/// message, its webhook delivery is enqueued (when `webhooks` holds the database clock), due
/// after [`WEBHOOK_GRACE`] or as soon as the run's whole record is written.
async fn after_end(
    tx: &mut Transaction<'static, Any>,
    user: &str,
    thread: &ThreadId,
    run: &str,
    answer: Option<&str>,
    at: u64,
    webhooks: Option<&'static str>,
) -> Result<(), sqlx::Error> {
    let at = i64_of(at);
    time_out_approvals(tx, user, run, at).await?;
    if let Some(now) = webhooks {
        enqueue_webhook(tx, now, user, run, WEBHOOK_GRACE).await?;
    }
    if let Some(answer) = answer {
        sqlx::query(
            "INSERT INTO messages (user_id, thread_id, run_id, role, content, created_us) \
             VALUES ($1, $2, $3, 'assistant', $4, $5)",
        )
        .bind(user)
        .bind(thread.as_str())
        .bind(run)
        .bind(text(answer))
        .bind(at)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE threads SET updated_us = $3, preview = $4 WHERE user_id = $1 AND thread_id = $2",
        )
        .bind(user)
        .bind(thread.as_str())
        .bind(at)
        .bind(text(&preview(answer)))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The pending approvals of an ended run time out.
pub(crate) async fn time_out_approvals(
    tx: &mut Transaction<'static, Any>,
    user: &str,
    run: &str,
    at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE approvals SET status = 'timed_out', decided_us = $3 \
         WHERE user_id = $1 AND run_id = $2 AND status = 'pending'",
    )
    .bind(user)
    .bind(run)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How long a delivery enqueued with a run's terminal event waits for the run's whole record
/// (usage, timings, steps: written a moment later by the run's end record, which makes it due
/// at once); a process that dies in between still delivers, after this.
pub(crate) const WEBHOOK_GRACE: Duration = Duration::from_secs(2);

/// Enqueues the webhook delivery of an ended run, due `delay` from now on the database clock
/// `now` (in the transaction of its end: an end is never committed without its delivery).
pub(crate) async fn enqueue_webhook(
    tx: &mut Transaction<'static, Any>,
    now: &str,
    user: &str,
    run: &str,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO webhooks (user_id, run_id, due_us, attempts, enqueued_us) \
         VALUES ($1, $2, {now} + $3, 0, {now}) ON CONFLICT (user_id, run_id) DO NOTHING"
    );
    sqlx::query(&sql)
        .bind(user)
        .bind(run)
        .bind(i64_of(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX)))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A stored terminal event ends its run in the same transaction (batch durability: the run's
/// end record comes later, with what only the outcome knows), so no crash can leave a run with
/// a terminal event and a `running` record, or the other way round.
async fn end_from_terminal(
    tx: &mut Transaction<'static, Any>,
    event: &EventEnvelope,
    webhooks: Option<&'static str>,
) -> Result<(), sqlx::Error> {
    let AgentEvent::AgentCompleted {
        status,
        result,
        error,
        ..
    } = &event.event
    else {
        return Ok(());
    };
    let (user, run) = (event.user_id.as_str(), event.run_id.as_str());
    let at = event.timestamp_us;
    if mark_ended(
        tx,
        user,
        run,
        *status,
        result.as_deref(),
        error.as_deref(),
        at,
    )
    .await?
    {
        after_end(
            tx,
            user,
            &event.thread_id,
            run,
            result.as_deref(),
            at,
            webhooks,
        )
        .await?;
    }
    Ok(())
}

/// Keeps the approvals table in step with a run's approval events.
async fn approval(
    tx: &mut Transaction<'static, Any>,
    event: &EventEnvelope,
) -> Result<(), sqlx::Error> {
    match &event.event {
        AgentEvent::ApprovalRequested {
            tool_name,
            call_id,
            arguments,
        } => {
            sqlx::query(
                "INSERT INTO approvals (user_id, run_id, call_id, tool_name, arguments, status, requested_us) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6) ON CONFLICT (user_id, run_id, call_id) DO NOTHING",
            )
            .bind(event.user_id.as_str())
            .bind(event.run_id.as_str())
            .bind(i64::from(*call_id))
            .bind(&**tool_name)
            .bind(arguments.to_string())
            .bind(i64_of(event.timestamp_us))
            .execute(&mut **tx)
            .await?;
        }
        AgentEvent::ApprovalDecided { call_id, outcome } => {
            let status = match outcome {
                ApprovalOutcome::Approved => "approved",
                ApprovalOutcome::Denied => "denied",
                _ => "timed_out",
            };
            sqlx::query(
                "UPDATE approvals SET status = $4, decided_us = $5 \
                 WHERE user_id = $1 AND run_id = $2 AND call_id = $3 AND status = 'pending'",
            )
            .bind(event.user_id.as_str())
            .bind(event.run_id.as_str())
            .bind(i64::from(*call_id))
            .bind(status)
            .bind(i64_of(event.timestamp_us))
            .execute(&mut **tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// A run's terminal event, unless the run was already marked `interrupted` (whose terminal
/// event was written with the mark): a run has one terminal event in the store. `true` when
/// this call stored it.
async fn terminal_event(
    tx: &mut Transaction<'static, Any>,
    event: &EventEnvelope,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO events (user_id, run_id, seq, request_id, timestamp_us, body) \
         SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS \
         (SELECT 1 FROM runs WHERE user_id = $1 AND run_id = $2 AND status = 'interrupted') \
         ON CONFLICT (user_id, run_id, seq) DO NOTHING",
    )
    .bind(event.user_id.as_str())
    .bind(event.run_id.as_str())
    .bind(i64_of(event.seq))
    .bind(event.request_id.as_str())
    .bind(i64_of(event.timestamp_us))
    .bind(body(event))
    .execute(&mut **tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// The stored form of an event: the event alone (the ids are columns).
pub(crate) fn body(event: &EventEnvelope) -> String {
    serde_json::to_string(&event.event).unwrap_or_else(|_| "{}".to_owned())
}

/// Multi-row inserts of `events`, `EVENT_CHUNK` rows per statement.
async fn insert_events(
    tx: &mut Transaction<'static, Any>,
    events: &[&EventEnvelope],
) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(EVENT_CHUNK) {
        let sql = event_insert_sql(chunk.len());
        let mut query = sqlx::query(&sql);
        for e in chunk {
            query = query
                .bind(e.user_id.as_str())
                .bind(e.run_id.as_str())
                .bind(i64_of(e.seq))
                .bind(e.request_id.as_str())
                .bind(i64_of(e.timestamp_us))
                .bind(body(e));
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `INSERT INTO events ... VALUES ($1, ..., $6), ($7, ...) ...` for `rows` rows.
pub(crate) fn event_insert_sql(rows: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::from(
        "INSERT INTO events (user_id, run_id, seq, request_id, timestamp_us, body) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..EVENT_COLUMNS {
            if col > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${}", row * EVENT_COLUMNS + col + 1);
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (user_id, run_id, seq) DO NOTHING");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_inserts_number_their_parameters() {
        assert_eq!(
            event_insert_sql(2),
            "INSERT INTO events (user_id, run_id, seq, request_id, timestamp_us, body) VALUES \
             ($1, $2, $3, $4, $5, $6), ($7, $8, $9, $10, $11, $12) ON CONFLICT (user_id, run_id, seq) DO NOTHING"
        );
    }

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_secs(5), "{d:?}");
            assert!(d >= Duration::from_millis(25), "{d:?}");
        }
        assert!(backoff(10) >= Duration::from_millis(2_500));
    }
}
