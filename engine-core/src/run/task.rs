//! [`Run`]: the lifecycle of one accepted run (in its own task, or in the task of the caller
//! that awaits it) — `agent_started`, the wait for a concurrency slot, the agent under its
//! timeout and cancellation, the terminal event, and the record in the engine's history and
//! stats.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::SemaphorePermit;
use tokio::time::Instant;

use crate::agent::Agent;
use crate::context::UserExecutionContext;
use crate::engine::EngineInner;
use crate::error::panic_message;
use crate::event::{AgentEvent, RetractCause, RunStatus, ToolStatus};
use crate::guardrail::Guards;
use crate::limits::QUEUED_NOTICE;
use crate::outcome::StepOutcome;
use crate::outcome::{RunEnd, RunOutcome};
use crate::pipeline::{Pipeline, PipelineAgent};
use crate::registry::AgentMaker;
use crate::run::chain::{answered, cancelled, tripped, Answered};
use crate::run::control::{Cleanup, RunControl};
use crate::run::emit::{millis, within};
use crate::run::guard::{guarded, Guarded};
use crate::run::RunContext;
use crate::sink::{Delivery, DeliveryError, RunEnding};
use crate::sync::lock;
use std::future::Future;
use std::pin::Pin;

/// One accepted run, moved into its task.
pub(crate) struct Run {
    /// When the engine accepted the run (its queue time counts from here).
    pub(crate) accepted: Instant,
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) context: UserExecutionContext,
    pub(crate) agent_name: Arc<str>,
    /// What runs: the agent `agent_name` or a pipeline.
    pub(crate) kind: RunKind,
    pub(crate) input: String,
    pub(crate) control: Arc<RunControl>,
    /// The thread's earlier runs this run waits for (multitask `enqueue` and `interrupt`);
    /// empty for `parallel` or an idle thread.
    pub(crate) after: Vec<Arc<RunControl>>,
    /// The guardrails of the run's agent (a pipeline: those for every agent); `None` for most
    /// runs.
    pub(crate) guards: Option<Arc<Guards>>,
}

/// What a run runs, and the guardrails that apply to it.
pub(crate) enum RunKind {
    /// A registered agent, by its maker and guardrails (looked up once, when the run was
    /// admitted).
    Agent(AgentMaker, Option<Arc<Guards>>),
    /// A pipeline of agents (with the guardrails registered for every agent).
    Pipeline(Arc<Pipeline>, Option<Arc<Guards>>),
}

impl RunKind {
    /// Its guardrails, taken out (the run keeps them beside the kind).
    pub(crate) fn take_guards(&mut self) -> Option<Arc<Guards>> {
        match self {
            Self::Agent(_, g) | Self::Pipeline(_, g) => g.take(),
        }
    }
}

/// Whatever way the run's task ends (even dropped with its runtime, before its first poll),
/// the run is marked done: the thread's later runs stop waiting for it and the engine's
/// shutdown stops waiting.
impl Drop for Run {
    fn drop(&mut self) {
        self.control.mark_done();
    }
}

impl Run {
    /// Runs to the end. Whatever happens inside, the run emits `agent_started` first and exactly
    /// one `agent_completed` last, and is recorded and released in the engine.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` would hold the run twice in its state (argument and local)"
    )]
    pub(crate) fn execute(self) -> impl std::future::Future<Output = RunOutcome> + Send + 'static {
        // An `async move` block, not an `async fn`: the run is held once in the future's state
        // (an `async fn` keeps its argument twice, as argument and as local).
        async move {
            let (outcome, ended) = self.run_to_end().await;
            // Awaited here, where the run's own future is already done: it costs the run's
            // task no state.
            if let Some(wait) = ended {
                settle(wait).await;
            }
            outcome
        }
    }

    async fn run_to_end(&self) -> (RunOutcome, Option<Waiting<'_>>) {
        let engine = &self.engine;
        let accepted = self.accepted;
        self.wait_for_earlier_runs().await;
        let mut rc = RunContext::new(
            Arc::clone(&self.agent_name),
            self.context.clone(),
            Arc::clone(&engine.sink),
            Arc::clone(&self.control),
            Arc::clone(&engine.kit),
            self.guards.clone(),
        );
        rc.emit(AgentEvent::AgentStarted {
            agent_name: Arc::clone(&self.agent_name),
        })
        .await;

        let permit = self.wait_for_slot(&mut rc).await;
        let started = Instant::now();
        let queue_wait = started.saturating_duration_since(accepted);
        let ran = permit.is_some();
        let (end, died) = match permit {
            None => (
                RunEnd::Cancelled {
                    reason: "cancelled while queued; the agent never started".into(),
                },
                None,
            ),
            Some(permit) => {
                let ended = self.run_agent(&mut rc, &started).await;
                drop(permit);
                ended
            }
        };
        // One clock read for the agent's end and the run's, unless cleanups run in between.
        let mut finished = Instant::now();
        let execution_time = if ran {
            finished.saturating_duration_since(started)
        } else {
            Duration::ZERO
        };

        let cleanups = self.control.take_cleanups();
        if !cleanups.is_empty() {
            // Boxed: most runs register none, and the run's task is copied by the runtime,
            // so a rare path should not size it.
            Box::pin(run_cleanups(
                cleanups,
                self.engine.kit.config.tool_timeout(),
            ))
            .await;
            finished = Instant::now();
        }
        let status = end.status();
        // The agent that answered (the last one the run was handed off to).
        let answered_by = Arc::clone(&rc.agent_name);
        let retract = status == RunStatus::GuardrailTripped && !rc.shown().is_empty();
        let mut emitter = rc.last_emitter().await;
        if retract {
            emitter
                .emit(AgentEvent::AnswerRetracted {
                    cause: RetractCause::GuardrailTripped,
                })
                .await;
        }
        if !matches!(
            status,
            RunStatus::Completed | RunStatus::Cancelled | RunStatus::GuardrailTripped
        ) {
            tracing::warn!(status = status.as_str(), "run did not complete");
            if let Some(reason) = died {
                emitter
                    .emit(AgentEvent::AgentDeath {
                        agent_name: Arc::clone(&answered_by),
                        request_id: self.context.request_id().clone(),
                        reason,
                    })
                    .await;
            } else {
                emitter
                    .emit(AgentEvent::AgentError {
                        message: end.error().unwrap_or_default().to_owned(),
                    })
                    .await;
            }
        }
        // The sink hears of the end first (a sync store commits it here). Only a delivery
        // that waits is awaited, and the terminal event is built after it: nothing of the end
        // but `end` itself is held across the wait, so the run's future keeps its size.
        let duration_ms = millis(finished.saturating_duration_since(accepted));
        let ending = {
            let view = RunEnding {
                agent_name: &answered_by,
                end: &end,
                seq: emitter.delivered + emitter.dropped + 1,
                duration_ms,
            };
            hook(|| engine.sink.run_ending(&self.context, &view))
        };
        if let Some(wait) = ending {
            settle(wait).await;
        }
        emitter
            .emit(AgentEvent::AgentCompleted {
                agent_name: Arc::clone(&answered_by),
                status,
                success: status == RunStatus::Completed,
                result: end.answer().map(str::to_owned),
                error: end.error().map(str::to_owned),
                duration_ms,
            })
            .await;
        let mut steps = std::mem::take(&mut *lock(&self.control.steps));
        if let RunKind::Pipeline(pipeline, _) = &self.kind {
            // Steps the run never reached (cancelled or timed out first).
            for step in pipeline.steps().iter().skip(steps.len()) {
                steps.push(StepOutcome::new(Arc::from(step.agent()), None));
            }
        }
        let outcome = RunOutcome {
            run_id: self.context.run_id().clone(),
            thread_id: self.context.thread_id().clone(),
            agent_name: Arc::clone(&self.agent_name),
            answered_by,
            end,
            queue_wait,
            execution_time,
            events_delivered: emitter.delivered,
            events_dropped: emitter.dropped,
            steps,
            usage: self.control.usage(),
        };
        drop(emitter);
        self.finish(&outcome, finished);
        tracing::debug!(status = status.as_str(), "run ended");
        // The sink's record of the end is awaited by `execute`, after this future is done.
        let ended = hook(|| engine.sink.run_ended(&self.context, &outcome));
        (outcome, ended)
    }

    /// Waits until the thread's earlier runs (those this run must follow) have ended, or until
    /// this run is cancelled.
    async fn wait_for_earlier_runs(&self) {
        for earlier in &self.after {
            tokio::select! {
                biased;
                () = self.control.cancel.wait() => return,
                () = earlier.ended() => {}
            }
        }
    }

    /// Waits for a concurrency slot; `None` if the run was cancelled while queued. Emits the
    /// "queued" notice once the wait passes `queue_notice_after`.
    async fn wait_for_slot<'a>(&'a self, rc: &mut RunContext) -> Option<SemaphorePermit<'a>> {
        let semaphore = &self.engine.semaphore;
        if self.control.cancel.is_set() {
            return None;
        }
        // Fast path: a free slot needs no timer for the queued notice.
        if let Ok(permit) = semaphore.try_acquire() {
            return Some(permit);
        }
        let acquire = semaphore.acquire();
        tokio::pin!(acquire);
        let notice = tokio::time::sleep(self.engine.kit.config.queue_notice_after());
        tokio::select! {
            biased;
            () = self.control.cancel.wait() => return None,
            permit = &mut acquire => return permit.ok(),
            () = notice => {}
        }
        rc.emit(AgentEvent::AgentThinking {
            reasoning: std::borrow::Cow::Borrowed(QUEUED_NOTICE),
        })
        .await;
        tokio::select! {
            biased;
            () = self.control.cancel.wait() => None,
            permit = acquire => permit.ok(),
        }
    }

    /// Runs the agent (or the pipeline), and the agents it hands off to, to the end; the death
    /// reason when one panicked.
    async fn run_agent(&self, rc: &mut RunContext, started: &Instant) -> (RunEnd, Option<String>) {
        let name = &self.agent_name;
        let mut agent: Box<dyn Agent> = match &self.kind {
            RunKind::Pipeline(pipeline, _) => Box::new(PipelineAgent {
                pipeline: Arc::clone(pipeline),
                control: Arc::clone(&self.control),
            }),
            RunKind::Agent(make, _) => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| make())) {
                    Ok(agent) => agent,
                    Err(panic) => {
                        let reason = format!(
                            "agent `{name}` panicked while being created: {}",
                            panic_message(&*panic)
                        );
                        return (
                            RunEnd::Failed {
                                error: reason.clone(),
                            },
                            Some(reason),
                        );
                    }
                }
            }
        };
        // The run timeout does not count time spent waiting for the user's approval of a tool
        // call (see `EngineConfig::approval_timeout`). Biased toward the agent: an agent that
        // watches for cancellation returns first. Nothing is kept across the awaits but what
        // the usual run needs: its future is moved (copied) whole and sized by all its states.
        let result = match self.guards.as_ref().filter(|g| g.on_input()) {
            // The usual run: its agent alone, nothing boxed for guardrails or handoffs.
            None => {
                let run = AssertUnwindSafe(agent.run(rc, &self.input)).catch_unwind();
                let limit = Some(self.engine.kit.config.run_timeout());
                let ran = guarded(run, &self.control.cancel, limit, || {
                    self.control.approval_wait()
                })
                .await;
                ran.map(|ran| answered(rc, ran))
            }
            Some(guards) => {
                let chain = self.with_input_guards(rc, agent, Arc::clone(guards));
                let limit = Some(self.engine.kit.config.run_timeout());
                Box::pin(guarded(chain, &self.control.cancel, limit, || {
                    self.control.approval_wait()
                }))
                .await
            }
        };
        let (mut end, mut died) = match result {
            Guarded::Done(Answered::Answer(answer)) => (self.answer(rc, answer).await, None),
            // A handoff or a trip: boxed, so that the usual run does not carry their state.
            Guarded::Done(rare @ (Answered::HandOff(_) | Answered::Tripped(_))) => {
                Box::pin(self.rare_end(rc, rare, started)).await
            }
            other => ended(other, self.engine.kit.config.run_timeout()),
        };
        // A guardrail trip (of a tool guardrail inside an agent, say) ends the run as a trip,
        // whatever the agents did after it.
        if let Some(trip) = self.control.trip() {
            end = trip.end();
            died = None;
        }
        // An abandoned agent (cancellation, timeout, panic, trip) may leave tool calls and
        // sub-agents open: each still gets its completion, innermost first.
        let (tool, run) = match &end {
            RunEnd::TimedOut { .. } => (ToolStatus::Timeout, RunStatus::TimedOut),
            RunEnd::Failed { .. } => (ToolStatus::Cancelled, RunStatus::Failed),
            _ => (ToolStatus::Cancelled, RunStatus::Cancelled),
        };
        rc.close_open(None, tool, run, "the run ended while this was in progress")
            .await;
        (end, died)
    }

    /// The end of a run whose agent asked for a handoff (the rest of the run, within what is
    /// left of its time) or was stopped by a guardrail.
    async fn rare_end(
        &self,
        rc: &mut RunContext,
        answered: Answered,
        started: &Instant,
    ) -> (RunEnd, Option<String>) {
        let timeout = self.engine.kit.config.run_timeout();
        let control = &self.control;
        let result = match answered {
            Answered::HandOff(request) => {
                let left = (timeout + control.approval_wait())
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1));
                let rest = self.continue_after(rc, request);
                guarded(rest, &control.cancel, Some(left), || {
                    control.approval_wait()
                })
                .await
            }
            other => Guarded::Done(other),
        };
        match result {
            Guarded::Done(Answered::Answer(answer)) => (self.answer(rc, answer).await, None),
            Guarded::Done(Answered::Tripped(trip)) => (tripped(rc, *trip).await, None),
            other => ended(other, timeout),
        }
    }

    /// Records the outcome in history and stats and releases the run id, under one lock.
    fn finish(&self, outcome: &RunOutcome, finished: Instant) {
        let engine = &self.engine;
        let mut state = lock(&engine.state);
        state.acc.record(outcome);
        state.history.push_back(outcome.clone());
        while state.history.len() > engine.kit.config.history_limit() {
            state.history.pop_front();
        }
        state.last_activity = finished;
        state.runs.remove(&outcome.run_id);
    }
}

/// The run's end for every way its agents can end but an answer and a trip.
fn ended(result: Guarded<Answered>, timeout: Duration) -> (RunEnd, Option<String>) {
    match result {
        Guarded::Cancelled | Guarded::Done(Answered::Cancelled) => (cancelled(), None),
        Guarded::TimedOut => (
            RunEnd::TimedOut {
                error: format!("run timed out after {:.1}s", timeout.as_secs_f64()),
            },
            None,
        ),
        Guarded::Done(Answered::Failed(error)) => (RunEnd::Failed { error }, None),
        Guarded::Done(Answered::Died(death)) => {
            let (error, reason) = *death;
            (RunEnd::Failed { error }, Some(reason))
        }
        // A trip is recorded in the run's control (the caller maps it), and every handoff asked
        // for is made before this.
        Guarded::Done(Answered::Tripped(trip)) => (trip.end(), None),
        Guarded::Done(Answered::HandOff(_)) => (
            RunEnd::Failed {
                error: "a handoff was asked for and never made".into(),
            },
            None,
        ),
        Guarded::Done(Answered::Answer(answer)) => (RunEnd::Completed { answer }, None),
    }
}

/// A sink hook's delivery that waits.
type Waiting<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// Calls one of the sink's run hooks ([`EventSink::run_ending`], [`EventSink::run_ended`]):
/// `None` when it is done at once (the default), the wait otherwise. A panic in the sink is
/// logged and the run ends as it would have.
fn hook<'a>(call: impl FnOnce() -> Delivery<'a>) -> Option<Waiting<'a>> {
    match std::panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(Delivery::Ready(_)) => None,
        Ok(Delivery::Pending(wait)) => Some(wait),
        Err(panic) => {
            tracing::warn!(panic = %panic_message(&*panic), "the sink panicked recording the run's end");
            None
        }
    }
}

/// Awaits a hook's wait; its error or panic is logged.
async fn settle(wait: Waiting<'_>) {
    match AssertUnwindSafe(wait).catch_unwind().await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "the sink could not record the run's end"),
        Err(panic) => {
            tracing::warn!(panic = %panic_message(&*panic), "the sink panicked recording the run's end");
        }
    }
}

/// Runs the run's cleanup actions, newest first, each within `limit`; a failing, panicking or
/// slow one is logged and the rest still run.
async fn run_cleanups(cleanups: Vec<Cleanup>, limit: Duration) {
    for cleanup in cleanups {
        let name = cleanup.name;
        let fut = std::panic::catch_unwind(AssertUnwindSafe(cleanup.action));
        let result = match fut {
            Ok(fut) => within(limit, AssertUnwindSafe(fut).catch_unwind()).await,
            Err(panic) => Ok(Err(panic)),
        };
        match result {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(cleanup = %name, %error, "cleanup action failed"),
            Ok(Err(panic)) => {
                tracing::warn!(cleanup = %name, panic = %panic_message(&*panic), "cleanup action panicked");
            }
            Err(_) => tracing::warn!(cleanup = %name, "cleanup action timed out"),
        }
    }
}
