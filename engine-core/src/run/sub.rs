//! Sub-agents: another registered agent run inside a run, with a child context, sharing the
//! run's emitter (one sequence), cancellation, deadline, tools and approvals; several at once
//! for a supervisor's fan-out.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::context::UserExecutionContext;
use crate::error::{panic_message, ContextError};
use crate::event::{AgentEvent, RunStatus, ToolStatus};
use crate::outcome::RunEnd;
use crate::registry::AgentMaker;
use crate::run::control::{OpenItem, RunControl};
use crate::run::emit::{millis, EmitterSlot};
use crate::run::guard::{guarded, Guarded};
use crate::run::{RunContext, RunKit};

/// One sub-agent to run: which agent, on what input, and optionally a time limit of its own
/// (inside the run's deadline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAgentCall {
    agent: String,
    input: String,
    timeout: Option<Duration>,
}

impl SubAgentCall {
    /// Runs the registered agent `agent` on `input`.
    pub fn new(agent: impl Into<String>, input: impl Into<String>) -> Self {
        Self {
            agent: agent.into(),
            input: input.into(),
            timeout: None,
        }
    }
    /// Ends the sub-agent with [`SubAgentError::TimedOut`] after `limit` (the run's own timeout
    /// still applies to the whole run).
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
    /// The agent's name.
    pub fn agent(&self) -> &str {
        &self.agent
    }
}

/// Why a sub-agent gave no answer. Each case is also visible to the user as the sub-agent's
/// `sub_agent_completed` status (and `agent_death` for [`Died`](Self::Died)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubAgentError {
    /// No agent of this name is registered.
    #[error("unknown agent `{agent}`; register it in the AgentRegistry")]
    UnknownAgent {
        /// The requested name.
        agent: String,
    },
    /// The child context would exceed the operation depth limit.
    #[error("cannot start sub-agent `{agent}`: {source}")]
    TooDeep {
        /// The requested agent.
        agent: String,
        /// The context's refusal.
        #[source]
        source: ContextError,
    },
    /// The sub-agent returned an error.
    #[error("sub-agent `{agent}` failed: {error}")]
    Failed {
        /// The agent.
        agent: String,
        /// Its error.
        error: String,
    },
    /// The sub-agent panicked (`agent_death` was emitted).
    #[error("sub-agent `{agent}` died: {reason}")]
    Died {
        /// The agent.
        agent: String,
        /// The panic message.
        reason: String,
    },
    /// The sub-agent's own time limit passed.
    #[error("sub-agent `{agent}` timed out after {after_ms} ms")]
    TimedOut {
        /// The agent.
        agent: String,
        /// The limit, in milliseconds.
        after_ms: u64,
    },
    /// The run was cancelled while the sub-agent ran.
    #[error("sub-agent `{agent}` was cancelled with its run")]
    Cancelled {
        /// The agent.
        agent: String,
    },
}

impl SubAgentError {
    /// The [`RunEnd`] a pipeline step records for this error.
    pub(crate) fn to_end(&self) -> RunEnd {
        match self {
            Self::TimedOut { .. } => RunEnd::TimedOut {
                error: self.to_string(),
            },
            Self::Cancelled { .. } => RunEnd::Cancelled {
                reason: self.to_string(),
            },
            _ => RunEnd::Failed {
                error: self.to_string(),
            },
        }
    }
}

/// The agent that starts sub-agents.
pub(crate) struct Parent {
    pub(crate) context: UserExecutionContext,
    pub(crate) depth: u32,
    pub(crate) control: Arc<RunControl>,
    pub(crate) kit: Arc<RunKit>,
}

/// Runs `calls`, at most `limit` at once, results in call order.
pub(crate) async fn run_all(
    parent: &Parent,
    emitter: &mut EmitterSlot,
    calls: Vec<SubAgentCall>,
    limit: usize,
) -> Vec<Result<String, SubAgentError>> {
    futures_util::stream::iter(calls)
        .map(|call| run_one(parent, emitter.share(), call))
        .buffered(limit)
        .collect()
        .await
}

/// One sub-agent, from `sub_agent_started` to `sub_agent_completed`.
async fn run_one(
    parent: &Parent,
    mut emitter: EmitterSlot,
    call: SubAgentCall,
) -> Result<String, SubAgentError> {
    let agent = call.agent.clone();
    let Some(entry) = parent.kit.registry.agent_entry(&call.agent) else {
        return Err(SubAgentError::UnknownAgent { agent });
    };
    let (agent_name, make) = (entry.name, entry.maker);
    let child = match parent.context.child(call.agent.as_str()) {
        Ok(c) => c,
        Err(source) => return Err(SubAgentError::TooDeep { agent, source }),
    };
    let me = parent.context.request_id();
    let mut slot = emitter.share();
    let started = Instant::now();
    parent.control.opened(
        me,
        OpenItem::SubAgent {
            agent_name: Arc::clone(&agent_name),
            request_id: child.request_id().clone(),
        },
    );
    slot.emit(
        me,
        AgentEvent::SubAgentStarted {
            agent_name: Arc::clone(&agent_name),
            request_id: child.request_id().clone(),
            parent_request_id: me.clone(),
            depth: parent.depth + 1,
        },
    )
    .await;
    let child_id = child.request_id().clone();
    let mut rc = RunContext::for_agent(
        Arc::clone(&agent_name),
        child,
        emitter,
        Arc::clone(&parent.control),
        Arc::clone(&parent.kit),
        parent.depth + 1,
        entry.guards,
    );
    let result = run_agent_in(&mut rc, &make, &call).await;
    // A sub-agent cut short (timeout, death, cancellation) may leave its own tool calls and
    // sub-agents open: close them (nothing is open after a normal return).
    let (tool, run, why) = match &result {
        Err(SubAgentError::TimedOut { .. }) => (
            ToolStatus::Timeout,
            RunStatus::TimedOut,
            "the sub-agent timed out while this was in progress",
        ),
        Err(SubAgentError::Died { .. }) => (
            ToolStatus::Cancelled,
            RunStatus::Failed,
            "the sub-agent died while this was in progress",
        ),
        _ => (
            ToolStatus::Cancelled,
            RunStatus::Cancelled,
            "the run was cancelled while this was in progress",
        ),
    };
    rc.close_open(Some(&child_id), tool, run, why).await;
    if let Err(SubAgentError::Died { reason, .. }) = &result {
        slot.emit(
            &child_id,
            AgentEvent::AgentDeath {
                agent_name: Arc::clone(&agent_name),
                request_id: child_id.clone(),
                reason: reason.clone(),
            },
        )
        .await;
    }
    drop(rc);
    if let Some(open) = parent.control.closed_sub_agent(&child_id) {
        let end = match &result {
            Ok(answer) => RunEnd::Completed {
                answer: answer.clone(),
            },
            Err(e) => e.to_end(),
        };
        slot.emit(
            &open.owner,
            AgentEvent::SubAgentCompleted {
                agent_name,
                request_id: child_id,
                status: end.status(),
                result: end.answer().map(str::to_owned),
                error: end.error().map(str::to_owned),
                duration_ms: millis(started.elapsed()),
            },
        )
        .await;
    }
    result
}

/// Creates and runs the agent in `rc`, containing panics and the call's time limit.
async fn run_agent_in(
    rc: &mut RunContext,
    make: &AgentMaker,
    call: &SubAgentCall,
) -> Result<String, SubAgentError> {
    let agent = call.agent.clone();
    let mut instance = match std::panic::catch_unwind(AssertUnwindSafe(|| make())) {
        Ok(a) => a,
        Err(panic) => {
            return Err(SubAgentError::Died {
                agent,
                reason: format!("panicked while being created: {}", panic_message(&*panic)),
            })
        }
    };
    let control = Arc::clone(&rc.tools.control);
    let run = AssertUnwindSafe(instance.run(rc, &call.input)).catch_unwind();
    match guarded(run, &control.cancel, call.timeout, || Duration::ZERO).await {
        Guarded::Cancelled => Err(SubAgentError::Cancelled { agent }),
        Guarded::TimedOut => Err(SubAgentError::TimedOut {
            agent,
            after_ms: call.timeout.map_or(0, millis),
        }),
        Guarded::Done(Err(panic)) => Err(SubAgentError::Died {
            agent,
            reason: panic_message(&*panic),
        }),
        Guarded::Done(Ok(_)) if control.cancel.is_set() => Err(SubAgentError::Cancelled { agent }),
        Guarded::Done(Ok(Err(e))) => Err(SubAgentError::Failed {
            agent,
            error: e.to_string(),
        }),
        Guarded::Done(Ok(Ok(answer))) => Ok(answer),
    }
}
