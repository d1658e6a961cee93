//! The [`Agent`] trait: what answers one user message.

use async_trait::async_trait;

use crate::run::RunContext;

/// The error type agents and tools return: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An AI agent: answers one input message, thinking and calling tools through its
/// [`RunContext`].
///
/// A fresh instance is created for every run (see [`AgentRegistry`](crate::AgentRegistry)), so fields of `self` are
/// never shared between runs or users.
///
/// ```
/// use engine_core::{async_trait, Agent, BoxError, RunContext};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Agent for Echo {
///     async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
///         ctx.think("repeating the message").await;
///         Ok(input.to_owned())
///     }
/// }
/// ```
#[async_trait]
pub trait Agent: Send + 'static {
    /// Runs to an answer. An `Err` or a panic ends the run with status `failed`; the engine
    /// keeps working. Long-running agents should watch [`RunContext::is_cancelled`] or
    /// [`RunContext::cancelled`].
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError>;
}
