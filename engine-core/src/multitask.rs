//! Per-request run options: what happens when a user writes again on a thread whose answer has
//! not ended yet ([`MultitaskPolicy`], "double-texting"), and the user's answer to a tool call
//! that waits for approval ([`ApprovalDecision`]).

use serde::{Deserialize, Serialize};

/// What a new run does when its thread already has live (queued or running) runs of the same
/// engine. Runs on other threads are never affected.
///
/// ```
/// use engine_core::{MultitaskPolicy, RunOptions};
///
/// let options = RunOptions::new().multitask(MultitaskPolicy::Interrupt);
/// assert_eq!(options.multitask_policy(), Some(MultitaskPolicy::Interrupt));
/// assert_eq!("enqueue".parse::<MultitaskPolicy>(), Ok(MultitaskPolicy::Enqueue));
/// assert!("later".parse::<MultitaskPolicy>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MultitaskPolicy {
    /// Refuse the new run with [`EngineError::ThreadBusy`](crate::EngineError::ThreadBusy)
    /// (nothing is emitted) while the thread has a live run.
    Reject,
    /// Start the new run only after the thread's earlier runs have ended, in submission order:
    /// its `agent_started` follows their terminal events. The default.
    #[default]
    Enqueue,
    /// Cancel the thread's live runs; their terminal events (`cancelled`) are delivered before
    /// the new run's `agent_started`.
    Interrupt,
    /// Run side by side with the thread's other runs, under the engine's concurrency limit
    /// (answers of one thread may interleave).
    Parallel,
}

impl MultitaskPolicy {
    /// Every policy, for listing in messages.
    pub const ALL: [Self; 4] = [Self::Reject, Self::Enqueue, Self::Interrupt, Self::Parallel];

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Enqueue => "enqueue",
            Self::Interrupt => "interrupt",
            Self::Parallel => "parallel",
        }
    }
}

/// An unknown multitask policy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown multitask policy `{0}`; expected one of reject, enqueue, interrupt, parallel")]
pub struct UnknownPolicy(pub String);

impl std::str::FromStr for MultitaskPolicy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// Options of one run, for [`UserExecutionEngine::spawn_with`](crate::UserExecutionEngine::spawn_with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct RunOptions {
    multitask: Option<MultitaskPolicy>,
}

impl RunOptions {
    /// The defaults: the engine's [`EngineConfig::multitask`](crate::EngineConfig::multitask).
    pub fn new() -> Self {
        Self::default()
    }
    /// Chooses the double-texting policy for this run.
    pub fn multitask(mut self, policy: MultitaskPolicy) -> Self {
        self.multitask = Some(policy);
        self
    }
    /// The policy chosen for this run, if any (else the engine's default applies).
    pub fn multitask_policy(&self) -> Option<MultitaskPolicy> {
        self.multitask
    }
}

/// The user's answer to a tool call waiting for approval, given to
/// [`UserExecutionEngine::approve`](crate::UserExecutionEngine::approve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApprovalDecision {
    /// Run the tool.
    Approve,
    /// Do not run it: the agent gets [`ToolError::Denied`](crate::ToolError::Denied).
    Deny,
}
