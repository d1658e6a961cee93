//! The agents of one run, in order: the blocking input guardrails, the first agent (beside its
//! parallel input guardrails), the agents it hands the run off to, and the output guardrails
//! of the agent that answers. A run without guardrails or handoffs takes the short way: its
//! agent alone, with nothing boxed or allocated for the rest.

use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::FutureExt;

use crate::agent::{Agent, BoxError};
use crate::error::panic_message;
use crate::event::{AgentEvent, RetractCause};
use crate::guardrail::{Checked, GuardrailInput, Guards};
use crate::handoff::{Handoff, HandoffError, HandoffInput};
use crate::outcome::RunEnd;
use crate::registry::AgentRegistry;
use crate::run::checks::{self, Scope, Trip};
use crate::run::guard::{guarded, Guarded};
use crate::run::task::Run;
use crate::run::RunContext;

/// The handoffs of one run: the one asked for and not yet made, and those made.
#[derive(Debug, Default)]
pub(crate) struct Handoffs {
    pending: Option<Result<Request, HandoffError>>,
    made: u32,
    /// The agents so far, first to last (once a handoff was made).
    chain: Vec<Arc<str>>,
}

/// A handoff asked for.
#[derive(Debug)]
pub(crate) struct Request {
    to: Arc<str>,
    input: String,
    reason: Option<String>,
}

impl Handoffs {
    /// The agent `from` asks for `handoff`.
    pub(crate) fn ask(
        &mut self,
        from: &Arc<str>,
        registry: &AgentRegistry,
        handoff: Handoff,
    ) -> Result<String, HandoffError> {
        match &self.pending {
            Some(Ok(first)) => {
                return Err(HandoffError::AlreadyRequested {
                    agent: from.to_string(),
                    to: first.to.to_string(),
                })
            }
            Some(Err(e)) => return Err(e.clone()),
            None => {}
        }
        let Some(to) = registry.handoff_target(from, &handoff.to) else {
            let allowed: Vec<&str> = registry.handoff_targets(from).collect();
            return Err(HandoffError::NotAllowed {
                from: from.to_string(),
                to: handoff.to,
                allowed: if allowed.is_empty() {
                    "none".into()
                } else {
                    allowed.join(", ")
                },
            });
        };
        let limit = registry.max_handoffs();
        if self.made >= limit {
            let mut names: Vec<&str> = self.chain.iter().map(|a| &**a).collect();
            if names.is_empty() {
                names.push(from);
            }
            names.push(&to);
            let e = HandoffError::LimitReached {
                limit,
                chain: names.join(" -> "),
            };
            // Recorded: the run ends with it whatever the agent does with the error.
            self.pending = Some(Err(e.clone()));
            return Err(e);
        }
        self.pending = Some(Ok(Request {
            to,
            input: handoff.input,
            reason: handoff.reason,
        }));
        Ok(String::new())
    }
}

/// How the run's agents ended, before the output guardrails.
pub(crate) enum Answered {
    Answer(String),
    Failed(String),
    /// A panic: the run's error and the panic message.
    Died(Box<(String, String)>),
    Cancelled,
    Tripped(Box<Trip>),
    /// The agent asked for a handoff (not made yet).
    HandOff(Box<Request>),
}

/// What an agent's `run` gave (or its panic).
pub(crate) type Ran = Result<Result<String, BoxError>, Box<dyn std::any::Any + Send>>;

/// How one agent's turn ended, as the run sees it.
pub(crate) fn answered(rc: &mut RunContext, ran: Ran) -> Answered {
    let name = &rc.agent_name;
    let answer = match ran {
        Err(panic) => {
            let reason = panic_message(&*panic);
            let error = format!("agent `{name}` panicked: {reason}");
            return Answered::Died(Box::new((error, reason)));
        }
        Ok(_) if rc.is_cancelled() => return Answered::Cancelled,
        Ok(Err(e)) => return Answered::Failed(format!("agent `{name}` failed: {e}")),
        Ok(Ok(answer)) => answer,
    };
    match rc.handoffs.as_mut().and_then(|h| h.pending.take()) {
        None => Answered::Answer(answer),
        Some(Err(e)) => Answered::Failed(e.to_string()),
        Some(Ok(request)) => Answered::HandOff(Box::new(request)),
    }
}

impl Run {
    /// The rest of the run after its first agent asked for a handoff: the handoff, then the
    /// agents until one answers.
    pub(crate) async fn continue_after(
        &self,
        rc: &mut RunContext,
        request: Box<Request>,
    ) -> Answered {
        match self.hand_over(rc, *request).await {
            Ok((next, input)) => self.agents(rc, next, Cow::Owned(input)).await,
            Err(ended) => ended,
        }
    }

    /// The blocking input guardrails, then the agents beside the parallel ones.
    pub(crate) async fn with_input_guards(
        &self,
        rc: &mut RunContext,
        agent: Box<dyn Agent>,
        guards: Arc<Guards>,
    ) -> Answered {
        let message = Checked::Input(&self.input);
        if !guards.input_blocking.is_empty() {
            let input = GuardrailInput {
                context: &rc.tools.context,
                agent: &self.agent_name,
                checked: message,
            };
            let mut scope = Scope {
                context: &rc.tools.context,
                control: &rc.tools.control,
                kit: &rc.tools.kit,
                depth: 0,
                emitter: &mut rc.emitter,
            };
            if let Some(trip) = checks::first_trip(&guards.input_blocking, &input, &mut scope).await
            {
                return Answered::Tripped(Box::new(trip));
            }
            if rc.is_cancelled() {
                return Answered::Cancelled;
            }
        }
        let first = Cow::Borrowed(self.input.as_str());
        if guards.input_parallel.is_empty() {
            return self.agents(rc, agent, first).await;
        }
        // The checks share the run's emitter with the agent (an agent check emits its
        // sub-agent's events while the agent emits its own).
        let mut slot = rc.emitter.share();
        let (context, control, kit) = (
            rc.tools.context.clone(),
            Arc::clone(&rc.tools.control),
            Arc::clone(&rc.tools.kit),
        );
        let raced = {
            let input = GuardrailInput {
                context: &context,
                agent: &self.agent_name,
                checked: message,
            };
            let check = async {
                let mut scope = Scope {
                    context: &context,
                    control: &control,
                    kit: &kit,
                    depth: 0,
                    emitter: &mut slot,
                };
                checks::first_trip(&guards.input_parallel, &input, &mut scope).await
            };
            race(self.agents(rc, agent, first), check).await
        };
        drop(slot);
        rc.emitter.reclaim();
        match raced {
            Raced::Done(answered) => answered,
            Raced::Tripped(trip) => Answered::Tripped(Box::new(trip)),
        }
    }

    /// The agent, then each agent the run is handed off to, until one answers.
    async fn agents(
        &self,
        rc: &mut RunContext,
        mut agent: Box<dyn Agent>,
        mut input: Cow<'_, str>,
    ) -> Answered {
        loop {
            let ran = AssertUnwindSafe(agent.run(rc, &input)).catch_unwind().await;
            match answered(rc, ran) {
                Answered::HandOff(request) => match Box::pin(self.hand_over(rc, *request)).await {
                    Ok((next, next_input)) => {
                        agent = next;
                        input = Cow::Owned(next_input);
                    }
                    Err(ended) => return ended,
                },
                other => return other,
            }
        }
    }

    /// Makes one handoff: closes what the agent left open, retracts what it streamed, emits
    /// `handoff`, and makes the next agent; its input passes the target's filter.
    async fn hand_over(
        &self,
        rc: &mut RunContext,
        request: Request,
    ) -> Result<(Box<dyn Agent>, String), Answered> {
        let from = Arc::clone(&rc.agent_name);
        let to = request.to;
        rc.close_abandoned_calls("the agent handed the run off while this was in progress")
            .await;
        if !rc.shown().is_empty() {
            rc.emit(AgentEvent::AnswerRetracted {
                cause: RetractCause::Handoff,
            })
            .await;
        }
        rc.emit(AgentEvent::Handoff {
            from: Arc::clone(&from),
            to: Arc::clone(&to),
            reason: request.reason,
        })
        .await;
        let registry = &self.engine.kit.registry;
        let input = match registry.handoff_filter(&to) {
            None => request.input,
            Some(filter) => {
                let seen = HandoffInput {
                    context: &rc.tools.context,
                    from: &from,
                    to: &to,
                    message: &self.input,
                    input: &request.input,
                };
                match std::panic::catch_unwind(AssertUnwindSafe(|| filter(&seen))) {
                    Ok(input) => input,
                    Err(panic) => {
                        return Err(Answered::Failed(format!(
                            "the handoff input filter of agent `{to}` panicked: {}",
                            panic_message(&*panic)
                        )))
                    }
                }
            }
        };
        let Some(entry) = registry.agent_entry(&to) else {
            return Err(Answered::Failed(format!("unknown agent `{to}`")));
        };
        let agent = match std::panic::catch_unwind(AssertUnwindSafe(|| (entry.maker)())) {
            Ok(agent) => agent,
            Err(panic) => {
                let reason = format!(
                    "agent `{to}` panicked while being created: {}",
                    panic_message(&*panic)
                );
                return Err(Answered::Died(Box::new((reason.clone(), reason))));
            }
        };
        let state = rc.handoffs.get_or_insert_with(Default::default);
        if state.chain.is_empty() {
            state.chain.push(from);
        }
        state.chain.push(Arc::clone(&entry.name));
        state.made += 1;
        rc.become_agent(entry.name, entry.guards);
        Ok((agent, input))
    }

    /// The answering agent's output guardrails, then its answer streamed to its end.
    pub(crate) async fn answer(&self, rc: &mut RunContext, answer: String) -> RunEnd {
        if rc
            .tools
            .guards
            .as_ref()
            .is_some_and(|g| !g.output.is_empty())
        {
            if let Some(end) = Box::pin(self.check_output(rc, &answer)).await {
                return end;
            }
        }
        match rc.finish_stream(&answer).await {
            Ok(()) => RunEnd::Completed { answer },
            Err(error) => RunEnd::Failed { error },
        }
    }

    /// The output guardrails of the answering agent on `answer`, under the run's
    /// cancellation: the run's end if they end it.
    async fn check_output(&self, rc: &mut RunContext, answer: &str) -> Option<RunEnd> {
        let guards = rc.tools.guards.clone()?;
        if let Err(error) = rc.check_stream(answer) {
            return Some(RunEnd::Failed { error });
        }
        let control = Arc::clone(&rc.tools.control);
        let trip = {
            let agent = Arc::clone(&rc.agent_name);
            let input = GuardrailInput {
                context: &rc.tools.context,
                agent: &agent,
                checked: Checked::Output(answer),
            };
            let mut scope = Scope {
                context: &rc.tools.context,
                control: &rc.tools.control,
                kit: &rc.tools.kit,
                depth: 0,
                emitter: &mut rc.emitter,
            };
            let check = checks::first_trip(&guards.output, &input, &mut scope);
            guarded(check, &control.cancel, None, || std::time::Duration::ZERO).await
        };
        match trip {
            Guarded::Done(Some(trip)) => Some(tripped(rc, trip).await),
            Guarded::Done(None) if !rc.is_cancelled() => None,
            _ => Some(cancelled()),
        }
    }
}

pub(crate) fn cancelled() -> RunEnd {
    RunEnd::Cancelled {
        reason: "run cancelled".into(),
    }
}

/// A trip of an input or output guardrail ends the run: recorded (so nothing of the run goes
/// on), then announced.
pub(crate) async fn tripped(rc: &mut RunContext, trip: Trip) -> RunEnd {
    let end = trip.end();
    let event = trip.event(None);
    rc.tools.control.record_trip(trip);
    rc.emit(event).await;
    end
}

/// How [`race`] ended.
enum Raced<T> {
    Done(T),
    Tripped(Trip),
}

/// Polls the parallel checks and the agents together, the checks first in every round: once a
/// check trips, the agents are never polled again (so no tool call starts after the trip is
/// known) and are dropped with the race. Agents that end first wait for the checks.
async fn race<A, C>(agents: A, checks: C) -> Raced<A::Output>
where
    A: Future,
    C: Future<Output = Option<Trip>>,
{
    let mut agents = pin!(agents);
    let mut checks = pin!(checks);
    let mut passed = false;
    let mut done = None;
    std::future::poll_fn(|cx| {
        if !passed {
            match checks.as_mut().poll(cx) {
                Poll::Ready(Some(trip)) => return Poll::Ready(Raced::Tripped(trip)),
                Poll::Ready(None) => passed = true,
                Poll::Pending => {}
            }
        }
        if done.is_none() {
            if let Poll::Ready(out) = agents.as_mut().poll(cx) {
                done = Some(out);
            }
        }
        match (passed, done.take()) {
            (true, Some(out)) => Poll::Ready(Raced::Done(out)),
            (_, out) => {
                done = out;
                Poll::Pending
            }
        }
    })
    .await
}
