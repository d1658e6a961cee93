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

fn humantime(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
