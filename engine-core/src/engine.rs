//! [`UserExecutionEngine`]: the one engine, bound to one user.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::EngineConfig;
use crate::context::UserExecutionContext;
use crate::error::EngineError;
use crate::ids::{RunId, UserId};
use crate::multitask::{ApprovalDecision, MultitaskPolicy, RunOptions};
use crate::outcome::{EngineStats, RunOutcome, StatsAcc};
use crate::pipeline::{Pipeline, PIPELINE_AGENT};
use crate::run::attached::Attached;
use crate::run::control::RunControl;
use crate::run::task::{Run, RunKind};
use crate::run::RunKit;
use crate::sink::EventSink;
use crate::sync::lock;

/// A run started with [`UserExecutionEngine::spawn`]: await its outcome or cancel it.
#[derive(Debug)]
pub struct RunHandle {
    run_id: RunId,
    control: Arc<RunControl>,
    join: JoinHandle<RunOutcome>,
}

impl RunHandle {
    /// The run's id.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }
    /// Asks the run to stop; it ends with status `cancelled` and its terminal event.
    pub fn cancel(&self) {
        self.control.cancel.set();
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
/// constructor, and only the factory can stop it (close or drop the `EngineHandle`, or
/// `cleanup_user`/`shutdown` on the factory). Everything it holds (active runs, history, stats, the concurrency semaphore,
/// the event sink) belongs to its user, and every run is checked against that user before it
/// starts. Cloning is cheap and yields another handle to the same engine.
#[derive(Clone)]
#[doc(alias(
    "ExecutionEngine",
    "SupervisorExecutionEngine",
    "ConsolidatedExecutionEngine",
    "RequestScopedExecutionEngine",
    "ExecutionEngineWithWebSocketEvents",
    "MCPEnhancedExecutionEngine",
    "SupervisorExecutionEngineAdapter",
    "ConsolidatedExecutionEngineWrapper",
    "GenericExecutionEngineAdapter",
    "ExecutionEngineAdapter"
))]
pub struct UserExecutionEngine {
    inner: Arc<EngineInner>,
}

/// The engine's shared state; the run task ([`Run`]) reads its configuration and records its
/// outcome here.
pub(crate) struct EngineInner {
    /// Built (with a fresh UUID) on first use: most engines are never asked for it on the
    /// single-node path.
    engine_id: std::sync::OnceLock<Box<str>>,
    context: UserExecutionContext,
    /// The registry and configuration, shared with every run's agents and every engine of
    /// the factory.
    pub(crate) kit: Arc<RunKit>,
    pub(crate) sink: Arc<dyn EventSink>,
    pub(crate) semaphore: Semaphore,
    active: AtomicBool,
    created_at: Instant,
    /// Everything mutable, behind one lock taken once when a run starts and once when it ends.
    pub(crate) state: Mutex<EngineState>,
}

/// The hasher of [`EngineState::runs`]: Fx, a few instructions per id where SipHash took
/// ~80 per lookup (a run inserts and removes its id once each).
pub(crate) type RunsHasher = rustc_hash::FxBuildHasher;

/// What changes as runs come and go.
pub(crate) struct EngineState {
    pub(crate) last_activity: Instant,
    /// Accepted runs not yet ended (queued or executing): at most
    /// [`EngineConfig::max_accepted_runs`].
    /// Keyed with a fixed, fast hasher (zero bytes per engine instead of a random 16-byte
    /// state; no flooding concern: the map holds only this one user's own runs, bounded by
    /// `max_queued_runs`).
    pub(crate) runs: HashMap<RunId, Arc<RunControl>, RunsHasher>,
    pub(crate) history: VecDeque<RunOutcome>,
    pub(crate) acc: StatsAcc,
}

impl std::fmt::Debug for UserExecutionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserExecutionEngine")
            .field("engine_id", &self.engine_id())
            .field("user_id", self.user_id())
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

impl UserExecutionEngine {
    /// Only the factory reaches this, through [`crate::factory_only::assemble_engine`], and the
    /// crate's own unit tests.
    pub(crate) fn assemble(
        context: UserExecutionContext,
        kit: Arc<RunKit>,
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
                engine_id: std::sync::OnceLock::new(),
                semaphore: Semaphore::new(kit.config.max_concurrent_runs()),
                context,
                kit,
                sink,
                active: AtomicBool::new(true),
                created_at: now,
                state: Mutex::new(EngineState {
                    last_activity: now,
                    runs: HashMap::default(),
                    history: VecDeque::new(),
                    acc: StatsAcc::default(),
                }),
            }),
        })
    }

    /// A unique id for this engine (`engine_<user>_<uuid>`).
    pub fn engine_id(&self) -> &str {
        let inner = &self.inner;
        inner.engine_id.get_or_init(|| {
            format!(
                "engine_{}_{}",
                inner.context.user_id(),
                uuid::Uuid::new_v4().simple()
            )
            .into_boxed_str()
        })
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
        &self.inner.kit.config
    }
    /// `false` once the factory stopped it (handle closed or dropped, user cleaned up, reaped or
    /// shut down).
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
    /// The run executes in the caller's task (no task of its own to spawn and join) until the
    /// caller stops waiting: if this future is dropped first, the run moves into a task of its
    /// own and still finishes and still emits its terminal event. Use [`spawn`](Self::spawn)
    /// to run it beside the caller from the start (in parallel on a multi-thread runtime).
    ///
    /// # Errors
    /// [`EngineError::EngineInactive`], [`EngineError::UserMismatch`],
    /// [`EngineError::UnknownAgent`], [`EngineError::DuplicateRun`] or
    /// [`EngineError::QueueFull`], all before anything runs or is emitted;
    /// [`EngineError::NoRuntime`] outside a tokio runtime. A run that starts always yields
    /// `Ok` with its [`RunStatus`](crate::RunStatus).
    pub async fn execute(
        &self,
        context: &UserExecutionContext,
        agent: &str,
        input: impl Into<String>,
    ) -> Result<RunOutcome, EngineError> {
        let (runtime, agent_name, kind) = self.prepare(context, agent)?;
        let (run, span) = self.admit(context, agent_name, kind, input.into(), RunOptions::new())?;
        let run_id = context.run_id().clone();
        if span.is_disabled() {
            Attached::new(runtime, run_id, run.execute()).await
        } else {
            Attached::new(runtime, run_id, run.execute().instrument(span)).await
        }
    }

    /// Starts `agent` on `input` and returns a handle to await or cancel it. A busy thread is
    /// handled by the engine's [`EngineConfig::multitask`] policy.
    ///
    /// # Errors
    /// As [`execute`](Self::execute), plus [`EngineError::NoRuntime`] outside a tokio runtime.
    pub fn spawn(
        &self,
        context: &UserExecutionContext,
        agent: &str,
        input: impl Into<String>,
    ) -> Result<RunHandle, EngineError> {
        self.spawn_with(context, agent, input, RunOptions::new())
    }

    /// Like [`spawn`](Self::spawn), with per-run [`RunOptions`] (the [`MultitaskPolicy`] for
    /// a thread that already has a live run).
    ///
    /// ```
    /// # use engine_core::{async_trait, Agent, AgentRegistry, BoxError, RunContext, UserExecutionContext};
    /// use engine_core::{MultitaskPolicy, RunOptions, RunStatus};
    /// # use engine_factory::{ExecutionEngineFactory, FactoryConfig};
    /// # struct Slow;
    /// # #[async_trait]
    /// # impl Agent for Slow {
    /// #     async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
    /// #         ctx.cancelled().await;
    /// #         Ok(input.to_owned())
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let registry = AgentRegistry::builder().agent("slow", || Slow).build()?;
    /// # let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry)?;
    /// let first = UserExecutionContext::new("alice", "thread-1", "run-1")?;
    /// let engine = factory.create_for_user(&first)?;
    /// let answering = engine.spawn(&first, "slow", "a long question")?;
    /// // The user writes again on the same thread: stop the old answer, start the new one.
    /// let second = first.new_run();
    /// let interrupt = RunOptions::new().multitask(MultitaskPolicy::Interrupt);
    /// let next = engine.spawn_with(&second, "slow", "never mind", interrupt)?;
    /// assert_eq!(answering.outcome().await?.status(), RunStatus::Cancelled);
    /// # next.cancel();
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn), plus [`EngineError::ThreadBusy`] under
    /// [`MultitaskPolicy::Reject`].
    pub fn spawn_with(
        &self,
        context: &UserExecutionContext,
        agent: &str,
        input: impl Into<String>,
        options: RunOptions,
    ) -> Result<RunHandle, EngineError> {
        let (runtime, agent_name, kind) = self.prepare(context, agent)?;
        self.start(runtime, context, agent_name, kind, input.into(), options)
    }

    /// What starting `agent` for `context` needs before admission: the runtime to run it on,
    /// the context's user checked, the agent's registered name and maker.
    fn prepare(
        &self,
        context: &UserExecutionContext,
        agent: &str,
    ) -> Result<(tokio::runtime::Handle, Arc<str>, RunKind), EngineError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(EngineError::NoRuntime);
        };
        self.check_user(context)?;
        let Some(entry) = self.inner.kit.registry.agent_entry(agent) else {
            return Err(self.unknown_agent(agent));
        };
        Ok((
            runtime,
            entry.name,
            RunKind::Agent(entry.maker, entry.guards),
        ))
    }

    /// Starts a [`Pipeline`] on `input` as one run: each step runs as a sub-agent, announced by
    /// a `progress_update`; the outcome's [`steps`](RunOutcome::steps) tell how each ended.
    ///
    /// # Errors
    /// As [`spawn_with`](Self::spawn_with); [`EngineError::InvalidPipeline`] for a pipeline
    /// with no step or more than [`Pipeline::MAX_STEPS`], [`EngineError::UnknownAgent`] for a
    /// step naming an unregistered agent (both before anything is emitted).
    pub fn spawn_pipeline(
        &self,
        context: &UserExecutionContext,
        pipeline: Pipeline,
        input: impl Into<String>,
        options: RunOptions,
    ) -> Result<RunHandle, EngineError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(EngineError::NoRuntime);
        };
        self.check_user(context)?;
        let n = pipeline.steps().len();
        if n == 0 || n > Pipeline::MAX_STEPS {
            return Err(EngineError::InvalidPipeline {
                reason: format!("it has {n} steps; give 1 to {}", Pipeline::MAX_STEPS),
            });
        }
        if let Some(step) = pipeline
            .steps()
            .iter()
            .find(|s| !self.inner.kit.registry.has_agent(s.agent()))
        {
            return Err(self.unknown_agent(step.agent()));
        }
        let name: Arc<str> = Arc::from(PIPELINE_AGENT);
        let guards = self.inner.kit.registry.global_guards();
        let kind = RunKind::Pipeline(Arc::new(pipeline), guards);
        self.start(runtime, context, name, kind, input.into(), options)
    }

    fn unknown_agent(&self, agent: &str) -> EngineError {
        let registry = &self.inner.kit.registry;
        EngineError::UnknownAgent {
            name: agent.to_owned(),
            available: registry.agent_names().collect::<Vec<_>>().join(", "),
        }
    }

    fn check_user(&self, context: &UserExecutionContext) -> Result<(), EngineError> {
        if context.user_id() != self.user_id() {
            return Err(EngineError::UserMismatch {
                engine_user: self.user_id().clone(),
                context_user: context.user_id().clone(),
            });
        }
        Ok(())
    }

    /// Admits and spawns one run (agent or pipeline) under the engine's limits and the run's
    /// multitask policy.
    fn start(
        &self,
        runtime: tokio::runtime::Handle,
        context: &UserExecutionContext,
        agent_name: Arc<str>,
        kind: RunKind,
        input: String,
        options: RunOptions,
    ) -> Result<RunHandle, EngineError> {
        let (run, span) = self.admit(context, agent_name, kind, input, options)?;
        let control = Arc::clone(&run.control);
        // No subscriber wants the span: spawn the run bare instead of entering and leaving a
        // disabled span on every poll.
        let join = if span.is_disabled() {
            runtime.spawn(run.execute())
        } else {
            runtime.spawn(run.execute().instrument(span))
        };
        Ok(RunHandle {
            run_id: context.run_id().clone(),
            control,
            join,
        })
    }

    /// Admits one run (agent or pipeline) under the engine's limits and the run's multitask
    /// policy: the run, ready to execute, and its span.
    fn admit(
        &self,
        context: &UserExecutionContext,
        agent_name: Arc<str>,
        mut kind: RunKind,
        input: String,
        options: RunOptions,
    ) -> Result<(Run, tracing::Span), EngineError> {
        let inner = &self.inner;
        let policy = options
            .multitask_policy()
            .unwrap_or(inner.kit.config.multitask());
        let control = Arc::new(RunControl::new(context.thread_id().clone()));
        // One clock read for the acceptance: the engine's activity and the run's queue time.
        let accepted = Instant::now();
        let mut after = Vec::new();
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
            // The thread's live runs, unless this run ignores them. Collected only when there
            // are some (an empty Vec does not allocate).
            if policy != MultitaskPolicy::Parallel {
                after = state
                    .runs
                    .values()
                    .filter(|r| r.thread_id == *context.thread_id())
                    .map(Arc::clone)
                    .collect();
            }
            if policy == MultitaskPolicy::Reject && !after.is_empty() {
                return Err(EngineError::ThreadBusy {
                    thread_id: context.thread_id().clone(),
                    live_runs: after.len(),
                });
            }
            // One policy for a flood of messages: the engine holds at most this many runs, and
            // refuses the next before it emits anything.
            let config = &inner.kit.config;
            if state.runs.len() >= config.max_accepted_runs() {
                state.acc.rejected_runs = state.acc.rejected_runs.saturating_add(1);
                return Err(EngineError::QueueFull {
                    max_concurrent_runs: config.max_concurrent_runs(),
                    max_queued_runs: config.max_queued_runs(),
                });
            }
            if policy == MultitaskPolicy::Interrupt {
                for r in state.runs.values() {
                    if r.thread_id == *context.thread_id() {
                        r.cancel.set();
                    }
                }
            }
            state
                .runs
                .insert(context.run_id().clone(), Arc::clone(&control));
            state.acc.total_runs = state.acc.total_runs.saturating_add(1);
            state.last_activity = accepted;
        }
        // A sink that panics here must not fail the caller: the run is accepted either way.
        let sink = &*inner.sink;
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sink.run_accepted(context, &agent_name, &input);
        })) {
            tracing::warn!(panic = %crate::error::panic_message(&*panic), "the sink panicked recording an accepted run");
        }
        let span = tracing::info_span!(
            "agent_run",
            user_id = %context.user_id(),
            thread_id = %context.thread_id(),
            run_id = %context.run_id(),
            agent = &*agent_name,
        );
        let guards = kind.take_guards();
        let run = Run {
            accepted,
            engine: Arc::clone(inner),
            context: context.clone(),
            agent_name,
            kind,
            input,
            control,
            after,
            guards,
        };
        Ok((run, span))
    }

    /// Cancels one active (queued or executing) run of this engine by id. The run ends with
    /// status `cancelled` and its terminal event.
    ///
    /// # Errors
    /// [`EngineError::UnknownRun`] when no active run has this id.
    pub fn cancel(&self, run_id: &RunId) -> Result<(), EngineError> {
        match lock(&self.inner.state).runs.get(run_id) {
            Some(run) => {
                run.cancel.set();
                Ok(())
            }
            None => Err(EngineError::UnknownRun {
                run_id: run_id.clone(),
            }),
        }
    }

    /// Answers a tool call of this engine's run `run_id` that waits for the user's approval
    /// (announced by its `approval_requested` event): approve runs the tool, deny gives the
    /// agent [`ToolError::Denied`](crate::ToolError::Denied). Either way the run emits
    /// `approval_decided`, then the call's `tool_completed`.
    ///
    /// # Errors
    /// [`EngineError::UnknownRun`] when this engine has no active run with this id (another
    /// user's run included), [`EngineError::UnknownApproval`] when the run has no call
    /// `call_id` waiting.
    pub fn approve(
        &self,
        run_id: &RunId,
        call_id: u32,
        decision: ApprovalDecision,
    ) -> Result<(), EngineError> {
        let run = lock(&self.inner.state).runs.get(run_id).cloned();
        let Some(run) = run else {
            return Err(EngineError::UnknownRun {
                run_id: run_id.clone(),
            });
        };
        if run.decide(call_id, decision) {
            Ok(())
        } else {
            Err(EngineError::UnknownApproval {
                run_id: run_id.clone(),
                call_id,
            })
        }
    }

    /// The tool calls of `run_id` waiting for the user's approval, by call id (empty when the
    /// run is not active or waits for nothing).
    pub fn pending_approvals(&self, run_id: &RunId) -> Vec<u32> {
        let run = lock(&self.inner.state).runs.get(run_id).cloned();
        run.map(|r| r.pending_approvals()).unwrap_or_default()
    }

    /// Finished runs, oldest first, at most [`EngineConfig::history_limit`].
    pub fn history(&self) -> Vec<RunOutcome> {
        lock(&self.inner.state).history.iter().cloned().collect()
    }

    /// A snapshot of the engine's counters.
    pub fn stats(&self) -> EngineStats {
        let state = lock(&self.inner.state);
        let mut stats = state.acc.snapshot();
        stats.active_runs = state.runs.len();
        stats.history_len = state.history.len();
        stats
    }

    /// Deactivates the engine and cancels its active runs, without waiting. Later `execute`
    /// and `spawn` calls get [`EngineError::EngineInactive`]. Returns `true` if this call
    /// deactivated it. Reached only through [`crate::factory_only`].
    pub(crate) fn begin_shutdown(&self) -> bool {
        let was_active = {
            let state = lock(&self.inner.state);
            let was_active = self.inner.active.swap(false, Ordering::AcqRel);
            for run in state.runs.values() {
                run.cancel.set();
            }
            was_active
        };
        if was_active {
            tracing::debug!(engine_id = %self.engine_id(), "engine shutting down");
        }
        was_active
    }

    /// Shuts the engine down: cancels active runs, waits until each has emitted its terminal
    /// event, and clears the history. Idempotent. Reached only through [`crate::factory_only`].
    pub(crate) async fn shutdown(&self) {
        self.begin_shutdown();
        // No run is accepted once inactive; each accepted run leaves `runs` after its terminal
        // event, and its done signal fires when its task ends (or is dropped).
        let accepted: Vec<Arc<RunControl>> =
            lock(&self.inner.state).runs.values().cloned().collect();
        for run in accepted {
            run.ended().await;
        }
        lock(&self.inner.state).history.clear();
    }
}

#[cfg(test)]
mod tests;
