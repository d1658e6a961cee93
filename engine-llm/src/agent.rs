//! [`LlmAgent`]: one run's conversation with the model, tool rounds through the engine.

use std::sync::Arc;

use engine_core::{async_trait, Agent, BoxError, Handoff, RunContext, TokenUsage, ToolError};
use serde_json::{json, Value};

use crate::client::ModelClient;
use crate::config::{LlmConfig, LlmConfigError};
use crate::error::{LlmError, ModelFailure};
use crate::history::{HistoryStore, InMemoryHistory, Turn};
use crate::wire::{
    AssembledCall, CallAssembler, ChatRequest, FunctionDef, FunctionOut, Message, StreamOptions,
    ToolCallOut, ToolDef,
};

/// Why an [`LlmAgentKit`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmSetupError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] LlmConfigError),
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// What every run of the model agent shares: configuration, HTTP client (its connection pool)
/// and thread history. Cheap to clone; register it with [`agent`](Self::agent):
///
/// ```
/// use engine_core::AgentRegistry;
/// use engine_llm::{LlmAgentKit, LlmConfig};
///
/// let kit = LlmAgentKit::new(LlmConfig::new("http://127.0.0.1:11434/v1", "llama3.2"))?;
/// let registry = AgentRegistry::builder()
///     .agent("assistant", move || kit.agent())
///     .build()?;
/// assert!(registry.has_agent("assistant"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct LlmAgentKit {
    inner: Arc<KitInner>,
}

#[derive(Debug)]
struct KitInner {
    config: LlmConfig,
    client: ModelClient,
    history: Arc<dyn HistoryStore>,
}

impl LlmAgentKit {
    /// A kit for `config` with in-memory thread history.
    ///
    /// # Errors
    /// [`LlmSetupError`] when the configuration is invalid or the client cannot be built.
    pub fn new(config: LlmConfig) -> Result<Self, LlmSetupError> {
        Self::with_history(config, Arc::new(InMemoryHistory::default()))
    }

    /// A kit for `config` with thread history in `history` (for example
    /// `RedisHistory` in cluster mode, with the `redis` feature).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_history(
        config: LlmConfig,
        history: Arc<dyn HistoryStore>,
    ) -> Result<Self, LlmSetupError> {
        config.validate()?;
        let client = ModelClient::new(&config).map_err(|e| LlmSetupError::Client(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(KitInner {
                config,
                client,
                history,
            }),
        })
    }

    /// A fresh agent for one run.
    pub fn agent(&self) -> LlmAgent {
        LlmAgent {
            kit: Arc::clone(&self.inner),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LlmConfig {
        &self.inner.config
    }
}

/// An agent answered by an OpenAI-compatible model: it sends the thread's earlier turns and
/// the message, streams the model's text as `answer_delta` events, runs the model's tool calls
/// through [`RunContext::call_tool`] (so permissions, approvals, timeouts and redaction apply)
/// and sends the results back, until the model answers without tools.
#[derive(Debug)]
pub struct LlmAgent {
    kit: Arc<KitInner>,
}

/// What one model turn produced.
struct TurnOutput {
    text: String,
    calls: Vec<AssembledCall>,
    usage: TokenUsage,
}

impl LlmAgent {
    fn tool_defs(ctx: &RunContext) -> Vec<ToolDef> {
        ctx.tools()
            .specs()
            .into_iter()
            .map(|spec| ToolDef {
                kind: "function",
                function: FunctionDef {
                    name: spec.name,
                    description: spec.description,
                    parameters: spec
                        .parameters
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                },
            })
            .chain(ctx.handoff_targets().into_iter().map(|target| ToolDef {
                kind: "function",
                function: FunctionDef {
                    name: format!("{HANDOFF_PREFIX}{target}"),
                    description: Some(format!(
                        "Hand the conversation over to the `{target}` agent, which answers the user from here on."
                    )),
                    parameters: json!({
                        "type": "object",
                        "properties": {"reason": {"type": "string", "description": "Why, in a few words."}}
                    }),
                },
            }))
            .collect()
    }

    /// The system prompt, the thread's earlier turns (newest that fit the limits) and `input`.
    async fn opening(&self, ctx: &mut RunContext, input: &str) -> Vec<Message> {
        let config = &self.kit.config;
        let c = ctx.context();
        let (user, thread) = (c.user_id().clone(), c.thread_id().clone());
        let turns = match self
            .kit
            .history
            .load(&user, &thread, config.history_turns)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(user_id = %user, error = %e, "thread history not loaded");
                ctx.think("answering without the thread's history (unavailable)")
                    .await;
                Vec::new()
            }
        };
        // Newest first until the size limit, then back in order.
        let mut budget = config.history_chars;
        let mut kept: Vec<&Turn> = Vec::new();
        for t in turns.iter().rev() {
            let size = t.user.len() + t.assistant.len();
            if size > budget {
                break;
            }
            budget -= size;
            kept.push(t);
        }
        let mut messages = Vec::with_capacity(kept.len() * 2 + 2);
        if let Some(system) = &config.system_prompt {
            messages.push(Message::System {
                content: system.clone(),
            });
        }
        for t in kept.into_iter().rev() {
            messages.push(Message::User {
                content: t.user.clone(),
            });
            messages.push(Message::Assistant {
                content: Some(t.assistant.clone()),
                tool_calls: Vec::new(),
            });
        }
        messages.push(Message::User {
            content: input.to_owned(),
        });
        messages
    }

    /// One request and its streamed answer; text is streamed to the user as it arrives.
    async fn turn(
        &self,
        ctx: &mut RunContext,
        messages: &[Message],
        tools: &[ToolDef],
    ) -> Result<TurnOutput, LlmError> {
        let config = &self.kit.config;
        let body = ChatRequest {
            model: &config.model,
            messages,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            temperature: config.temperature,
            tools,
        };
        let mut stream = tokio::select! {
            biased;
            () = ctx.cancelled() => return Err(LlmError::Cancelled),
            s = self.kit.client.open(config, &body) => s?,
        };
        let mut out = TurnOutput {
            text: String::new(),
            calls: Vec::new(),
            usage: TokenUsage::default(),
        };
        let mut calls = CallAssembler::default();
        loop {
            // Dropping the stream on cancel closes the connection: the server stops at once.
            let chunk = tokio::select! {
                biased;
                () = ctx.cancelled() => return Err(LlmError::Cancelled),
                c = stream.next() => c?,
            };
            let Some(chunk) = chunk else { break };
            if let Some(u) = chunk.usage {
                out.usage = TokenUsage::new(u.prompt_tokens, u.completion_tokens);
            }
            for choice in chunk.choices {
                if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                    out.text.push_str(&text);
                    ctx.stream(text).await;
                }
                for piece in choice.delta.tool_calls {
                    calls.push(piece);
                }
            }
        }
        out.calls = calls.finish();
        Ok(out)
    }

    /// Runs one tool call through the engine; the model gets the result or the error as text.
    async fn call(ctx: &mut RunContext, call: &AssembledCall) -> String {
        let args: Value = if call.arguments.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str(&call.arguments) {
                Ok(v) => v,
                Err(e) => {
                    ctx.think(format!(
                        "the model sent arguments for `{}` that are not JSON",
                        call.name
                    ))
                    .await;
                    return format!(
                        "error: the arguments are not valid JSON ({e}); call `{}` again with a JSON object",
                        call.name
                    );
                }
            }
        };
        match ctx.call_tool(&call.name, args).await {
            Ok(value) => value.to_string(),
            Err(ToolError::NotFound { .. }) => {
                let known = ctx.tools().tool_names().join(", ");
                format!(
                    "error: there is no tool `{}`; the tools are: {known}",
                    call.name
                )
            }
            Err(e) => format!("error: {e}"),
        }
    }
}

#[async_trait]
impl Agent for LlmAgent {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let tools = Self::tool_defs(ctx);
        let mut messages = self.opening(ctx, input).await;
        let config = &self.kit.config;
        let rounds = config.max_tool_rounds;
        let mut run_left = config.tool_result_bytes_per_run;
        for _ in 0..=rounds {
            let out = match self.turn(ctx, &messages, &tools).await {
                Ok(out) => out,
                Err(e) => return Err(failure(ctx, e)),
            };
            ctx.record_usage(out.usage);
            if out.calls.is_empty() {
                let answer = ctx.streamed().to_owned();
                let c = ctx.context();
                let turn = Turn::new(input, answer.clone());
                if let Err(e) = self
                    .kit
                    .history
                    .append(c.user_id(), c.thread_id(), turn)
                    .await
                {
                    tracing::warn!(user_id = %c.user_id(), error = %e, "turn not saved to the thread history");
                }
                return Ok(answer);
            }
            messages.push(Message::Assistant {
                content: (!out.text.is_empty()).then(|| out.text.clone()),
                tool_calls: out
                    .calls
                    .iter()
                    .map(|c| ToolCallOut {
                        id: c.id.clone(),
                        kind: "function",
                        function: FunctionOut {
                            name: c.name.clone(),
                            arguments: c.arguments.clone(),
                        },
                    })
                    .collect(),
            });
            // A `transfer_to_<agent>` call hands the run over (the rest of the turn's calls are
            // not made): the target answers the user's message in the same run.
            let targets = ctx.handoff_targets();
            let transfer = out.calls.iter().find_map(|c| {
                let target = c.name.strip_prefix(HANDOFF_PREFIX)?;
                targets
                    .contains(&target)
                    .then(|| (target.to_owned(), c.arguments.clone()))
            });
            if let Some((target, arguments)) = transfer {
                let reason = serde_json::from_str::<Value>(&arguments)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_owned));
                let mut handoff = Handoff::to(target, input);
                if let Some(reason) = reason {
                    handoff = handoff.reason(reason);
                }
                return Ok(ctx.handoff_with(handoff)?);
            }
            let mut round_left = config.tool_result_bytes_per_round;
            for call in &out.calls {
                let content = Self::call(ctx, call).await;
                let content = fit(content, &mut round_left, &mut run_left);
                messages.push(Message::Tool {
                    tool_call_id: call.id.clone(),
                    content,
                });
            }
        }
        Err(failure(ctx, LlmError::TooManyToolRounds { rounds }))
    }
}

/// The name prefix of the tools a model calls to hand the run over to another agent.
const HANDOFF_PREFIX: &str = "transfer_to_";

/// The error a failed run ends with: the user's short message ([`ModelFailure`]); the full
/// error (URL, status, the server's text, causes) goes to the operator's log, with the run's
/// ids.
fn failure(ctx: &RunContext, e: LlmError) -> BoxError {
    let c = ctx.context();
    if e != LlmError::Cancelled {
        tracing::warn!(user_id = %c.user_id(), run_id = %c.run_id(), error = %e, "model run failed");
    }
    Box::new(ModelFailure(e))
}

/// `content` as it goes back to the model: whole if it fits what is left of this round's and
/// this run's budgets of tool output (both shrink by what is sent), else cut at a character
/// boundary with a note saying how much was left out.
fn fit(content: String, round_left: &mut usize, run_left: &mut usize) -> String {
    let room = (*round_left).min(*run_left);
    if content.len() <= room {
        *round_left -= content.len();
        *run_left -= content.len();
        return content;
    }
    if room == 0 {
        return format!(
            "[tool result of {} bytes not sent: the limit of tool output sent to the model was reached]",
            content.len()
        );
    }
    let mut cut = room;
    while !content.is_char_boundary(cut) {
        cut -= 1;
    }
    *round_left -= cut;
    *run_left -= cut;
    format!(
        "{}\n[truncated: {} of {} bytes sent; the limit of tool output sent to the model was reached]",
        &content[..cut],
        cut,
        content.len()
    )
}

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn tool_output_is_cut_to_the_round_and_run_budgets() {
        let (mut round, mut run) = (10, 25);
        assert_eq!(fit("abc".into(), &mut round, &mut run), "abc");
        assert_eq!((round, run), (7, 22));
        let cut = fit("é".repeat(10), &mut round, &mut run);
        assert!(
            cut.starts_with("ééé\n[truncated: 6 of 20 bytes sent"),
            "{cut}"
        );
        assert_eq!((round, run), (1, 16));
        let none = fit("more".into(), &mut 0, &mut run);
        assert!(
            none.starts_with("[tool result of 4 bytes not sent"),
            "{none}"
        );
        // A new round has its own budget, the run's keeps shrinking.
        let mut round = 100;
        let cut = fit("x".repeat(40), &mut round, &mut run);
        assert!(
            cut.starts_with(&"x".repeat(16)) && cut.contains("16 of 40"),
            "{cut}"
        );
        assert_eq!(run, 0);
    }
}
