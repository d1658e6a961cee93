//! Running guardrails: each check under its time limit with its panics contained, a failure
//! counted as a trip unless the guardrail fails open, an agent check run as a sub-agent, and
//! the [`Trip`] that the first tripped guardrail makes.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::context::UserExecutionContext;
use crate::error::panic_message;
use crate::event::AgentEvent;
use crate::guardrail::{CheckImpl, Def, GuardrailInput, GuardrailKind, TripAction, Verdict};
use crate::outcome::RunEnd;
use crate::run::control::RunControl;
use crate::run::emit::{millis, within, EmitterSlot};
use crate::run::sub::{self, SubAgentCall, SubAgentError};
use crate::run::RunKit;

/// A guardrail that tripped.
#[derive(Debug, Clone)]
pub(crate) struct Trip {
    pub(crate) guardrail: Arc<str>,
    pub(crate) kind: GuardrailKind,
    pub(crate) reason: String,
    pub(crate) action: TripAction,
}

impl Trip {
    /// Its `guardrail_tripped` event (`call_id` for a tool guardrail).
    pub(crate) fn event(&self, call_id: Option<u32>) -> AgentEvent {
        AgentEvent::GuardrailTripped {
            guardrail: Arc::clone(&self.guardrail),
            kind: self.kind,
            reason: self.reason.clone(),
            action: self.action,
            call_id,
        }
    }

    /// The run's end when this trip ends it.
    pub(crate) fn end(&self) -> RunEnd {
        RunEnd::GuardrailTripped {
            guardrail: self.guardrail.to_string(),
            reason: self.reason.clone(),
            message: format!(
                "{} guardrail `{}` tripped: {}",
                self.kind.as_str(),
                self.guardrail,
                self.reason
            ),
        }
    }
}

/// Where a check runs: the checked agent's context, and what an agent check needs to run as
/// its sub-agent.
pub(crate) struct Scope<'a> {
    pub(crate) context: &'a UserExecutionContext,
    pub(crate) control: &'a Arc<RunControl>,
    pub(crate) kit: &'a Arc<RunKit>,
    pub(crate) depth: u32,
    pub(crate) emitter: &'a mut EmitterSlot,
}

/// Runs `defs` in order on `input`; the first trip, if any. A run cancelled meanwhile stops
/// the checks (no trip: the run ends cancelled).
pub(crate) async fn first_trip(
    defs: &[Arc<Def>],
    input: &GuardrailInput<'_>,
    scope: &mut Scope<'_>,
) -> Option<Trip> {
    for def in defs {
        let base = &def.base;
        let decided: Result<Verdict, String> = match &base.check.0 {
            // Synchronous code: no timer, no allocation (what a trivial guardrail costs).
            CheckImpl::Code(f) => std::panic::catch_unwind(AssertUnwindSafe(|| f(input)))
                .map_err(|p| format!("it panicked: {}", panic_message(&*p))),
            CheckImpl::Async(check) => {
                let fut = AssertUnwindSafe(check.check(input)).catch_unwind();
                match within(base.timeout, fut).await {
                    Ok(Ok(Ok(verdict))) => Ok(verdict),
                    Ok(Ok(Err(e))) => Err(format!("it failed: {e}")),
                    Ok(Err(p)) => Err(format!("it panicked: {}", panic_message(&*p))),
                    Err(_) => Err(format!("it timed out after {} ms", millis(base.timeout))),
                }
            }
            CheckImpl::Agent { agent, decide } => {
                match Box::pin(run_checker(agent, base.timeout, input, scope)).await {
                    Ok(answer) => std::panic::catch_unwind(AssertUnwindSafe(|| decide(&answer)))
                        .map_err(|p| format!("its decision panicked: {}", panic_message(&*p))),
                    Err(SubAgentError::Cancelled { .. }) => return None,
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        if scope.control.cancel.is_set() {
            return None;
        }
        let reason = match decided {
            Ok(Verdict::Pass) => continue,
            Ok(Verdict::Trip { reason }) => reason,
            Err(why) if base.fail_open => {
                tracing::warn!(guardrail = %base.name, %why, "guardrail failed; it fails open, so the run goes on");
                continue;
            }
            Err(why) => {
                tracing::warn!(guardrail = %base.name, %why, "guardrail failed; failing closed");
                format!("the guardrail failed ({why}), so it failed closed")
            }
        };
        return Some(Trip {
            guardrail: Arc::clone(&base.name),
            kind: def.kind(),
            reason,
            action: def.action(),
        });
    }
    None
}

/// Runs the agent `agent` as a sub-agent of the checked agent on the checked text.
async fn run_checker(
    agent: &str,
    timeout: std::time::Duration,
    input: &GuardrailInput<'_>,
    scope: &mut Scope<'_>,
) -> Result<String, SubAgentError> {
    let parent = sub::Parent {
        context: scope.context.clone(),
        depth: scope.depth,
        control: Arc::clone(scope.control),
        kit: Arc::clone(scope.kit),
    };
    let call = SubAgentCall::new(agent, input.checked.text().into_owned()).timeout(timeout);
    let mut results = sub::run_all(&parent, scope.emitter, vec![call], 1).await;
    scope.emitter.reclaim();
    results.pop().unwrap_or(Err(SubAgentError::Cancelled {
        agent: agent.to_owned(),
    }))
}
