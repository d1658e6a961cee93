//! Handoffs: the run's top-level agent ends its turn and another registered agent takes the
//! run over ([`RunContext::handoff`](crate::RunContext::handoff)), as opposed to a sub-agent,
//! which reports back to its caller. Which agent may hand off to which is declared in the
//! registry ([`AgentRegistryBuilder::handoffs`](crate::AgentRegistryBuilder::handoffs)),
//! with an optional input filter per target and a limit per run.

use crate::context::UserExecutionContext;

/// Default [`max_handoffs`](crate::AgentRegistryBuilder::max_handoffs) per run.
pub const DEFAULT_MAX_HANDOFFS: u32 = 8;

/// A handoff an agent asks for: the target, what it is given, and why (shown to the user in the
/// `handoff` event).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "pass it to RunContext::handoff_with"]
pub struct Handoff {
    pub(crate) to: String,
    pub(crate) input: String,
    pub(crate) reason: Option<String>,
}

impl Handoff {
    /// Hands the run to `agent`, which runs on `input` (after the target's input filter).
    pub fn to(agent: impl Into<String>, input: impl Into<String>) -> Self {
        Self {
            to: agent.into(),
            input: input.into(),
            reason: None,
        }
    }
    /// Says why (the `handoff` event's `reason`).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    /// The target agent.
    pub fn target(&self) -> &str {
        &self.to
    }
}

/// What a target's input filter sees (see
/// [`AgentRegistryBuilder::handoff_filter`](crate::AgentRegistryBuilder::handoff_filter)):
/// it returns the input the target runs on.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct HandoffInput<'a> {
    /// The run's context.
    pub context: &'a UserExecutionContext,
    /// The agent handing off.
    pub from: &'a str,
    /// The target.
    pub to: &'a str,
    /// The user's message that started the run.
    pub message: &'a str,
    /// The input the agent handing off gave.
    pub input: &'a str,
}

/// A handoff that cannot happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// The registry does not let this agent hand off to that one.
    #[error("agent `{from}` may not hand off to `{to}` (allowed: {allowed}); declare it with AgentRegistryBuilder::handoffs")]
    NotAllowed {
        /// The agent handing off.
        from: String,
        /// The requested target.
        to: String,
        /// Its allowed targets, comma separated.
        allowed: String,
    },
    /// The run already handed off `limit` times: the agents are probably handing the run
    /// back and forth. The run ends `failed` with this error, whatever the agent returns.
    #[error("the run reached its limit of {limit} handoffs ({chain}); the agents may be handing the run back and forth: raise AgentRegistryBuilder::max_handoffs or change the agents")]
    LimitReached {
        /// The limit.
        limit: u32,
        /// The agents in order, `a -> b -> a`.
        chain: String,
    },
    /// Only the run's top-level agent can hand the run off; a sub-agent reports back to its
    /// caller.
    #[error("sub-agent `{agent}` cannot hand off: only the run's top-level agent can; return an answer to the caller instead")]
    NotTopLevel {
        /// The sub-agent.
        agent: String,
    },
    /// The agent already asked for a handoff in this turn.
    #[error(
        "agent `{agent}` already asked to hand off to `{to}`; return from run() to let it happen"
    )]
    AlreadyRequested {
        /// The agent.
        agent: String,
        /// The target it asked for first.
        to: String,
    },
}
