//! `engine-llm`: an agent answered by any OpenAI-compatible Chat Completions server (OpenAI,
//! vLLM, Ollama, llama.cpp's server, LiteLLM, ...), on the engine's own events.
//!
//! Each run sends the system prompt, the earlier turns of the user's thread (from a
//! [`HistoryStore`] keyed by user and thread) and the message; the model's tokens become
//! `answer_delta` events as they arrive; its tool calls (streamed in pieces, several per turn)
//! are assembled and run through [`RunContext::call_tool`](engine_core::RunContext::call_tool),
//! so the permission policy, approvals, tool timeouts and redaction apply unchanged; the
//! results go back to the model until it answers without tools, or the run fails at
//! `max_tool_rounds`. Token usage lands in the run's
//! [`RunOutcome::usage`](engine_core::RunOutcome::usage).
//!
//! Faults end the run with the engine's normal terminal event and an [`LlmError`] a person can
//! act on: a refused key (401/403), rate limits and server errors (retried with backoff,
//! honouring `Retry-After`), an unreachable server, a stalled or broken stream. Cancelling the
//! run, or its timeout, aborts the HTTP request at once.
//!
//! ```no_run
//! use engine_core::{AgentRegistry, UserExecutionContext};
//! use engine_factory::{ExecutionEngineFactory, FactoryConfig};
//! use engine_llm::{ApiKey, LlmAgentKit, LlmConfig};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = LlmConfig::new("https://api.openai.com/v1", "gpt-4o-mini")
//!     .with_system_prompt("You are a helpful assistant.");
//! if let Some(key) = ApiKey::from_env("LLM_API_KEY") {
//!     config = config.with_api_key(key);
//! }
//! let kit = LlmAgentKit::new(config)?;
//! let registry = AgentRegistry::builder()
//!     .agent("assistant", move || kit.agent())
//!     .build()?;
//! let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry)?;
//! let ctx = UserExecutionContext::new("alice", "thread-1", "run-1")?;
//! let mut events = factory.subscribe(ctx.user_id());
//! let engine = factory.create_for_user(&ctx)?;
//! let run = engine.spawn(&ctx, "assistant", "Say hello in three words.")?;
//! while let Some(e) = events.recv().await {
//!     if let engine_core::AgentEvent::AnswerDelta { delta } = &e.event {
//!         print!("{delta}");
//!     }
//!     if e.event.is_terminal() {
//!         break;
//!     }
//! }
//! let outcome = run.outcome().await?;
//! println!("\n{} tokens", outcome.usage.total());
//! # Ok(())
//! # }
//! ```

mod agent;
mod client;
mod config;
mod error;
mod history;
mod wire;

pub use agent::{LlmAgent, LlmAgentKit, LlmSetupError};
pub use config::{ApiKey, LlmConfig, LlmConfigError};
pub use error::{LlmError, ModelFailure};
#[cfg(feature = "redis")]
pub use history::RedisHistory;
pub use history::{BoxFuture, HistoryError, HistoryStore, InMemoryHistory, StoreHistory, Turn};
