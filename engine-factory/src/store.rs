//! The third seam: a [`RunStore`] that keeps threads, runs, events and approvals beyond the
//! process (`engine-store` implements it on SQLite and Postgres).
//!
//! The factory feeds it from each engine's sink, so nothing else has to remember to: a run
//! accepted ([`RunStore::run_accepted`]), every event in sequence order
//! ([`RunStore::event`]), and the run's end ([`RunStore::run_ended`], awaited before the
//! terminal event is delivered under [`Durability::Sync`], before the run's handle resolves
//! under [`Durability::Batch`]). Every read takes the user, and an implementation must put
//! the user in every key and every `WHERE`: no read can reach another user's rows.

use std::sync::Arc;

use engine_core::{
    Delivery, EventEnvelope, EventSink, RequestId, RunEnding, RunId, RunOutcome, RunStatus,
    ThreadId, TokenUsage, UserExecutionContext, UserId,
};

use crate::cluster::BoxFuture;

/// When a run's terminal record is committed, relative to what its user is told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// The terminal record is committed before the run's handle (or `execute`) resolves;
    /// events are written behind, in batches. The default.
    #[default]
    Batch,
    /// As `Batch`, and the terminal record is committed before the terminal event is
    /// delivered to anyone.
    Sync,
}

/// Why the run store failed a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("run store unavailable: {0}")]
    Unavailable(String),
    /// The write was not committed within the store's commit timeout; it stays buffered and
    /// is written when the database answers again.
    #[error("the run store did not commit within {0:?}; the write stays buffered")]
    CommitTimeout(std::time::Duration),
    /// The store was closed.
    #[error("the run store is closed")]
    Closed,
}

/// A run the engine accepted, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunAccepted {
    /// The run's user.
    pub user_id: UserId,
    /// The run's thread.
    pub thread_id: ThreadId,
    /// The run.
    pub run_id: RunId,
    /// The run's own request.
    pub request_id: RequestId,
    /// The agent (or pipeline) that runs.
    pub agent_name: Arc<str>,
    /// The user's input.
    pub input: String,
    /// Microseconds since the Unix epoch.
    pub accepted_at_us: u64,
}

impl RunAccepted {
    /// The acceptance of `context`'s run of `agent_name` with `input`, now.
    pub fn new(context: &UserExecutionContext, agent_name: &str, input: &str) -> Self {
        Self {
            user_id: context.user_id().clone(),
            thread_id: context.thread_id().clone(),
            run_id: context.run_id().clone(),
            request_id: context.request_id().clone(),
            agent_name: Arc::from(agent_name),
            input: input.to_owned(),
            accepted_at_us: now_us(),
        }
    }
}

/// How a run ended, as the store records it (the run's [`RunOutcome`] and its user).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunEnded {
    /// The run's user.
    pub user_id: UserId,
    /// The run's thread.
    pub thread_id: ThreadId,
    /// The run.
    pub run_id: RunId,
    /// How it ended.
    pub status: RunStatus,
    /// The answer, for `completed`.
    pub result: Option<String>,
    /// The error or reason, otherwise.
    pub error: Option<String>,
    /// Model tokens the run reported.
    pub usage: TokenUsage,
    /// Milliseconds waiting for a concurrency slot.
    pub queue_ms: u64,
    /// Milliseconds the agent ran.
    pub execution_ms: u64,
    /// The steps of a pipeline: each step's agent and its status (`None`: never ran).
    pub steps: Vec<(Arc<str>, Option<RunStatus>)>,
    /// Microseconds since the Unix epoch.
    pub ended_at_us: u64,
    /// The run's terminal event, when the record is written before the event is emitted
    /// ([`Durability::Sync`]): the store writes both in one transaction, so a crash between
    /// the record and the event cannot leave an ended run without its terminal event.
    pub terminal: Option<EventEnvelope>,
}

impl RunEnded {
    /// The end of `context`'s run with `status`, now, every other field empty.
    pub fn new(context: &UserExecutionContext, status: RunStatus) -> Self {
        Self {
            user_id: context.user_id().clone(),
            thread_id: context.thread_id().clone(),
            run_id: context.run_id().clone(),
            status,
            result: None,
            error: None,
            usage: TokenUsage::default(),
            queue_ms: 0,
            execution_ms: 0,
            steps: Vec::new(),
            ended_at_us: now_us(),
            terminal: None,
        }
    }

    /// The record of `outcome`, a run of `context`'s user.
    pub fn from_outcome(context: &UserExecutionContext, outcome: &RunOutcome) -> Self {
        let mut end = Self::new(context, outcome.status());
        end.result = outcome.end.answer().map(str::to_owned);
        end.error = outcome.end.error().map(str::to_owned);
        end.usage = outcome.usage;
        end.queue_ms = millis(outcome.queue_wait);
        end.execution_ms = millis(outcome.execution_time);
        end.steps = outcome
            .steps
            .iter()
            .map(|s| {
                (
                    Arc::clone(&s.agent_name),
                    s.end.as_ref().map(|e| e.status()),
                )
            })
            .collect();
        end
    }

    /// The end of `context`'s run as the engine is about to emit its terminal event
    /// ([`Durability::Sync`]), with that event: its sequence number is `ending.seq`, its
    /// timestamp now. Usage, timings and steps follow with [`from_outcome`](Self::from_outcome).
    pub fn ending(context: &UserExecutionContext, ending: &RunEnding<'_>) -> Self {
        let status = ending.end.status();
        let mut end = Self::new(context, status);
        end.result = ending.end.answer().map(str::to_owned);
        end.error = ending.end.error().map(str::to_owned);
        end.terminal = Some(EventEnvelope {
            user_id: context.user_id().clone(),
            thread_id: context.thread_id().clone(),
            run_id: context.run_id().clone(),
            request_id: context.request_id().clone(),
            seq: ending.seq,
            timestamp_us: end.ended_at_us,
            event: engine_core::AgentEvent::AgentCompleted {
                agent_name: Arc::from(ending.agent_name),
                status,
                success: status == RunStatus::Completed,
                result: end.result.clone(),
                error: end.error.clone(),
                duration_ms: ending.duration_ms,
            },
        });
        end
    }
}

/// A run as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunRecord {
    /// The run.
    pub run_id: RunId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// Its own request.
    pub request_id: RequestId,
    /// The agent (or pipeline) that ran.
    pub agent_name: String,
    /// How it ended; `None` while it runs.
    pub status: Option<RunStatus>,
    /// The user's input.
    pub input: String,
    /// The answer, for `completed`.
    pub result: Option<String>,
    /// The error or reason, for any other ending.
    pub error: Option<String>,
    /// Model tokens the run reported.
    pub usage: TokenUsage,
    /// Milliseconds waiting for a concurrency slot.
    pub queue_ms: u64,
    /// Milliseconds the agent ran.
    pub execution_ms: u64,
    /// The steps of a pipeline: each step's agent and its status (`None`: never ran).
    pub steps: Vec<(String, Option<RunStatus>)>,
    /// When it was accepted, microseconds since the Unix epoch.
    pub accepted_at_us: u64,
    /// When it ended.
    pub ended_at_us: Option<u64>,
    /// The node that ran it.
    pub node_id: String,
}

impl RunRecord {
    /// A record of the run `run_id` that has not ended, with every other field empty (a store
    /// fills them in).
    pub fn new(run_id: RunId, thread_id: ThreadId, request_id: RequestId) -> Self {
        Self {
            run_id,
            thread_id,
            request_id,
            agent_name: String::new(),
            status: None,
            input: String::new(),
            result: None,
            error: None,
            usage: TokenUsage::default(),
            queue_ms: 0,
            execution_ms: 0,
            steps: Vec::new(),
            accepted_at_us: 0,
            ended_at_us: None,
            node_id: String::new(),
        }
    }

    /// A record of a run that has not ended (the fields of an ending are empty).
    pub fn running(accepted: &RunAccepted, node_id: impl Into<String>) -> Self {
        Self {
            run_id: accepted.run_id.clone(),
            thread_id: accepted.thread_id.clone(),
            request_id: accepted.request_id.clone(),
            agent_name: accepted.agent_name.to_string(),
            status: None,
            input: accepted.input.clone(),
            result: None,
            error: None,
            usage: TokenUsage::default(),
            queue_ms: 0,
            execution_ms: 0,
            steps: Vec::new(),
            accepted_at_us: accepted.accepted_at_us,
            ended_at_us: None,
            node_id: node_id.into(),
        }
    }
}

/// One of a user's threads, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThreadSummary {
    /// The thread.
    pub thread_id: ThreadId,
    /// Its first run's acceptance, microseconds since the Unix epoch.
    pub created_at_us: u64,
    /// Its last message or run.
    pub updated_at_us: u64,
    /// Runs on it.
    pub run_count: u64,
    /// The start of its last message.
    pub preview: Option<String>,
}

impl ThreadSummary {
    /// A thread as listed.
    pub fn new(
        thread_id: ThreadId,
        created_at_us: u64,
        updated_at_us: u64,
        run_count: u64,
        preview: Option<String>,
    ) -> Self {
        Self {
            thread_id,
            created_at_us,
            updated_at_us,
            run_count,
            preview,
        }
    }
}

/// Who said a thread message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The user's input.
    User,
    /// An agent's final answer.
    Assistant,
}

impl Role {
    /// The lowercase name stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
    /// The role named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "user" => Some(Self::User),
            "assistant" => Some(Self::Assistant),
            _ => None,
        }
    }
}

/// One message of a thread: a run's input or its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThreadMessage {
    /// Who said it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// The run it belongs to.
    pub run_id: RunId,
    /// Microseconds since the Unix epoch.
    pub created_at_us: u64,
}

impl ThreadMessage {
    /// A message of `run`.
    pub fn new(role: Role, content: impl Into<String>, run_id: RunId, created_at_us: u64) -> Self {
        Self {
            role,
            content: content.into(),
            run_id,
            created_at_us,
        }
    }
}

/// A run's stored events after a sequence number.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct StoredEvents {
    /// The events, in sequence order.
    pub events: Vec<EventEnvelope>,
    /// Ranges `from..=to` of sequence numbers after the requested one that were not stored
    /// (the buffer overflowed or the database was down), in order.
    pub gaps: Vec<(u64, u64)>,
    /// Whether more events follow the returned page.
    pub more: bool,
}

/// A webhook delivery of a run's end that the store keeps until it is delivered or given up
/// (see [`RunStore::claim_webhooks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebhookDue {
    /// The run's user.
    pub user_id: UserId,
    /// The run.
    pub run_id: RunId,
    /// The ended run's record; `None` when it is gone (its thread was deleted since).
    pub run: Option<RunRecord>,
    /// Attempts so far, this claim included (1 on the first).
    pub attempts: u32,
    /// When the run's end enqueued it, microseconds since the Unix epoch.
    pub enqueued_at_us: u64,
}

impl WebhookDue {
    /// A delivery of `run_id`, a run of `user_id`, whose record is `run`.
    pub fn new(
        user_id: UserId,
        run_id: RunId,
        run: Option<RunRecord>,
        attempts: u32,
        enqueued_at_us: u64,
    ) -> Self {
        Self {
            user_id,
            run_id,
            run,
            attempts,
            enqueued_at_us,
        }
    }
}

/// Where a page of a user's threads starts: after this thread, as the previous page listed it
/// (keyset pagination: a thread deleted or updated meanwhile does not move the page).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThreadCursor {
    /// The listed thread's `updated_at_us`.
    pub updated_at_us: u64,
    /// The listed thread.
    pub thread_id: ThreadId,
}

impl ThreadCursor {
    /// The page after `thread`.
    pub fn after(thread: &ThreadSummary) -> Self {
        Self {
            updated_at_us: thread.updated_at_us,
            thread_id: thread.thread_id.clone(),
        }
    }

    /// A cursor at `updated_at_us` and `thread_id` (as read back from a client).
    pub fn new(updated_at_us: u64, thread_id: ThreadId) -> Self {
        Self {
            updated_at_us,
            thread_id,
        }
    }
}

/// What the store can tell of its health, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct StoreHealth {
    /// Whether the last write or probe reached the database.
    pub up: bool,
    /// The backend (`sqlite`, `postgres`).
    pub backend: &'static str,
    /// Writes of every kind (run records, events) queued and not yet taken by the writer.
    pub buffered: usize,
    /// Batches committed since start.
    pub batches: u64,
    /// Failed batch writes (each retried).
    pub write_errors: u64,
    /// Events not stored (buffer full or unwritable); recorded as gaps.
    pub events_dropped: u64,
    /// Runs this node marked `interrupted` (its own earlier process's, or a dead node's).
    pub runs_interrupted: u64,
    /// Batch commit latencies so far: (upper bound in seconds, batches in that bucket), not
    /// cumulative, the last bound `f64::INFINITY`.
    pub batch_latency: Vec<(f64, u64)>,
    /// Sum of batch commit latencies, seconds.
    pub batch_latency_sum: f64,
}

/// Keeps threads, runs, events and approvals beyond the process.
///
/// The factory calls the writes from each engine's sink; they must not block the run: an
/// implementation buffers them and writes behind. [`run_ended`](Self::run_ended) returns a
/// future that resolves once the terminal record is committed (or the store's own commit
/// timeout passed: the record then stays buffered). Every read takes the user and answers
/// only that user's rows; a run or thread of another user is `None`, exactly as one that does
/// not exist.
pub trait RunStore: Send + Sync + std::fmt::Debug + 'static {
    /// When terminal records are committed (default [`Durability::Batch`]).
    fn durability(&self) -> Durability {
        Durability::Batch
    }

    /// Records an accepted run (and its input as a user message of its thread). Never blocks.
    fn run_accepted(&self, run: RunAccepted);

    /// Records one event of a run, in sequence order. Never blocks: when the buffer is full
    /// the event is not stored and its sequence number is recorded as a gap.
    fn event(&self, event: &EventEnvelope);

    /// Records a run's end (and its answer as an assistant message of its thread); resolves
    /// once committed, or with [`StoreError::CommitTimeout`] after the store's bound.
    fn run_ended(&self, end: RunEnded) -> BoxFuture<'static, Result<(), StoreError>>;

    /// `user`'s threads, most recently updated first: at most `limit`, after `after` (the last
    /// thread of a previous page) when given.
    fn threads<'a>(
        &'a self,
        user: &'a UserId,
        limit: usize,
        after: Option<&'a ThreadCursor>,
    ) -> BoxFuture<'a, Result<Vec<ThreadSummary>, StoreError>>;

    /// The last `limit` messages of `user`'s thread, oldest first (empty for an unknown
    /// thread).
    fn thread_messages<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ThreadMessage>, StoreError>>;

    /// The runs of `user`'s thread, oldest first.
    fn thread_runs<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StoreError>>;

    /// `user`'s run `run`; `None` when `user` has no such run.
    fn run<'a>(
        &'a self,
        user: &'a UserId,
        run: &'a RunId,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>>;

    /// The stored events of `user`'s run `run` after `after_seq`, at most `limit`; `None`
    /// when `user` has no such run.
    fn events_after<'a>(
        &'a self,
        user: &'a UserId,
        run: &'a RunId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<StoredEvents>, StoreError>>;

    /// Deletes `user`'s thread `thread`: its messages, runs, events, gaps and approvals (a
    /// pending webhook delivery of one of its runs is then claimed without its record). Every
    /// write buffered before the call is committed first, so nothing of the thread queued
    /// earlier comes back; a run still going on the thread should be cancelled and ended before
    /// (its later events would be stored again). `true` if the thread existed.
    fn delete_thread<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Takes up to `limit` webhook deliveries that are due (the store enqueues one per ended
    /// run when it is configured to), oldest first, and holds each for `lease`: a process that
    /// dies while delivering leaves them due again after it (at least once; a delivery can be
    /// sent twice, never lost). Every claim counts an attempt. Times are the database's clock,
    /// so nodes whose clocks differ claim a delivery once per lease.
    fn claim_webhooks(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> BoxFuture<'_, Result<Vec<WebhookDue>, StoreError>>;

    /// Settles a claimed delivery: `retry_in: None` removes it (delivered or given up),
    /// `Some(d)` makes it due again `d` from now.
    fn settle_webhook<'a>(
        &'a self,
        user: &'a UserId,
        run: &'a RunId,
        retry_in: Option<std::time::Duration>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Waits until every write buffered so far is committed (or could not be); the gateway's
    /// shutdown calls it within its deadline.
    fn flush(&self) -> BoxFuture<'_, ()>;

    /// The store's health and counters.
    fn health(&self) -> StoreHealth;
}

/// The sink of an engine whose factory has a store: records the run's life in the store, and
/// hands every event on to `inner` (the user's hub channel, or the bus sink).
pub(crate) struct StoreSink {
    pub(crate) inner: Arc<dyn EventSink>,
    pub(crate) store: Arc<dyn RunStore>,
}

impl EventSink for StoreSink {
    fn user_id(&self) -> &UserId {
        self.inner.user_id()
    }

    fn deliver(&self, event: EventEnvelope) -> Delivery<'_> {
        // Only the sink's own user's events are stored; another user's is refused by `inner`.
        if event.user_id == *self.inner.user_id() {
            self.store.event(&event);
        }
        self.inner.deliver(event)
    }

    fn run_accepted(&self, context: &UserExecutionContext, agent_name: &str, input: &str) {
        self.store
            .run_accepted(RunAccepted::new(context, agent_name, input));
    }

    fn run_ending(&self, context: &UserExecutionContext, ending: &RunEnding<'_>) -> Delivery<'_> {
        match self.store.durability() {
            Durability::Sync => self.commit(RunEnded::ending(context, ending)),
            _ => Delivery::ready(Ok(())),
        }
    }

    fn run_ended(&self, context: &UserExecutionContext, outcome: &RunOutcome) -> Delivery<'_> {
        // Both durabilities: under `batch` this is the end record; under `sync` it adds what
        // only the outcome knows (usage, timings, steps) to the record written at `run_ending`.
        self.commit(RunEnded::from_outcome(context, outcome))
    }
}

impl StoreSink {
    fn commit(&self, end: RunEnded) -> Delivery<'_> {
        let committed = self.store.run_ended(end);
        Delivery::pending(async move {
            committed
                .await
                .map_err(|e| engine_core::DeliveryError::Failed(e.to_string()))
        })
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
