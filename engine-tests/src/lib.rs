//! `engine-tests`: the cross-crate suites, and the demo agents, tools and invariant checkers
//! they share with the `golden_path` example.
//!
//! ```
//! use engine_core::UserExecutionContext;
//! use engine_factory::{ExecutionEngineFactory, FactoryConfig};
//! use engine_tests::{check_run, demo_registry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let factory = ExecutionEngineFactory::new(FactoryConfig::default(), demo_registry());
//! let ctx = UserExecutionContext::new("alice", "thread-1", "run-1")?;
//! let mut events = factory.subscribe(ctx.user_id());
//! let engine = factory.create_for_user(&ctx)?;
//! let outcome = engine.execute(&ctx, "assistant", "what is 6 * 7?").await?;
//! assert!(outcome.result.unwrap().contains("42"));
//! let received: Vec<_> = std::iter::from_fn(|| events.try_recv()).collect();
//! check_run(&received)?;
//! # Ok(())
//! # }
//! ```

pub mod bench;
mod script;

pub use script::{
    script_registry, script_registry_builder, EchoTool, FailTool, Observations, PanicTool,
    ScriptAgent, SlowTool,
};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use engine_core::{
    async_trait, Agent, AgentEvent, AgentRegistry, BoxError, EventEnvelope, RunContext, Tool,
    ToolContext,
};
use serde_json::{json, Value};

/// The demo assistant: thinks, calls the calculator when the message contains arithmetic,
/// the clock when it mentions time, text statistics always, and answers.
#[derive(Debug, Default)]
pub struct DemoAssistant;

#[async_trait]
impl Agent for DemoAssistant {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        ctx.think("Reading the message").await;
        let mut parts = Vec::new();
        if let Some(expr) = find_arithmetic(input) {
            let value = ctx
                .call_tool("calculator", json!({ "expression": expr }))
                .await?;
            parts.push(format!("{expr} = {value}"));
        }
        if input.to_lowercase().contains("time") {
            let now = ctx.call_tool("clock", json!({})).await?;
            parts.push(format!("the time is {}", now["unix_seconds"]));
        }
        let stats = ctx
            .call_tool("text_stats", json!({ "text": input }))
            .await?;
        ctx.think("Composing the answer").await;
        parts.push(format!("your message has {} words", stats["words"]));
        Ok(parts.join("; "))
    }
}

/// Finds the first `a op b` (op in `+ - * /`) in a message.
fn find_arithmetic(input: &str) -> Option<String> {
    let tokens: Vec<&str> = input
        .split_whitespace()
        .map(|t| t.trim_matches(|c: char| c == '?' || c == ',' || c == '!'))
        .collect();
    tokens.windows(3).find_map(|w| {
        let numeric = |s: &str| s.parse::<f64>().is_ok();
        (numeric(w[0]) && ["+", "-", "*", "/"].contains(&w[1]) && numeric(w[2]))
            .then(|| w.join(" "))
    })
}

/// Evaluates `a op b`.
#[derive(Debug, Default)]
pub struct Calculator;

#[async_trait]
impl Tool for Calculator {
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        let expr = args["expression"]
            .as_str()
            .ok_or("argument `expression` must be a string like \"6 * 7\"")?;
        let parts: Vec<&str> = expr.split_whitespace().collect();
        let [a, op, b] = parts[..] else {
            return Err(format!("cannot parse {expr:?}; expected `a op b`").into());
        };
        let (a, b): (f64, f64) = (a.parse()?, b.parse()?);
        let v = match op {
            "+" => a + b,
            "-" => a - b,
            "*" => a * b,
            "/" if b == 0.0 => return Err("division by zero".into()),
            "/" => a / b,
            other => return Err(format!("unknown operator {other:?}").into()),
        };
        Ok(json!(v))
    }
}

/// Reports the current Unix time.
#[derive(Debug, Default)]
pub struct Clock;

#[async_trait]
impl Tool for Clock {
    async fn call(&self, _args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        Ok(json!({ "unix_seconds": now.as_secs() }))
    }
}

/// Counts characters, words and lines of `text`.
#[derive(Debug, Default)]
pub struct TextStats;

#[async_trait]
impl Tool for TextStats {
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        let text = args["text"]
            .as_str()
            .ok_or("argument `text` must be a string")?;
        Ok(json!({
            "chars": text.chars().count(),
            "words": text.split_whitespace().count(),
            "lines": text.lines().count(),
        }))
    }
}

/// The demo registry: agent `assistant` and tools `calculator`, `clock`, `text_stats`.
pub fn demo_registry() -> AgentRegistry {
    demo_registry_builder()
        .build()
        .unwrap_or_else(|e| unreachable!("static demo registry is valid: {e}"))
}

/// The demo registry's builder, to add test agents or a policy on top.
pub fn demo_registry_builder() -> engine_core::AgentRegistryBuilder {
    AgentRegistry::builder()
        .agent("assistant", || DemoAssistant)
        .tool("calculator", Calculator)
        .tool("clock", Clock)
        .tool("text_stats", TextStats)
}

/// Checks the invariants of ONE run's events, as received by its user, in arrival order:
/// one user, thread and run; sequence numbers contiguous from 1 (no drops expected);
/// timestamps non-decreasing; `agent_started` first; exactly one `agent_completed`, last;
/// every `tool_executing` paired with a `tool_completed` of the same call id.
///
/// # Errors
/// A description of the first violated invariant.
pub fn check_run(events: &[Arc<EventEnvelope>]) -> Result<(), String> {
    let first = events.first().ok_or("no events")?;
    let mut open_calls = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let at = format!("event {i} (seq {}, {})", e.seq, e.event.kind());
        if e.user_id != first.user_id || e.run_id != first.run_id || e.thread_id != first.thread_id
        {
            return Err(format!("{at}: belongs to another user/thread/run"));
        }
        if e.seq != i as u64 + 1 {
            return Err(format!("{at}: expected seq {}", i + 1));
        }
        if i > 0 && e.timestamp_us < events[i - 1].timestamp_us {
            return Err(format!("{at}: timestamp went backwards"));
        }
        match (&e.event, i) {
            (AgentEvent::AgentStarted { .. }, 0) => {}
            (AgentEvent::AgentStarted { .. }, _) => return Err(format!("{at}: second start")),
            (_, 0) => return Err(format!("{at}: first event is not agent_started")),
            (AgentEvent::AgentCompleted { .. }, n) if n + 1 != events.len() => {
                return Err(format!("{at}: terminal event is not last"))
            }
            (AgentEvent::ToolExecuting { call_id, .. }, _) => open_calls.push(*call_id),
            (AgentEvent::ToolCompleted { call_id, .. }, _)
                if open_calls.pop() != Some(*call_id) =>
            {
                return Err(format!("{at}: tool_completed without its tool_executing"));
            }
            _ => {}
        }
    }
    if !open_calls.is_empty() {
        return Err(format!("tool calls {open_calls:?} never completed"));
    }
    match events.last().map(|e| &e.event) {
        Some(AgentEvent::AgentCompleted { .. }) => Ok(()),
        _ => Err("the run has no terminal agent_completed".into()),
    }
}

/// Groups one user's received events by run, keeping arrival order within each run.
pub fn by_run(
    events: &[Arc<EventEnvelope>],
) -> BTreeMap<engine_core::RunId, Vec<Arc<EventEnvelope>>> {
    let mut runs: BTreeMap<engine_core::RunId, Vec<Arc<EventEnvelope>>> = BTreeMap::new();
    for e in events {
        runs.entry(e.run_id.clone())
            .or_default()
            .push(Arc::clone(e));
    }
    runs
}

/// The terminal status of a run's events, if its last event is `agent_completed`.
pub fn terminal_status(events: &[Arc<EventEnvelope>]) -> Option<engine_core::RunStatus> {
    match events.last().map(|e| &e.event) {
        Some(AgentEvent::AgentCompleted { status, .. }) => Some(*status),
        _ => None,
    }
}

/// Drains everything currently buffered in a subscription.
pub fn drain(sub: &mut engine_factory::Subscription) -> Vec<Arc<EventEnvelope>> {
    std::iter::from_fn(|| sub.try_recv()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_arithmetic() {
        assert_eq!(find_arithmetic("what is 6 * 7?").as_deref(), Some("6 * 7"));
        assert_eq!(find_arithmetic("hello there"), None);
    }
}
