//! [`UserExecutionEngine`]: the one engine, bound to one user.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

use futures_util::FutureExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::agent::AgentRegistry;
use crate::config::EngineConfig;
use crate::context::UserExecutionContext;
use crate::error::{panic_message, EngineError};
use crate::event::{AgentEvent, RunStatus, ToolStatus};
use crate::ids::{RunId, ThreadId, UserId};
use crate::run::{millis, Emitter, RunContext};
use crate::sink::EventSink;

/// The text of the `agent_thinking` event a run gets when it waited in the queue.
pub const QUEUED_NOTICE: &str = "Request queued due to user load";

/// How one run ended, as returned to the caller and kept in the engine's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The run.
    pub run_id: RunId,
    /// The run's thread.
    pub thread_id: ThreadId,
    /// The agent that ran.
    pub agent_name: Arc<str>,
    /// How it ended.
    pub status: RunStatus,
    /// The agent's answer, for `completed`.
    pub result: Option<String>,
    /// The error, for any other status.
    pub error: Option<String>,
    /// Time spent waiting for a concurrency slot.
    pub queue_wait: Duration,
    /// Time the agent ran (zero if it never started).
    pub execution_time: Duration,
    /// Events the sink accepted.
    pub events_delivered: u64,
    /// Events the sink dropped (visible to the consumer as sequence gaps).
    pub events_dropped: u64,
}

impl RunOutcome {
    /// Whether the run ended with status `completed`.
    pub fn is_success(&self) -> bool {
        self.status == RunStatus::Completed
    }
}

/// Counters of one engine. Everything in it is about this engine's own user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Runs accepted.
    pub total_runs: u64,
    /// Runs that ended `completed`.
    pub completed_runs: u64,
    /// Runs that ended `failed`.
    pub failed_runs: u64,
    /// Runs that ended `timed_out`.
    pub timed_out_runs: u64,
    /// Runs that ended `cancelled`.
    pub cancelled_runs: u64,
    /// Runs accepted and not yet ended (queued or executing).
    pub active_runs: usize,
    /// Mean queue wait of finished runs.
    pub avg_queue_wait: Duration,
    /// Longest queue wait of a finished run.
    pub max_queue_wait: Duration,
    /// Mean agent execution time of finished runs.
    pub avg_execution_time: Duration,
    /// Longest agent execution time of a finished run.
    pub max_execution_time: Duration,
    /// Events the sink accepted, over finished runs.
    pub events_delivered: u64,
    /// Events dropped, over finished runs.
    pub events_dropped: u64,
    /// Runs currently in the history.
    pub history_len: usize,
}

#[derive(Default)]
struct StatsAcc {
    stats: EngineStats,
    finished: u32,
    queue_total: Duration,
    exec_total: Duration,
}

/// A run started with [`UserExecutionEngine::spawn`]: await its outcome or cancel it.
#[derive(Debug)]
pub struct RunHandle {
    run_id: RunId,
    cancel: CancellationToken,
    join: JoinHandle<RunOutcome>,
}

impl RunHandle {
    /// The run's id.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }
    /// Asks the run to stop; it ends with status `cancelled` and its terminal event.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
    /// Waits for the run to end. Dropping the handle instead lets the run go on.
    ///
    /// # Errors
    /// [`EngineError::RunAborted`] only if the runtime dropped the run's task (runtime
    /// shutdown); every failure inside the run is an `Ok` outcome with its status.
    pub async fn outcome(self) -> Result<RunOutcome, EngineError> {
        self.join.await.map_err(|e| EngineError::RunAborted {
            run_id: self.run_id,
            reason: e.to_string(),
        })
    }
}

/// The one execution engine: runs agents for ONE user.
///
/// Obtain it from `engine_factory::ExecutionEngineFactory::create_for_user`; there is no public
/// constructor. Everything it holds (active runs, history, stats, the concurrency semaphore,
/// the event sink) belongs to its user, and every run is checked against that user before it
/// starts. Cloning is cheap and yields another handle to the same engine.
#[derive(Clone)]
pub struct UserExecutionEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine_id: String,
    context: UserExecutionContext,
    config: EngineConfig,
    registry: AgentRegistry,
    sink: Arc<dyn EventSink>,
    semaphore: Semaphore,
    active: AtomicBool,
    created_at: Instant,
    /// Everything mutable, behind one lock taken once when a run starts and once when it ends.
    state: Mutex<EngineState>,
    tracker: TaskTracker,
}

struct EngineState {
    last_activity: Instant,
    runs: HashMap<RunId, CancellationToken>,
    history: VecDeque<RunOutcome>,
    acc: StatsAcc,
}

/// Locks a mutex, recovering from poisoning: the engine's own critical sections do not panic,
/// and a poisoned lock must not take the engine down for the user.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for UserExecutionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserExecutionEngine")
            .field("engine_id", &self.inner.engine_id)
            .field("user_id", self.user_id())
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

impl UserExecutionEngine {
    /// Only `engine_factory` calls this (see [`crate::factory_only`]).
    pub(crate) fn assemble(
        context: UserExecutionContext,
        config: EngineConfig,
        registry: AgentRegistry,
        sink: Arc<dyn EventSink>,
    ) -> Result<Self, EngineError> {
        if sink.user_id() != context.user_id() {
            return Err(EngineError::SinkUserMismatch {
                engine_user: context.user_id().clone(),
                sink_user: sink.user_id().clone(),
            });
        }
        let now = Instant::now();
        Ok(Self {
            inner: Arc::new(EngineInner {
                engine_id: format!(
                    "engine_{}_{}",
                    context.user_id(),
                    uuid::Uuid::new_v4().simple()
                ),
                semaphore: Semaphore::new(config.max_concurrent_runs()),
                context,
                config,
                registry,
                sink,
                active: AtomicBool::new(true),
                created_at: now,
                state: Mutex::new(EngineState {
                    last_activity: now,
                    runs: HashMap::new(),
                    history: VecDeque::new(),
                    acc: StatsAcc::default(),
                }),
                tracker: TaskTracker::new(),
            }),
        })
    }

    /// A unique id for this engine (`engine_<user>_<uuid>`).
    pub fn engine_id(&self) -> &str {
        &self.inner.engine_id
    }
    /// The one user this engine serves.
    pub fn user_id(&self) -> &UserId {
        self.inner.context.user_id()
    }
    /// The context the engine was created for.
    pub fn context(&self) -> &UserExecutionContext {
        &self.inner.context
    }
    /// The engine's limits.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }
    /// `false` once shut down, closed or reaped.
    pub fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::Acquire)
    }
    /// Time since the engine was created.
    pub fn age(&self) -> Duration {
        self.inner.created_at.elapsed()
    }
    /// Time since a run was last accepted or finished (or since creation).
    pub fn idle_for(&self) -> Duration {
        lock(&self.inner.state).last_activity.elapsed()
    }
    /// Runs accepted and not yet ended.
    pub fn active_run_count(&self) -> usize {
        lock(&self.inner.state).runs.len()
    }
    /// Whether two handles refer to the same engine.
    pub fn same_engine(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Runs `agent` on `input` and waits for the outcome.
    ///
    /// The run executes in its own task: if the caller stops waiting, the run still finishes
    /// and still emits its terminal event.
    ///
    /// # Errors
    /// [`EngineError::EngineInactive`], [`EngineError::UserMismatch`],
    /// [`EngineError::UnknownAgent`] or [`EngineError::DuplicateRun`], all before anything runs
    /// or is emitted. A run that starts always yields `Ok` with its [`RunStatus`].
    pub async fn execute(
        &self,
        context: &UserExecutionContext,
        agent: &str,
        input: impl Into<String>,
    ) -> Result<RunOutcome, EngineError> {
        self.spawn(context, agent, input)?.outcome().await
    }

    /// Starts `agent` on `input` and returns a handle to await or cancel it.
    ///
    /// # Errors
    /// As [`execute`](Self::execute), plus [`EngineError::NoRuntime`] outside a tokio runtime.
    pub fn spawn(
        &self,
        context: &UserExecutionContext,
        agent: &str,
        input: impl Into<String>,
    ) -> Result<RunHandle, EngineError> {
        let inner = &self.inner;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(EngineError::NoRuntime);
        };
        if context.user_id() != self.user_id() {
            return Err(EngineError::UserMismatch {
                engine_user: self.user_id().clone(),
                context_user: context.user_id().clone(),
            });
        }
        let Some(agent_name) = inner.registry.agent_name(agent) else {
            return Err(EngineError::UnknownAgent {
                name: agent.to_owned(),
                available: inner.registry.agent_names().collect::<Vec<_>>().join(", "),
            });
        };
        let cancel = CancellationToken::new();
        {
            let mut state = lock(&inner.state);
            // Checked under the runs lock so shutdown (which takes it to cancel) cannot miss a run.
            if !self.is_active() {
                return Err(EngineError::EngineInactive {
                    user: self.user_id().clone(),
                });
            }
            if state.runs.contains_key(context.run_id()) {
                return Err(EngineError::DuplicateRun {
                    run_id: context.run_id().clone(),
                });
            }
            state.runs.insert(context.run_id().clone(), cancel.clone());
            state.acc.stats.total_runs += 1;
            state.last_activity = Instant::now();
        }
        let span = tracing::info_span!(
            "agent_run",
            user_id = %context.user_id(),
            thread_id = %context.thread_id(),
            run_id = %context.run_id(),
            agent = agent,
        );
        let run = Run {
            engine: Arc::clone(inner),
            context: context.clone(),
            agent_name,
            input: input.into(),
            cancel: cancel.clone(),
        };
        // Boxed so the (large) run state machine is moved as a pointer, not copied, on its way
        // into the task.
        let join = runtime.spawn(
            inner
                .tracker
                .track_future(Box::pin(run.execute()).instrument(span)),
        );
        Ok(RunHandle {
            run_id: context.run_id().clone(),
            cancel,
            join,
        })
    }

    /// Cancels one active (queued or executing) run of this engine by id. The run ends with
    /// status `cancelled` and its terminal event.
    ///
    /// # Errors
    /// [`EngineError::UnknownRun`] when no active run has this id.
    pub fn cancel(&self, run_id: &RunId) -> Result<(), EngineError> {
        match lock(&self.inner.state).runs.get(run_id) {
            Some(token) => {
                token.cancel();
                Ok(())
            }
            None => Err(EngineError::UnknownRun {
                run_id: run_id.clone(),
            }),
        }
    }

    /// Finished runs, oldest first, at most [`EngineConfig::history_limit`].
    pub fn history(&self) -> Vec<RunOutcome> {
        lock(&self.inner.state).history.iter().cloned().collect()
    }

    /// A snapshot of the engine's counters.
    pub fn stats(&self) -> EngineStats {
        let state = lock(&self.inner.state);
        let mut stats = state.acc.stats.clone();
        stats.active_runs = state.runs.len();
        stats.history_len = state.history.len();
        stats
    }

    /// Deactivates the engine and cancels its active runs, without waiting. Later `execute`
    /// and `spawn` calls get [`EngineError::EngineInactive`]. Returns `true` if this call
    /// deactivated it.
    pub fn begin_shutdown(&self) -> bool {
        let was_active = {
            let state = lock(&self.inner.state);
            let was_active = self.inner.active.swap(false, Ordering::AcqRel);
            for token in state.runs.values() {
                token.cancel();
            }
            was_active
        };
        self.inner.tracker.close();
        if was_active {
            tracing::debug!(engine_id = %self.inner.engine_id, "engine shutting down");
        }
        was_active
    }

    /// Shuts the engine down: cancels active runs, waits until each has emitted its terminal
    /// event, and clears the history. Idempotent.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        self.inner.tracker.wait().await;
        lock(&self.inner.state).history.clear();
    }
}

/// One accepted run, moved into its task.
struct Run {
    engine: Arc<EngineInner>,
    context: UserExecutionContext,
    agent_name: Arc<str>,
    input: String,
    cancel: CancellationToken,
}

enum Ended {
    Completed(String),
    Failed(String),
    TimedOut(String),
    Cancelled(String),
}

impl Run {
    async fn execute(self) -> RunOutcome {
        let engine = &self.engine;
        let config = &engine.config;
        let accepted = Instant::now();
        let mut rc = RunContext::new(
            Arc::clone(&self.agent_name),
            self.context.clone(),
            engine.registry.clone(),
            Arc::clone(&engine.sink),
            self.cancel.clone(),
            config.tool_timeout(),
            config.delivery_timeout(),
        );
        rc.emitter()
            .emit(AgentEvent::AgentStarted {
                agent_name: Arc::clone(&self.agent_name),
            })
            .await;

        let permit = self.wait_for_slot(rc.emitter()).await;
        let queue_wait = accepted.elapsed();
        let mut execution_time = Duration::ZERO;
        let ended = match permit {
            None => Ended::Cancelled("cancelled while queued; the agent never started".into()),
            Some(permit) => {
                let started = Instant::now();
                let ended = self.run_agent(&mut rc).await;
                execution_time = started.elapsed();
                drop(permit);
                ended
            }
        };

        let (status, result, error) = match ended {
            Ended::Completed(answer) => (RunStatus::Completed, Some(answer), None),
            Ended::Failed(e) => (RunStatus::Failed, None, Some(e)),
            Ended::TimedOut(e) => (RunStatus::TimedOut, None, Some(e)),
            Ended::Cancelled(e) => (RunStatus::Cancelled, None, Some(e)),
        };
        if let Some(message) = error.as_ref().filter(|_| status != RunStatus::Cancelled) {
            tracing::warn!(status = status.as_str(), "run did not complete");
            rc.emitter()
                .emit(AgentEvent::AgentError {
                    message: message.clone(),
                })
                .await;
        }
        rc.emitter()
            .emit(AgentEvent::AgentCompleted {
                agent_name: Arc::clone(&self.agent_name),
                status,
                success: status == RunStatus::Completed,
                result: result.clone(),
                error: error.clone(),
                duration_ms: millis(accepted.elapsed()),
            })
            .await;
        let emitter = rc.emitter();
        let outcome = RunOutcome {
            run_id: self.context.run_id().clone(),
            thread_id: self.context.thread_id().clone(),
            agent_name: Arc::clone(&self.agent_name),
            status,
            result,
            error,
            queue_wait,
            execution_time,
            events_delivered: emitter.delivered,
            events_dropped: emitter.dropped,
        };
        self.finish(&outcome);
        tracing::debug!(status = status.as_str(), "run ended");
        outcome
    }

    /// Waits for a concurrency slot; `None` if the run was cancelled while queued. Emits the
    /// "queued" notice once the wait passes `queue_notice_after`.
    async fn wait_for_slot<'a>(&'a self, emitter: &mut Emitter) -> Option<SemaphorePermit<'a>> {
        let semaphore = &self.engine.semaphore;
        if self.cancel.is_cancelled() {
            return None;
        }
        // Fast path: a free slot needs no timer for the queued notice.
        if let Ok(permit) = semaphore.try_acquire() {
            return Some(permit);
        }
        let acquire = semaphore.acquire();
        tokio::pin!(acquire);
        let notice = tokio::time::sleep(self.engine.config.queue_notice_after());
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => return None,
            permit = &mut acquire => return permit.ok(),
            () = notice => {}
        }
        emitter
            .emit(AgentEvent::AgentThinking {
                reasoning: std::borrow::Cow::Borrowed(QUEUED_NOTICE),
            })
            .await;
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            permit = acquire => permit.ok(),
        }
    }

    async fn run_agent(&self, rc: &mut RunContext) -> Ended {
        let registry = &self.engine.registry;
        let made =
            std::panic::catch_unwind(AssertUnwindSafe(|| registry.create_agent(&self.agent_name)));
        let mut agent = match made {
            Ok(Some(agent)) => agent,
            Ok(None) => {
                return Ended::Failed(format!("agent `{}` is not registered", self.agent_name))
            }
            Err(panic) => {
                return Ended::Failed(format!(
                    "agent `{}` panicked while being created: {}",
                    self.agent_name,
                    panic_message(&*panic)
                ))
            }
        };
        let timeout = self.engine.config.run_timeout();
        let result = {
            let run = AssertUnwindSafe(agent.run(rc, &self.input)).catch_unwind();
            let run = crate::run::within(timeout, run);
            // Biased toward the agent: an agent that watches for cancellation returns first.
            tokio::select! {
                biased;
                r = run => Some(r),
                () = self.cancel.cancelled() => None,
            }
        };
        let ended = match result {
            None => Ended::Cancelled("run cancelled".into()),
            Some(Err(_)) => {
                Ended::TimedOut(format!("run timed out after {:.1}s", timeout.as_secs_f64()))
            }
            Some(Ok(Err(panic))) => Ended::Failed(format!(
                "agent `{}` panicked: {}",
                self.agent_name,
                panic_message(&*panic)
            )),
            Some(Ok(Ok(_))) if self.cancel.is_cancelled() => {
                Ended::Cancelled("run cancelled".into())
            }
            Some(Ok(Ok(Err(e)))) => {
                Ended::Failed(format!("agent `{}` failed: {e}", self.agent_name))
            }
            Some(Ok(Ok(Ok(answer)))) => Ended::Completed(answer),
        };
        let open_status = match &ended {
            Ended::TimedOut(_) => ToolStatus::Timeout,
            _ => ToolStatus::Cancelled,
        };
        rc.close_open_call(open_status, "the run ended while the tool was executing")
            .await;
        ended
    }

    /// Records the outcome in history and stats and releases the run id, under one lock.
    fn finish(&self, outcome: &RunOutcome) {
        let engine = &self.engine;
        let mut state = lock(&engine.state);
        let acc = &mut state.acc;
        let s = &mut acc.stats;
        match outcome.status {
            RunStatus::Completed => s.completed_runs += 1,
            RunStatus::Failed => s.failed_runs += 1,
            RunStatus::TimedOut => s.timed_out_runs += 1,
            RunStatus::Cancelled => s.cancelled_runs += 1,
        }
        s.events_delivered += outcome.events_delivered;
        s.events_dropped += outcome.events_dropped;
        s.max_queue_wait = s.max_queue_wait.max(outcome.queue_wait);
        s.max_execution_time = s.max_execution_time.max(outcome.execution_time);
        acc.finished += 1;
        acc.queue_total += outcome.queue_wait;
        acc.exec_total += outcome.execution_time;
        acc.stats.avg_queue_wait = acc.queue_total / acc.finished;
        acc.stats.avg_execution_time = acc.exec_total / acc.finished;
        state.history.push_back(outcome.clone());
        while state.history.len() > engine.config.history_limit() {
            state.history.pop_front();
        }
        state.last_activity = Instant::now();
        state.runs.remove(&outcome.run_id);
    }
}

#[cfg(test)]
mod tests;
