//! [`LlmError`]: every way a model turn can fail, each with what to do about it.

use std::time::Duration;

/// Why a model run failed. The run still ends with the engine's terminal event, carrying this
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// 401 or 403: the key is missing, wrong or lacks access.
    #[error("the model server at {url} refused the request ({status}): {message}; check the API key (LLM_API_KEY) and that it may use model `{model}`")]
    Unauthorized {
        /// The completions URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The server's message.
        message: String,
        /// The model asked for.
        model: String,
    },
    /// 429 on every attempt.
    #[error("the model server kept answering 429 (rate limited) after {attempts} attempts: {message}; retry later or raise the rate limit")]
    RateLimited {
        /// Attempts made.
        attempts: u32,
        /// The server's last message.
        message: String,
    },
    /// 5xx on every attempt.
    #[error("the model server failed with {status} after {attempts} attempts: {message}")]
    ServerError {
        /// The last status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The server's last message.
        message: String,
    },
    /// Any other refusal (400, 404, ...): not retried.
    #[error("the model server answered {status}: {message}")]
    Rejected {
        /// The status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server took the request but sent no response headers within the header timeout,
    /// on every attempt.
    #[error("the model server at {url} sent no response headers within {} on {attempts} attempts", humantime(*.within))]
    NoHeaders {
        /// The completions URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The header timeout.
        within: Duration,
    },
    /// One event of the stream grew past the size limit (a server that never ends an event).
    #[error("the model's stream sent an event larger than {limit} bytes (max_event_bytes)")]
    EventTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The server could not be reached.
    #[error("cannot reach the model server at {url} after {attempts} attempts: {cause}")]
    Unreachable {
        /// The completions URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// What the client reported.
        cause: String,
    },
    /// The stream sent nothing for longer than the idle timeout.
    #[error("the model's stream stalled: nothing for {}", humantime(*.idle))]
    Stalled {
        /// The idle timeout.
        idle: Duration,
    },
    /// The stream broke off or sent something that is not a chunk.
    #[error("the model's stream broke: {0}")]
    Stream(String),
    /// The model kept calling tools.
    #[error("the model was still calling tools after {rounds} rounds (max_tool_rounds); ask for less or raise the limit")]
    TooManyToolRounds {
        /// The limit.
        rounds: u32,
    },
    /// The run was cancelled while the model was answering (the request was aborted).
    #[error("cancelled while the model was answering")]
    Cancelled,
}

impl LlmError {
    /// What the user is told (the run's terminal event and `agent_error`): short and stable,
    /// with no URL, key, upstream text or cause chain; those are in the `Display` text, which
    /// goes to the operator's log.
    pub fn user_message(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => {
                "the model server refused the gateway's credentials; the operator has to fix them"
            }
            Self::RateLimited { .. } => {
                "the model server is busy (rate limited); try again in a minute"
            }
            Self::ServerError { .. } | Self::Unreachable { .. } | Self::NoHeaders { .. } => {
                "the model server is unavailable; try again"
            }
            Self::Rejected { .. } => "the model server refused the request",
            Self::Stalled { .. } => "the model stopped answering (stalled); try again",
            Self::Stream(_) | Self::EventTooLarge { .. } => {
                "the model's answer broke off; try again"
            }
            Self::TooManyToolRounds { .. } => {
                "the model kept calling tools without answering (tool round limit); ask differently"
            }
            Self::Cancelled => "cancelled while the model was answering",
        }
    }
}

/// A failed model run as its user sees it: [`LlmError::user_message`]. The full error (URL,
/// status, upstream message, cause chain) is its [`source`](std::error::Error::source), and
/// the agent logs it for the operator when the run fails.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.user_message())]
pub struct ModelFailure(#[source] pub LlmError);

fn humantime(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
