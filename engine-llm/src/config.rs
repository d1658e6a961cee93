//! [`LlmConfig`]: which server and model, the key, the prompt, and the limits of a run.

use std::time::Duration;

/// Why an [`LlmConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmConfigError {
    /// A setting is out of range or malformed.
    #[error("invalid model setting `{field}`: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
}

/// An API key. Never shown: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
    /// The key from the environment variable `var`, if set and not empty.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(Self)
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Settings of the model agent. Start with [`LlmConfig::new`] and adjust with the `with_*`
/// methods; [`LlmAgentKit::new`](crate::LlmAgentKit::new) validates them.
///
/// ```
/// use std::time::Duration;
/// use engine_llm::{ApiKey, LlmConfig};
///
/// let config = LlmConfig::new("http://127.0.0.1:11434/v1", "llama3.2")
///     .with_api_key(ApiKey::new("sk-local"))
///     .with_system_prompt("You are terse.")
///     .with_temperature(0.2)
///     .with_max_tool_rounds(4)
///     .with_idle_timeout(Duration::from_secs(20));
/// assert!(config.validate().is_ok());
/// assert!(!format!("{config:?}").contains("sk-local"));
/// ```
#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub(crate) base_url: String,
    pub(crate) model: String,
    pub(crate) api_key: Option<ApiKey>,
    pub(crate) system_prompt: Option<String>,
    pub(crate) temperature: Option<f32>,
    pub(crate) max_tool_rounds: u32,
    pub(crate) max_retries: u32,
    pub(crate) retry_base: Duration,
    pub(crate) retry_cap: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) header_timeout: Duration,
    pub(crate) max_error_body_bytes: usize,
    pub(crate) max_event_bytes: usize,
    pub(crate) tool_result_bytes_per_round: usize,
    pub(crate) tool_result_bytes_per_run: usize,
    pub(crate) history_turns: usize,
    pub(crate) history_chars: usize,
    pub(crate) keep_alive: bool,
}

impl LlmConfig {
    /// The server at `base_url` (the part before `/chat/completions`, for example
    /// `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`) and `model`. Defaults: no
    /// key, no system prompt, the server's temperature, 8 tool rounds, 3 retries (250 ms
    /// doubling with jitter, at most 10 s, or the server's `Retry-After` capped at 10 s), a
    /// 10 s connect timeout, a 30 s wait for the response headers, a 30 s idle timeout on the
    /// stream, error bodies read up to 16 KiB and stream events up to 1 MiB, tool results sent
    /// back to the model up to 32 KiB per round and 128 KiB per run, and the thread's last 20
    /// turns up to 16,000 characters.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            system_prompt: None,
            temperature: None,
            max_tool_rounds: 8,
            max_retries: 3,
            retry_base: Duration::from_millis(250),
            retry_cap: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            max_error_body_bytes: 16 * 1024,
            max_event_bytes: 1024 * 1024,
            tool_result_bytes_per_round: 32 * 1024,
            tool_result_bytes_per_run: 128 * 1024,
            history_turns: 20,
            history_chars: 16_000,
            keep_alive: true,
        }
    }
    /// The bearer key (never logged, never in events or `Debug`).
    #[must_use]
    pub fn with_api_key(mut self, key: ApiKey) -> Self {
        self.api_key = Some(key);
        self
    }
    /// A system prompt sent first in every request.
    #[must_use]
    pub fn with_system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.system_prompt = Some(prompt.into());
        self
    }
    /// The sampling temperature (0 to 2).
    #[must_use]
    pub fn with_temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }
    /// How many times the model may call tools in one run before the run fails.
    #[must_use]
    pub fn with_max_tool_rounds(mut self, rounds: u32) -> Self {
        self.max_tool_rounds = rounds;
        self
    }
    /// Retries of a request answered 429 or 5xx (or not connected), and the first backoff.
    #[must_use]
    pub fn with_retries(mut self, retries: u32, first_backoff: Duration) -> Self {
        self.max_retries = retries;
        self.retry_base = first_backoff;
        self
    }
    /// The longest pause between retries: the doubling backoff stops here, and a server's
    /// `Retry-After` is never waited longer (default 10 s).
    #[must_use]
    pub fn with_retry_cap(mut self, cap: Duration) -> Self {
        self.retry_cap = cap;
        self
    }
    /// The longest wait for a response's headers after the request was sent (default 30 s);
    /// a server that takes the request and never answers fails the attempt (then retried).
    #[must_use]
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }
    /// How much is read of an error response's body (default 16 KiB; the rest is not read)
    /// and how large one event of the stream may grow (default 1 MiB; a larger one fails the
    /// run), in bytes.
    #[must_use]
    pub fn with_read_limits(mut self, error_body_bytes: usize, event_bytes: usize) -> Self {
        self.max_error_body_bytes = error_body_bytes;
        self.max_event_bytes = event_bytes;
        self
    }
    /// How much tool output goes back to the model, in bytes: per round (the results of one
    /// turn's calls together, default 32 KiB) and per run (default 128 KiB). A result past
    /// either is cut, with a note saying how much was left out.
    #[must_use]
    pub fn with_tool_result_limits(mut self, per_round: usize, per_run: usize) -> Self {
        self.tool_result_bytes_per_round = per_round;
        self.tool_result_bytes_per_run = per_run;
        self
    }
    /// The longest wait for the next piece of a stream before the run fails as stalled.
    #[must_use]
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }
    /// How much of the thread's history goes with each run: at most `turns` earlier turns and
    /// `chars` characters (the newest first).
    #[must_use]
    pub fn with_history(mut self, turns: usize, chars: usize) -> Self {
        self.history_turns = turns;
        self.history_chars = chars;
        self
    }
    /// Whether connections to the server are kept open between requests (default `true`).
    /// Turn it off for servers or proxies that stall on reused connections (for example one
    /// that does not set `TCP_NODELAY`, where a reused connection can wait on a delayed ACK).
    #[must_use]
    pub fn with_keep_alive(mut self, keep_alive: bool) -> Self {
        self.keep_alive = keep_alive;
        self
    }
    /// The model name.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(crate) fn completions_url(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`LlmConfigError::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<(), LlmConfigError> {
        let bad = |field, reason: &str| {
            Err(LlmConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return bad("base_url", "must start with http:// or https://");
        }
        if self.model.trim().is_empty() {
            return bad("model", "must name a model the server serves");
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return bad("temperature", "between 0 and 2");
            }
        }
        if !(1..=64).contains(&self.max_tool_rounds) {
            return bad("max_tool_rounds", "between 1 and 64");
        }
        if self.max_retries > 10 {
            return bad("max_retries", "at most 10");
        }
        if self.idle_timeout < Duration::from_millis(10) {
            return bad("idle_timeout", "at least 10 ms");
        }
        if self.header_timeout < Duration::from_millis(10) {
            return bad("header_timeout", "at least 10 ms");
        }
        if self.retry_cap > Duration::from_secs(300) {
            return bad("retry_cap", "at most 300 s");
        }
        if !(256..=64 * 1024 * 1024).contains(&self.max_error_body_bytes) {
            return bad("max_error_body_bytes", "between 256 bytes and 64 MiB");
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_event_bytes) {
            return bad("max_event_bytes", "between 1 KiB and 64 MiB");
        }
        if self.tool_result_bytes_per_round < 256
            || self.tool_result_bytes_per_run < self.tool_result_bytes_per_round
        {
            return bad(
                "tool_result_limits",
                "at least 256 bytes per round, and per run at least the per-round limit",
            );
        }
        Ok(())
    }
}
