//! Lifecycle events, their per-run envelope, and payload hygiene (redaction and truncation).
//!
//! Every event a run emits is wrapped in an [`EventEnvelope`] that carries the user, thread and
//! run ids, a per-run sequence number starting at 1 and a timestamp that never goes backwards
//! within the run. Serialized to JSON, an envelope looks like:
//!
//! ```json
//! {"user_id":"alice","thread_id":"t1","run_id":"r1","request_id":"req_5f0c...","seq":1,
//!  "timestamp_us":1764093935000000,"event":{"type":"agent_started","agent_name":"assistant"}}
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::guardrail::{GuardrailKind, TripAction};
use crate::ids::{RequestId, RunId, ThreadId, UserId};

/// How a run ended. Carried by the single terminal [`AgentEvent::AgentCompleted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStatus {
    /// The agent returned an answer.
    Completed,
    /// The agent returned an error or panicked.
    Failed,
    /// The run exceeded the engine's run timeout.
    TimedOut,
    /// The run was cancelled (by id, by engine shutdown, or while queued).
    Cancelled,
    /// A guardrail tripped and ended the run (announced by its `guardrail_tripped` event,
    /// which names the guardrail and the reason).
    GuardrailTripped,
    /// The server stopped while this run was in progress (a crash, `kill -9`, a lost node).
    /// Never produced by an engine: a durable run store writes it, once, for a run whose
    /// process died without ending it.
    Interrupted,
}

impl RunStatus {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::GuardrailTripped => "guardrail_tripped",
            Self::Interrupted => "interrupted",
        }
    }
}

/// How one tool call ended. Carried by [`AgentEvent::ToolCompleted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolStatus {
    /// The tool returned a value.
    Success,
    /// The tool returned an error, panicked, or does not exist.
    Error,
    /// The tool exceeded the tool timeout.
    Timeout,
    /// The permission policy denied the call; the tool did not run.
    PermissionDenied,
    /// The run was cancelled while the tool ran.
    Cancelled,
    /// The tool needed the user's approval and the user denied it; the tool did not run.
    Denied,
    /// A tool guardrail tripped: on the arguments (the tool did not run) or on the result
    /// (the agent does not see it). A `guardrail_tripped` event precedes this one.
    GuardrailDenied,
}

/// Why streamed answer text was taken back. Carried by [`AgentEvent::AnswerRetracted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetractCause {
    /// A guardrail tripped after text was streamed (its `guardrail_tripped` came just before).
    GuardrailTripped,
    /// The agent that streamed it handed the run off; the new agent answers.
    Handoff,
}

/// How a wait for the user's approval ended. Carried by [`AgentEvent::ApprovalDecided`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApprovalOutcome {
    /// The user approved: the tool runs.
    Approved,
    /// The user denied: the tool does not run.
    Denied,
    /// Nobody answered within the approval timeout: the tool does not run.
    TimedOut,
}

/// One lifecycle event. Serialized with a `type` tag in snake_case
/// (`agent_started`, `agent_thinking`, `answer_delta`, `answer_retracted`, `tool_executing`,
/// `approval_requested`, `approval_decided`, `tool_completed`, `guardrail_tripped`, `handoff`,
/// `sub_agent_started`, `sub_agent_completed`, `progress_update`, `agent_death`,
/// `agent_completed`, `agent_error`).
///
/// Which agent of the run emitted an event is the envelope's
/// [`request_id`](EventEnvelope::request_id): the run's own request for the top-level agent, the
/// sub-agent's request (announced by its `sub_agent_started`) for a sub-agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentEvent {
    /// The run was accepted; always the first event of a run (sequence number 1).
    AgentStarted {
        /// The agent that runs.
        agent_name: Arc<str>,
    },
    /// The agent reports progress in words (also used for the "queued" notice).
    AgentThinking {
        /// What the agent is doing.
        reasoning: Cow<'static, str>,
    },
    /// A piece of the answer, as the agent produces it. For a run that ends `completed`, the
    /// deltas after its last `answer_retracted` (all of them if none), concatenated in
    /// sequence order, equal the final result, or there are none at all (an agent that never
    /// streams answers only in the terminal event).
    AnswerDelta {
        /// The next piece of the answer text.
        delta: String,
    },
    /// Every `answer_delta` of the run so far is taken back: clients remove that text.
    AnswerRetracted {
        /// Why.
        cause: RetractCause,
    },
    /// A guardrail tripped. For a trip that ends the run, the terminal `agent_completed`
    /// (status `guardrail_tripped`) follows, after whatever was open is closed; for a
    /// tool call denied alone (`action` `deny_call`) the call's `tool_completed` (status
    /// `guardrail_denied`) follows and the run goes on.
    GuardrailTripped {
        /// The guardrail's registered name.
        guardrail: Arc<str>,
        /// Its kind.
        kind: GuardrailKind,
        /// Why it tripped (its own words, or why it failed closed).
        reason: String,
        /// What the trip does.
        action: TripAction,
        /// The tool call checked, for a tool guardrail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<u32>,
    },
    /// The run's top-level agent handed the run off: `to` now answers (its events carry the
    /// run's own request id, as the first agent's did).
    Handoff {
        /// The agent that handed off.
        from: Arc<str>,
        /// The agent that takes over.
        to: Arc<str>,
        /// Why, if the agent said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A tool call starts. Arguments are redacted and truncated.
    ToolExecuting {
        /// The tool.
        tool_name: Arc<str>,
        /// Call number within the run, starting at 1; pairs this event with its completion.
        call_id: u32,
        /// The (sanitized) arguments.
        arguments: Value,
    },
    /// A tool call (announced by its `tool_executing`) waits for the user to approve or deny
    /// it through the engine (`UserExecutionEngine::approve`).
    ApprovalRequested {
        /// The tool.
        tool_name: Arc<str>,
        /// The call number of the matching `tool_executing`; the user answers for this id.
        call_id: u32,
        /// The (sanitized) arguments, as in `tool_executing`.
        arguments: Value,
    },
    /// The wait for approval of a call ended (then its `tool_completed` follows).
    ApprovalDecided {
        /// The call number.
        call_id: u32,
        /// How it ended.
        outcome: ApprovalOutcome,
    },
    /// A tool call ended, whatever happened.
    ToolCompleted {
        /// The tool.
        tool_name: Arc<str>,
        /// The call number of the matching `tool_executing`.
        call_id: u32,
        /// How it ended.
        status: ToolStatus,
        /// The (sanitized) result, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        /// The error, otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Wall time of the call.
        duration_ms: u64,
    },
    /// The terminal event: exactly one ends every run.
    AgentCompleted {
        /// The agent that answered: the run's agent, or the last one it was handed off to.
        agent_name: Arc<str>,
        /// How the run ended.
        status: RunStatus,
        /// `true` only for [`RunStatus::Completed`].
        success: bool,
        /// The agent's answer (not truncated: it is what the user asked for).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        /// The error, for any status but `completed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Wall time from acceptance to end, queue time included.
        duration_ms: u64,
    },
    /// A sub-agent starts inside the run (emitted by its parent agent): its events carry
    /// `request_id` in their envelope, until its `sub_agent_completed`.
    SubAgentStarted {
        /// The sub-agent.
        agent_name: Arc<str>,
        /// The sub-agent's request (a child of the parent's).
        request_id: RequestId,
        /// The request of the agent that started it.
        parent_request_id: RequestId,
        /// Nesting depth: 1 for a sub-agent of the top-level agent.
        depth: u32,
    },
    /// A sub-agent ended, whatever happened (exactly one per `sub_agent_started`, before the
    /// run's terminal event).
    SubAgentCompleted {
        /// The sub-agent.
        agent_name: Arc<str>,
        /// Its request.
        request_id: RequestId,
        /// How it ended.
        status: RunStatus,
        /// Its answer, for `completed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        /// The error, otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Wall time of the sub-agent.
        duration_ms: u64,
    },
    /// A pipeline run starts its next step.
    ProgressUpdate {
        /// The step, from 1.
        step: u32,
        /// The number of steps.
        of: u32,
        /// The step's agent.
        agent_name: Arc<str>,
    },
    /// An agent died: it panicked (or was created by a constructor that panicked), as opposed to
    /// returning an error. Then its normal ending follows (`sub_agent_completed` or the run's
    /// `agent_completed`, status `failed`).
    AgentDeath {
        /// The agent.
        agent_name: Arc<str>,
        /// The request of the agent that died.
        request_id: RequestId,
        /// The panic message.
        reason: String,
    },
    /// An error inside the run (agent error or timeout), reported before the terminal
    /// `agent_completed`.
    AgentError {
        /// What went wrong.
        message: String,
    },
}

impl AgentEvent {
    /// The snake_case event kind, as in the JSON `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AgentStarted { .. } => "agent_started",
            Self::AgentThinking { .. } => "agent_thinking",
            Self::AnswerDelta { .. } => "answer_delta",
            Self::AnswerRetracted { .. } => "answer_retracted",
            Self::GuardrailTripped { .. } => "guardrail_tripped",
            Self::Handoff { .. } => "handoff",
            Self::ApprovalRequested { .. } => "approval_requested",
            Self::ApprovalDecided { .. } => "approval_decided",
            Self::SubAgentStarted { .. } => "sub_agent_started",
            Self::SubAgentCompleted { .. } => "sub_agent_completed",
            Self::ProgressUpdate { .. } => "progress_update",
            Self::AgentDeath { .. } => "agent_death",
            Self::ToolExecuting { .. } => "tool_executing",
            Self::ToolCompleted { .. } => "tool_completed",
            Self::AgentCompleted { .. } => "agent_completed",
            Self::AgentError { .. } => "agent_error",
        }
    }

    /// Whether this is the run's terminal event.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::AgentCompleted { .. })
    }
}

/// An event with its routing and ordering data. Built only by the engine, from the run's own
/// context: a run cannot stamp another user's id on its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// The user the event belongs to; the only user who may receive it.
    pub user_id: UserId,
    /// The thread of the run.
    pub thread_id: ThreadId,
    /// The run.
    pub run_id: RunId,
    /// The request of the agent that emitted the event: the run's own request for the
    /// top-level agent, a sub-agent's request for its events.
    pub request_id: RequestId,
    /// 1 for the first event of a run, +1 for each next one; a consumer that sees a jump knows
    /// events were dropped.
    pub seq: u64,
    /// Microseconds since the Unix epoch; never decreases within a run.
    pub timestamp_us: u64,
    /// The event itself.
    pub event: AgentEvent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_serialize_with_snake_case_names() {
        let env = EventEnvelope {
            user_id: UserId::new("alice").unwrap(),
            thread_id: ThreadId::new("t1").unwrap(),
            run_id: RunId::new("r1").unwrap(),
            request_id: RequestId::new("q1").unwrap(),
            seq: 1,
            timestamp_us: 5,
            event: AgentEvent::AgentCompleted {
                agent_name: "a".into(),
                status: RunStatus::TimedOut,
                success: false,
                result: None,
                error: Some("slow".into()),
                duration_ms: 3,
            },
        };
        let v = serde_json::to_value(&env).unwrap();
        assert_eq!(v["user_id"], "alice");
        assert_eq!(v["event"]["type"], "agent_completed");
        assert_eq!(v["event"]["status"], "timed_out");
        assert!(v["event"].get("result").is_none());
        let back: EventEnvelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, env);
        let kinds = [
            AgentEvent::AgentStarted {
                agent_name: "a".into(),
            },
            AgentEvent::AgentThinking {
                reasoning: "r".into(),
            },
            AgentEvent::ToolExecuting {
                tool_name: "t".into(),
                call_id: 1,
                arguments: json!({}),
            },
            AgentEvent::ToolCompleted {
                tool_name: "t".into(),
                call_id: 1,
                status: ToolStatus::PermissionDenied,
                result: None,
                error: None,
                duration_ms: 0,
            },
            AgentEvent::AgentError {
                message: "m".into(),
            },
            AgentEvent::AnswerDelta { delta: "d".into() },
            AgentEvent::ApprovalRequested {
                tool_name: "t".into(),
                call_id: 2,
                arguments: json!({}),
            },
            AgentEvent::ApprovalDecided {
                call_id: 2,
                outcome: ApprovalOutcome::TimedOut,
            },
        ];
        for k in kinds {
            let v = serde_json::to_value(&k).unwrap();
            assert_eq!(v["type"], k.kind());
            assert!(!k.is_terminal());
        }
        let v = serde_json::to_value(ToolStatus::PermissionDenied).unwrap();
        assert_eq!(v, "permission_denied");
    }
}
