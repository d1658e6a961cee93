//! The wire protocol: JSON text frames.

use std::sync::Arc;

use engine_core::{ApprovalDecision, EventEnvelope, MultitaskPolicy, RunId};
use serde::{Deserialize, Serialize};

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ClientFrame {
    /// Start a run answering `text` in `thread_id`.
    UserMessage {
        /// The conversation thread.
        thread_id: String,
        /// The message.
        text: String,
        /// Echoed back in `run_accepted`, to match the run to the message.
        #[serde(default)]
        client_request_id: Option<String>,
        /// What to do if the thread still has a run in progress: `enqueue` (the default),
        /// `interrupt`, `reject` or `parallel`. Any other value is a `bad_frame`.
        #[serde(default)]
        multitask: Option<MultitaskPolicy>,
        /// Which served agent answers (default `assistant`; the demo also serves `supervisor`).
        #[serde(default)]
        agent: Option<String>,
    },
    /// Run agents one after another as one run (a pipeline), in `thread_id`.
    Pipeline {
        /// The conversation thread.
        thread_id: String,
        /// The first step's input (and the input of steps that take the previous answer when
        /// none completed yet).
        text: String,
        /// The steps, in order.
        steps: Vec<PipelineStepFrame>,
        /// Go on after a failed step (default: stop).
        #[serde(default)]
        continue_on_error: bool,
        /// Echoed back in `run_accepted`.
        #[serde(default)]
        client_request_id: Option<String>,
        /// As for `user_message`.
        #[serde(default)]
        multitask: Option<MultitaskPolicy>,
    },
    /// Answer a tool call of one of the user's runs that waits for approval.
    Approve {
        /// The run.
        run_id: String,
        /// The `call_id` of its `approval_requested` event.
        call_id: u32,
        /// `approve` or `deny`.
        decision: ApprovalDecision,
    },
    /// Cancel one of the user's runs.
    Cancel {
        /// The run.
        run_id: String,
    },
    /// Replay the user's buffered events of `run_id` after `after_seq`.
    Resume {
        /// The run.
        run_id: String,
        /// The last sequence number the client has (0 for all).
        after_seq: u64,
    },
}

/// One step of a `pipeline` frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PipelineStepFrame {
    /// The served agent that runs the step.
    pub agent: String,
    /// The step's input; omitted: the previous step's answer.
    #[serde(default)]
    pub input: Option<String>,
    /// The step's own time limit, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The code of an `error` frame: stable, machine-readable, snake_case on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON of a known type.
    BadFrame,
    /// The frame is larger than `max_frame_bytes`.
    FrameTooLarge,
    /// The user sent more messages per minute than allowed.
    RateLimited,
    /// The user's engine already holds its most runs (running plus queued).
    TooManyRuns,
    /// The thread has a run in progress and the message asked `reject`.
    ThreadBusy,
    /// No active run of this user has that id.
    UnknownRun,
    /// The run has no tool call with that id waiting for approval.
    UnknownApproval,
    /// A field is invalid (an id, an agent, a pipeline).
    BadRequest,
    /// The server is shutting down.
    ShuttingDown,
    /// Something failed inside the gateway.
    Internal,
    /// Cluster mode: Redis (or the node that runs the run) cannot be reached; live events from
    /// other nodes pause and new engines cannot be admitted until it is back.
    ClusterUnavailable,
    /// The user holds the most engines allowed (across every node in cluster mode).
    TooManyEngines,
    /// The run store (the database) cannot be read right now; retry.
    StoreUnavailable,
    /// HTTP API: no valid bearer token (`401`).
    Unauthorized,
    /// HTTP API: the caller has no thread with that id (`404`).
    UnknownThread,
}

impl ErrorCode {
    /// The code as on the wire (also the `reason` label of the limit metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::RateLimited => "rate_limited",
            Self::TooManyRuns => "too_many_runs",
            Self::ThreadBusy => "thread_busy",
            Self::UnknownRun => "unknown_run",
            Self::UnknownApproval => "unknown_approval",
            Self::BadRequest => "bad_request",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::ClusterUnavailable => "cluster_unavailable",
            Self::TooManyEngines => "too_many_engines",
            Self::StoreUnavailable => "store_unavailable",
            Self::Unauthorized => "unauthorized",
            Self::UnknownThread => "unknown_thread",
        }
    }
}

/// A frame to the client.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerFrame {
    /// The authenticated user, sent once after the upgrade.
    Welcome {
        /// The user id from the token.
        user_id: String,
    },
    /// A `user_message` was accepted as a run.
    RunAccepted {
        /// The new run.
        run_id: RunId,
        /// The client's id for the message, if it sent one.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_request_id: Option<String>,
    },
    /// One engine event envelope (user, thread, run, seq, timestamp, event).
    Event {
        /// The envelope.
        #[serde(flatten)]
        envelope: Arc<EventEnvelope>,
    },
    /// Events `from_seq..=to_seq` of `run_id` were evicted from the replay buffer.
    Gap {
        /// The run.
        run_id: RunId,
        /// First missing sequence number.
        from_seq: u64,
        /// Last missing sequence number.
        to_seq: u64,
    },
    /// A request was refused; the connection stays open.
    Error {
        /// Stable machine-readable code.
        code: ErrorCode,
        /// What happened and what to do.
        message: String,
    },
}

impl ServerFrame {
    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"code\":\"internal\",\"message\":\"unserializable frame: {e}\"}}")
        })
    }
}
