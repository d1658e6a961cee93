//! The HTTP side: one streaming request with bounded retries (429 and 5xx, honouring
//! `Retry-After`), and the server-sent events of its answer read as chunks, each within the
//! idle timeout. Dropping a [`ChunkStream`] aborts the request (the connection closes).

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};

use crate::config::LlmConfig;
use crate::error::LlmError;
use crate::wire::{ChatRequest, Chunk, ErrorBody};

type Events = Pin<
    Box<dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<BodyError>>> + Send>,
>;

/// Why the bytes of a stream stopped.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// The connection failed.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// One event grew past the limit without ending.
    #[error("an event larger than {0} bytes")]
    EventTooLarge(usize),
}

/// `bytes` with each event (the bytes since the last blank line) limited to `limit` bytes: a
/// server that never ends an event fails the stream instead of filling memory.
fn bounded_events<S, B>(
    bytes: S,
    limit: usize,
) -> impl Stream<Item = Result<Vec<u8>, BodyError>> + Send
where
    S: Stream<Item = Result<B, reqwest::Error>> + Send,
    B: AsRef<[u8]> + Send,
{
    let mut in_event = 0usize;
    let mut after_newline = false;
    let mut failed = false;
    bytes.map(move |chunk| {
        if failed {
            return Err(BodyError::EventTooLarge(limit));
        }
        let chunk = chunk?;
        let chunk = chunk.as_ref();
        for &b in chunk {
            match b {
                b'\n' if after_newline => in_event = 0,
                b'\n' => after_newline = true,
                b'\r' => {}
                _ => {
                    after_newline = false;
                    in_event += 1;
                }
            }
        }
        if in_event > limit {
            failed = true;
            return Err(BodyError::EventTooLarge(limit));
        }
        Ok(chunk.to_vec())
    })
}

/// The streamed answer of one request.
pub(crate) struct ChunkStream {
    events: Events,
    idle: Duration,
    done: bool,
    /// Whether a choice said why it finished (`stop`, `tool_calls`, `length`, ...).
    finished: bool,
}

impl ChunkStream {
    /// A stream over the raw bytes of an event stream, each event at most `max_event` bytes.
    fn over<S, B>(bytes: S, idle: Duration, max_event: usize) -> Self
    where
        S: Stream<Item = Result<B, reqwest::Error>> + Send + 'static,
        B: AsRef<[u8]> + Send + 'static,
    {
        Self {
            events: Box::pin(bounded_events(bytes, max_event).eventsource()),
            idle,
            done: false,
            finished: false,
        }
    }

    /// The next chunk; `None` at `[DONE]` or the end of the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Chunk>, LlmError> {
        if self.done {
            return Ok(None);
        }
        let event = tokio::time::timeout(self.idle, self.events.next())
            .await
            .map_err(|_| LlmError::Stalled { idle: self.idle })?;
        let event = match event {
            None if self.finished => {
                self.done = true;
                return Ok(None);
            }
            None => {
                return Err(LlmError::Stream(
                    "the stream ended before the model finished its answer".into(),
                ))
            }
            Some(Err(EventStreamError::Transport(BodyError::EventTooLarge(limit)))) => {
                return Err(LlmError::EventTooLarge { limit })
            }
            Some(Err(e)) => return Err(LlmError::Stream(e.to_string())),
            Some(Ok(e)) => e,
        };
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        if data.is_empty() {
            // A keep-alive or comment-only event: nothing to read, wait for the next one.
            return Box::pin(self.next()).await;
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            let shown: String = data.chars().take(120).collect();
            LlmError::Stream(format!("malformed chunk ({e}): {shown}"))
        })?;
        if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
            self.finished = true;
        }
        Ok(Some(chunk))
    }
}

/// A client for one configured server.
#[derive(Debug, Clone)]
pub(crate) struct ModelClient {
    http: reqwest::Client,
}

impl ModelClient {
    pub(crate) fn new(config: &LlmConfig) -> Result<Self, reqwest::Error> {
        let mut http = reqwest::Client::builder().connect_timeout(config.connect_timeout);
        if !config.keep_alive {
            http = http.pool_max_idle_per_host(0);
        }
        let http = http.build()?;
        Ok(Self { http })
    }

    /// Sends `body` and returns its stream once the server answered 200, retrying 429, 5xx
    /// and connection failures up to `max_retries` times.
    pub(crate) async fn open(
        &self,
        config: &LlmConfig,
        body: &ChatRequest<'_>,
    ) -> Result<ChunkStream, LlmError> {
        let url = config.completions_url();
        let attempts = config.max_retries + 1;
        let mut last: Option<LlmError> = None;
        for attempt in 1..=attempts {
            let mut request = self.http.post(&url).json(body);
            if let Some(key) = &config.api_key {
                request = request.bearer_auth(key.expose());
            }
            let sent = tokio::time::timeout(config.header_timeout, request.send()).await;
            let wait = match sent {
                Err(_) => {
                    last = Some(LlmError::NoHeaders {
                        url: url.clone(),
                        attempts: attempt,
                        within: config.header_timeout,
                    });
                    None
                }
                Ok(Err(e)) => {
                    last = Some(LlmError::Unreachable {
                        url: url.clone(),
                        attempts: attempt,
                        cause: cause_chain(&e),
                    });
                    None
                }
                Ok(Ok(response)) if response.status().is_success() => {
                    let content_type = response
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    if !content_type.starts_with("text/event-stream") {
                        let body = error_message(response, config).await;
                        return Err(LlmError::Stream(format!(
                            "expected an event stream, got {} ({body})",
                            if content_type.is_empty() {
                                "no content type"
                            } else {
                                &content_type
                            }
                        )));
                    }
                    return Ok(ChunkStream::over(
                        response.bytes_stream(),
                        config.idle_timeout,
                        config.max_event_bytes,
                    ));
                }
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let retry_after = retry_after(&response);
                    let message = error_message(response, config).await;
                    match status {
                        401 | 403 => {
                            return Err(LlmError::Unauthorized {
                                url,
                                status,
                                message,
                                model: config.model.clone(),
                            })
                        }
                        429 => {
                            last = Some(LlmError::RateLimited {
                                attempts: attempt,
                                message,
                            });
                            retry_after
                        }
                        500..=599 => {
                            last = Some(LlmError::ServerError {
                                status,
                                attempts: attempt,
                                message,
                            });
                            retry_after
                        }
                        _ => return Err(LlmError::Rejected { status, message }),
                    }
                }
            };
            if attempt == attempts {
                break;
            }
            // Half to all of the doubled base (jitter: clients that failed together do not
            // come back together), never past the cap; a server's Retry-After is honoured up
            // to the same cap.
            let backoff = config
                .retry_base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(config.retry_cap)
                .mul_f64(0.5 + fastrand::f64() * 0.5);
            let pause = wait.map_or(backoff, |w| w.min(config.retry_cap));
            tracing::debug!(
                attempt,
                pause_ms = pause.as_millis() as u64,
                "model request retried"
            );
            tokio::time::sleep(pause).await;
        }
        Err(last.unwrap_or(LlmError::Unreachable {
            url,
            attempts,
            cause: "no attempt was made".into(),
        }))
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by model servers).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let secs: f64 = value.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The server's error message, or the start of the body: at most `max_error_body_bytes` are
/// read, each piece within the idle timeout (an endless or stalled body is cut off there).
async fn error_message(mut response: reqwest::Response, config: &LlmConfig) -> String {
    let limit = config.max_error_body_bytes;
    let mut body = Vec::new();
    while body.len() < limit {
        match tokio::time::timeout(config.idle_timeout, response.chunk()).await {
            Ok(Ok(Some(piece))) => body.extend_from_slice(&piece),
            _ => break,
        }
    }
    body.truncate(limit);
    drop(response);
    let text = String::from_utf8_lossy(&body).into_owned();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) if !body.error.message.is_empty() => body.error.message,
        _ => text.chars().take(200).collect(),
    }
}

/// The error and its causes on one line (reqwest's own message is only the outermost).
fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::CallAssembler;

    /// A tool-call turn as OpenAI streams it: two calls, arguments split across chunks and
    /// interleaved, then the usage chunk.
    const TWO_CALLS: &str = concat!(
        r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"add","arguments":""}}]},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"add","arguments":""}}]},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":" 2, \"b\": 3}"}}]},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"a\":1,"}}]},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"\"b\":1}"}}]},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        "\n\n",
        r#"data: {"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":12,"total_tokens":43}}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );

    /// The bytes in pieces of `size`, as a network might deliver them.
    fn pieces(text: &str, size: usize) -> ChunkStream {
        let parts: Vec<Result<Vec<u8>, reqwest::Error>> = text
            .as_bytes()
            .chunks(size)
            .map(|c| Ok(c.to_vec()))
            .collect();
        ChunkStream::over(
            futures_util::stream::iter(parts),
            Duration::from_secs(1),
            1024 * 1024,
        )
    }

    #[tokio::test]
    async fn fragmented_interleaved_tool_calls_are_assembled_whatever_the_byte_split() {
        for size in [1, 7, 64, 4096] {
            let mut stream = pieces(TWO_CALLS, size);
            let mut calls = CallAssembler::default();
            let mut usage = None;
            while let Some(chunk) = stream.next().await.unwrap() {
                usage = chunk.usage.or(usage);
                for choice in chunk.choices {
                    for piece in choice.delta.tool_calls {
                        calls.push(piece);
                    }
                }
            }
            let calls = calls.finish();
            assert_eq!(calls.len(), 2, "split {size}");
            assert_eq!(
                (calls[0].id.as_str(), calls[0].name.as_str()),
                ("call_a", "add")
            );
            let a: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
            let b: serde_json::Value = serde_json::from_str(&calls[1].arguments).unwrap();
            assert_eq!(a, serde_json::json!({"a": 2, "b": 3}));
            assert_eq!(b, serde_json::json!({"a": 1, "b": 1}));
            let usage = usage.unwrap();
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (31, 12));
        }
    }

    #[tokio::test]
    async fn a_malformed_chunk_and_a_cut_stream_are_errors() {
        let mut bad = pieces("data: {\"choices\": [oops]}\n\n", 5);
        let e = bad.next().await.unwrap_err();
        assert!(e.to_string().contains("malformed chunk"), "{e}");
        let cut = TWO_CALLS
            .split("data: {\"choices\":[{\"index\":0,\"delta\":{}")
            .next()
            .unwrap();
        let mut cut = pieces(cut, 16);
        let mut result = Ok(None);
        for _ in 0..10 {
            result = cut.next().await;
            if !matches!(result, Ok(Some(_))) {
                break;
            }
        }
        let e = result.unwrap_err();
        assert!(e.to_string().contains("ended before"), "{e}");
    }

    #[tokio::test]
    async fn an_event_that_never_ends_fails_at_the_limit_and_events_below_it_pass() {
        // One event of 5,000 bytes with no blank line, sent in pieces: refused at 4 KiB.
        let endless = format!("data: {}", "x".repeat(5_000));
        let parts: Vec<Result<Vec<u8>, reqwest::Error>> = endless
            .as_bytes()
            .chunks(100)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let mut stream = ChunkStream::over(
            futures_util::stream::iter(parts),
            Duration::from_secs(1),
            4096,
        );
        let e = stream.next().await.unwrap_err();
        assert_eq!(e, LlmError::EventTooLarge { limit: 4096 });
        // Many events, each below the limit, add up to far more than it: all pass.
        let mut stream = ChunkStream::over(
            futures_util::stream::iter(
                TWO_CALLS
                    .as_bytes()
                    .chunks(3)
                    .map(|c| Ok::<_, reqwest::Error>(c.to_vec()))
                    .collect::<Vec<_>>(),
            ),
            Duration::from_secs(1),
            300,
        );
        let mut n = 0;
        while stream.next().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_stalls_after_the_idle_timeout() {
        let never = futures_util::stream::pending::<Result<Vec<u8>, reqwest::Error>>();
        let mut stream = ChunkStream::over(never, Duration::from_millis(300), 1024);
        let e = stream.next().await.unwrap_err();
        assert_eq!(
            e,
            LlmError::Stalled {
                idle: Duration::from_millis(300)
            }
        );
        assert!(e.to_string().contains("300 ms"));
    }
}
