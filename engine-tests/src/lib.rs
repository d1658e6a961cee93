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

pub mod bench;
mod script;

pub use script::{
    script_registry, script_registry_builder, EchoTool, FailTool, Observations, PanicTool,
    ScriptAgent, SlowTool,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use engine_core::{AgentEvent, EventEnvelope};

pub use engine_gateway::demo::{
    demo_registry, demo_registry_builder, Calculator, Clock, DemoAssistant, SaveNote, TextStats,
};

/// Checks the invariants of ONE run's events, as received by its user, in arrival order:
/// one user, thread and run; sequence numbers contiguous from 1 (no drops expected);
/// timestamps non-decreasing; `agent_started` first; exactly one `agent_completed`, last;
/// every `tool_executing` paired with a `tool_completed` of the same call id; an
/// `approval_requested` / `approval_decided` only inside its call, in that order; and for a
/// completed run that streamed, the `answer_delta`s concatenated equal the result.
///
/// # Errors
/// A description of the first violated invariant.
pub fn check_run(events: &[Arc<EventEnvelope>]) -> Result<(), String> {
    let first = events.first().ok_or("no events")?;
    let mut open_calls = Vec::new();
    let mut asked: Vec<u32> = Vec::new();
    let mut streamed: Option<String> = None;
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
        match (&e.event, i) {
            (AgentEvent::AgentStarted { .. }, 0) => {}
            (AgentEvent::AgentStarted { .. }, _) => return Err(format!("{at}: second start")),
            (_, 0) => return Err(format!("{at}: first event is not agent_started")),
            (AgentEvent::AgentCompleted { .. }, n) if n + 1 != events.len() => {
                return Err(format!("{at}: terminal event is not last"))
            }
            (AgentEvent::ToolExecuting { call_id, .. }, _) => open_calls.push(*call_id),
            (AgentEvent::AnswerDelta { delta }, _) => {
                streamed.get_or_insert_with(String::new).push_str(delta);
            }
            (AgentEvent::ApprovalRequested { call_id, .. }, _) => {
                if open_calls.last() != Some(call_id) || asked.contains(call_id) {
                    return Err(format!("{at}: approval_requested outside its open call"));
                }
                asked.push(*call_id);
            }
            (AgentEvent::ApprovalDecided { call_id, .. }, _) => {
                if open_calls.last() != Some(call_id) || asked.last() != Some(call_id) {
                    return Err(format!("{at}: approval_decided without its request"));
                }
                asked.pop();
            }
            (AgentEvent::ToolCompleted { call_id, .. }, _)
                if open_calls.pop() != Some(*call_id) =>
            {
                return Err(format!("{at}: tool_completed without its tool_executing"));
            }
            _ => {}
        }
    }
    if !open_calls.is_empty() {
        return Err(format!("tool calls {open_calls:?} never completed"));
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
pub fn by_run(
    events: &[Arc<EventEnvelope>],
) -> BTreeMap<engine_core::RunId, Vec<Arc<EventEnvelope>>> {
    let mut runs: BTreeMap<engine_core::RunId, Vec<Arc<EventEnvelope>>> = BTreeMap::new();
    for e in events {
        runs.entry(e.run_id.clone())
            .or_default()
            .push(Arc::clone(e));
    }
    runs
}

/// The terminal status of a run's events, if its last event is `agent_completed`.
pub fn terminal_status(events: &[Arc<EventEnvelope>]) -> Option<engine_core::RunStatus> {
    match events.last().map(|e| &e.event) {
        Some(AgentEvent::AgentCompleted { status, .. }) => Some(*status),
        _ => None,
    }
}

/// Drains everything currently buffered in a subscription.
pub fn drain(sub: &mut engine_factory::Subscription) -> Vec<Arc<EventEnvelope>> {
    std::iter::from_fn(|| sub.try_recv()).collect()
}
