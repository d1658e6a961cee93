//! `engine-tests`: the cross-crate suites, and the demo agents, tools and invariant checkers
//! they share with the `golden_path` example.
//!
//! ```
//! use engine_core::UserExecutionContext;
//! use engine_factory::{ExecutionEngineFactory, FactoryConfig};
//! use engine_tests::{check_run, demo_registry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let factory = ExecutionEngineFactory::new(FactoryConfig::default(), demo_registry()).expect("factory");
//! let ctx = UserExecutionContext::new("alice", "thread-1", "run-1")?;
//! let mut events = factory.subscribe(ctx.user_id());
//! let engine = factory.create_for_user(&ctx)?;
//! let outcome = engine.execute(&ctx, "assistant", "what is 6 * 7?").await?;
//! assert!(outcome.result().unwrap().contains("42"));
//! let received: Vec<_> = std::iter::from_fn(|| events.try_recv()).collect();
//! check_run(&received)?;
//! # Ok(())
//! # }
//! ```

mod script;

pub use script::{
    script_registry, script_registry_builder, trips_on, EchoTool, FailTool, Observations,
    PanicTool, ScriptAgent, SlowTool,
};

use std::collections::BTreeMap;

use engine_core::{AgentEvent, EventEnvelope, RequestId};

pub use engine_gateway::demo::{
    demo_registry, demo_registry_builder, Calculator, Clock, DemoAssistant, SaveNote, Specialist,
    Supervisor, TextStats,
};

/// Checks the invariants of ONE run's events, as received by its user, in arrival order:
/// one user, thread and run; sequence numbers contiguous from 1 (no drops expected);
/// timestamps non-decreasing; `agent_started` first; exactly one `agent_completed`, last.
/// Nested form: every event comes from the run's own request or from a sub-agent between its
/// `sub_agent_started` and its one `sub_agent_completed` (started by an agent that is itself
/// open), and every sub-agent ends before the terminal event, after its own tool calls and
/// sub-agents. Every `tool_executing` is paired with one `tool_completed` of the same call id;
/// an `approval_requested` / `approval_decided` sits inside its open call, in that order; and
/// for a completed run that streamed, the `answer_delta`s after the last `answer_retracted`
/// concatenated equal the result. Guardrails and handoffs: a run ends `guardrail_tripped` only
/// after a `guardrail_tripped` that ends the run, and a tool call denied by a guardrail
/// (`deny_call`) is an open call of the run whose `tool_completed` says `guardrail_denied`;
/// a `handoff` comes from the run's own request, names the agent answering until then as
/// `from`, with none of that agent's tool calls open, and the terminal event names the
/// agent that answered last.
///
/// # Errors
/// A description of the first violated invariant.
pub fn check_run(events: &[EventEnvelope]) -> Result<(), String> {
    let first = events.first().ok_or("no events")?;
    let root = &first.request_id;
    // Open tool calls (call id, owner) and open sub-agents (request id, parent).
    let mut calls: Vec<(u32, RequestId)> = Vec::new();
    let mut subs: Vec<(RequestId, RequestId)> = Vec::new();
    let mut asked: Vec<u32> = Vec::new();
    let mut streamed: Option<String> = None;
    let mut answering: Option<std::sync::Arc<str>> = None;
    let mut trip_ends_run = false;
    let mut denied: Vec<u32> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let at = format!("event {i} (seq {}, {})", e.seq, e.event.kind());
        if e.user_id != first.user_id || e.run_id != first.run_id || e.thread_id != first.thread_id
        {
            return Err(format!("{at}: belongs to another user/thread/run"));
        }
        if e.seq != i as u64 + 1 {
            return Err(format!("{at}: expected seq {}", i + 1));
        }
        if i > 0 && e.timestamp_us < events[i - 1].timestamp_us {
            return Err(format!("{at}: timestamp went backwards"));
        }
        let from = &e.request_id;
        if from != root && !subs.iter().any(|(r, _)| r == from) {
            return Err(format!(
                "{at}: emitted by {from}, which is not an open agent of the run"
            ));
        }
        match (&e.event, i) {
            (AgentEvent::AgentStarted { agent_name }, 0) => answering = Some(agent_name.clone()),
            (AgentEvent::AgentStarted { .. }, _) => return Err(format!("{at}: second start")),
            (_, 0) => return Err(format!("{at}: first event is not agent_started")),
            (AgentEvent::AgentCompleted { .. }, n) if n + 1 != events.len() => {
                return Err(format!("{at}: terminal event is not last"))
            }
            (AgentEvent::ToolExecuting { call_id, .. }, _) => {
                if calls.iter().any(|(c, _)| c == call_id) {
                    return Err(format!("{at}: call id {call_id} reused"));
                }
                calls.push((*call_id, from.clone()));
            }
            (
                AgentEvent::ToolCompleted {
                    call_id, status, ..
                },
                _,
            ) => {
                let Some(k) = calls.iter().position(|(c, o)| c == call_id && o == from) else {
                    return Err(format!("{at}: tool_completed without its tool_executing"));
                };
                calls.remove(k);
                if let Some(d) = denied.iter().position(|c| c == call_id) {
                    denied.remove(d);
                    if *status != engine_core::ToolStatus::GuardrailDenied {
                        return Err(format!(
                            "{at}: a call denied by a guardrail ended {status:?}"
                        ));
                    }
                }
            }
            (AgentEvent::AnswerDelta { delta }, _) => {
                streamed.get_or_insert_with(String::new).push_str(delta);
            }
            (AgentEvent::AnswerRetracted { .. }, _) => streamed = None,
            (
                AgentEvent::GuardrailTripped {
                    action, call_id, ..
                },
                _,
            ) => match (action, call_id) {
                (engine_core::TripAction::DenyCall, Some(c)) => {
                    if !calls.iter().any(|(o, _)| o == c) {
                        return Err(format!("{at}: denies call {c}, which is not open"));
                    }
                    denied.push(*c);
                }
                (engine_core::TripAction::DenyCall, None) => {
                    return Err(format!("{at}: denies a call without naming it"))
                }
                (_, Some(c)) => {
                    if !calls.iter().any(|(o, _)| o == c) {
                        return Err(format!("{at}: names call {c}, which is not open"));
                    }
                    denied.push(*c);
                    trip_ends_run = true;
                }
                (_, None) => trip_ends_run = true,
            },
            (AgentEvent::Handoff { from: old, to, .. }, _) => {
                if from != root {
                    return Err(format!("{at}: a handoff from a sub-agent"));
                }
                if answering.as_ref() != Some(old) {
                    return Err(format!(
                        "{at}: hands off from {old}, but {answering:?} was answering"
                    ));
                }
                if calls.iter().any(|(_, o)| o == root) {
                    return Err(format!("{at}: hands off with the agent's tool calls open"));
                }
                answering = Some(to.clone());
            }
            (AgentEvent::ApprovalRequested { call_id, .. }, _) => {
                if !calls.iter().any(|(c, _)| c == call_id) || asked.contains(call_id) {
                    return Err(format!("{at}: approval_requested outside its open call"));
                }
                asked.push(*call_id);
            }
            (AgentEvent::ApprovalDecided { call_id, .. }, _) => {
                let Some(k) = asked.iter().position(|c| c == call_id) else {
                    return Err(format!("{at}: approval_decided without its request"));
                };
                if !calls.iter().any(|(c, _)| c == call_id) {
                    return Err(format!("{at}: approval_decided outside its open call"));
                }
                asked.remove(k);
            }
            (
                AgentEvent::SubAgentStarted {
                    request_id,
                    parent_request_id,
                    ..
                },
                _,
            ) => {
                if parent_request_id != from {
                    return Err(format!(
                        "{at}: started by {from}, names {parent_request_id}"
                    ));
                }
                if request_id == root || subs.iter().any(|(r, _)| r == request_id) {
                    return Err(format!("{at}: sub-agent {request_id} started twice"));
                }
                subs.push((request_id.clone(), from.clone()));
            }
            (AgentEvent::SubAgentCompleted { request_id, .. }, _) => {
                let Some(k) = subs.iter().position(|(r, p)| r == request_id && p == from) else {
                    return Err(format!("{at}: {request_id} completed without being open"));
                };
                if calls.iter().any(|(_, o)| o == request_id) {
                    return Err(format!("{at}: {request_id} ended with tool calls open"));
                }
                if subs.iter().any(|(_, p)| p == request_id) {
                    return Err(format!("{at}: {request_id} ended with sub-agents open"));
                }
                subs.remove(k);
            }
            _ => {}
        }
    }
    if !calls.is_empty() {
        return Err(format!("tool calls {calls:?} never completed"));
    }
    if !subs.is_empty() {
        return Err(format!("sub-agents {subs:?} never completed"));
    }
    if let Some(AgentEvent::AgentCompleted {
        agent_name, status, ..
    }) = events.last().map(|e| &e.event)
    {
        if answering.as_ref() != Some(agent_name) {
            return Err(format!(
                "the terminal event names {agent_name}, but {answering:?} answered"
            ));
        }
        if *status == engine_core::RunStatus::GuardrailTripped && !trip_ends_run {
            return Err("the run ended guardrail_tripped without a guardrail_tripped event".into());
        }
    }
    match events.last().map(|e| &e.event) {
        Some(AgentEvent::AgentCompleted {
            status: engine_core::RunStatus::Completed,
            result,
            ..
        }) => match (&streamed, result) {
            (Some(text), Some(answer)) if text != answer => Err(format!(
                "the deltas add up to {text:?}, the result is {answer:?}"
            )),
            _ => Ok(()),
        },
        Some(AgentEvent::AgentCompleted { .. }) => Ok(()),
        _ => Err("the run has no terminal agent_completed".into()),
    }
}

/// Groups one user's received events by run, keeping arrival order within each run.
pub fn by_run(events: &[EventEnvelope]) -> BTreeMap<engine_core::RunId, Vec<EventEnvelope>> {
    let mut runs: BTreeMap<engine_core::RunId, Vec<EventEnvelope>> = BTreeMap::new();
    for e in events {
        runs.entry(e.run_id.clone()).or_default().push(e.clone());
    }
    runs
}

/// The terminal status of a run's events, if its last event is `agent_completed`.
pub fn terminal_status(events: &[EventEnvelope]) -> Option<engine_core::RunStatus> {
    match events.last().map(|e| &e.event) {
        Some(AgentEvent::AgentCompleted { status, .. }) => Some(*status),
        _ => None,
    }
}

/// Drains everything currently buffered in a subscription.
pub fn drain(sub: &mut engine_factory::Subscription) -> Vec<EventEnvelope> {
    std::iter::from_fn(|| sub.try_recv()).collect()
}

/// The README's Rust examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
