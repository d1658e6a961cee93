//! The demo agent registry the gateway serves by default: an `assistant` that thinks in
//! steps, calls real tools (`calculator`, `clock`, `text_stats`, and `save_note`, which waits
//! for the user's approval) and streams its answer word by word; a `frontdesk` that hands
//! billing questions to `billing` (and the rest to `assistant`); and two guardrails: every
//! message that asks for a secret is refused before any agent runs (`no_secrets`, a blocking
//! input guardrail), and `billing`'s answer is held back until it is checked for card numbers
//! (`no_card_numbers`, an output guardrail in hold mode).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine_core::{
    async_trait, Agent, AgentRegistry, BoxError, Check, Handoff, InputGuardrail, OutputGuardrail,
    RunContext, SubAgentCall, Tool, ToolContext, Verdict,
};
use serde_json::{json, Value};

/// The demo assistant: thinks, calls the calculator when the message contains arithmetic,
/// the clock when it mentions time, `save_note` (which asks the user first) when it says
/// "remember", text statistics always, and streams its answer word by word.
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
        if input.to_lowercase().contains("remember") {
            match ctx.call_tool("save_note", json!({ "text": input })).await {
                Ok(saved) => parts.push(format!("noted ({} characters)", saved["chars"])),
                Err(e) => parts.push(format!("not noted ({e})")),
            }
        }
        let stats = ctx
            .call_tool("text_stats", json!({ "text": input }))
            .await?;
        ctx.think("Composing the answer").await;
        parts.push(format!("your message has {} words", stats["words"]));
        let answer = parts.join("; ");
        stream_words(ctx, &answer, WORD_DELAY).await;
        Ok(answer)
    }
}

/// Streams `answer` the way a model produces text: a word at a time, `pause` apart.
async fn stream_words(ctx: &mut RunContext, answer: &str, pause: Duration) {
    for (i, word) in answer.split(' ').enumerate() {
        if i > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let piece = if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        };
        ctx.stream(piece).await;
    }
}

/// The pause between two streamed words of the demo answer.
const WORD_DELAY: Duration = Duration::from_millis(15);

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
    fn description(&self) -> Option<&str> {
        Some("Evaluates one arithmetic operation `a op b` with op one of + - * /.")
    }
    fn parameters(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "for example \"6 * 7\""}},
            "required": ["expression"]
        }))
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
    fn description(&self) -> Option<&str> {
        Some("Returns the current time as Unix seconds.")
    }
    fn parameters(&self) -> Option<Value> {
        Some(json!({"type": "object", "properties": {}}))
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
    fn description(&self) -> Option<&str> {
        Some("Counts the characters, words and lines of a text.")
    }
    fn parameters(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"]
        }))
    }
}

/// "Saves" a note for the user (it keeps nothing: a demo of a tool with side effects, so every
/// call waits for the user's approval).
#[derive(Debug, Default)]
pub struct SaveNote;

#[async_trait]
impl Tool for SaveNote {
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        let text = args["text"]
            .as_str()
            .ok_or("argument `text` must be a string")?;
        Ok(json!({ "saved": true, "chars": text.chars().count() }))
    }
    fn description(&self) -> Option<&str> {
        Some("Saves a note for the user. The user must approve each call.")
    }
    fn parameters(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"text": {"type": "string", "description": "the note"}},
            "required": ["text"]
        }))
    }
}

/// Waits: for the number of milliseconds in its message (default and most 10 minutes), or
/// until its run is cancelled. A long run to try cancellation, interruption and shutdown with.
#[derive(Debug, Default)]
pub struct Waiter;

#[async_trait]
impl Agent for Waiter {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let ms = input.trim().parse::<u64>().unwrap_or(600_000).min(600_000);
        ctx.think(format!("waiting {ms} ms")).await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(format!("waited {ms} ms")),
            () = ctx.cancelled() => Ok("stopped waiting".into()),
        }
    }
}

/// A specialist of the supervisor's team: thinks twice and calls one demo tool on the message.
#[derive(Debug, Clone)]
pub struct Specialist {
    role: &'static str,
    tool: &'static str,
}

impl Specialist {
    /// The specialist `role` (its agent name), using `tool`.
    pub fn new(role: &'static str, tool: &'static str) -> Self {
        Self { role, tool }
    }
}

#[async_trait]
impl Agent for Specialist {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        ctx.think(format!("{}: reading the request", self.role))
            .await;
        let args = match self.tool {
            "calculator" => {
                json!({ "expression": find_arithmetic(input).unwrap_or_else(|| "1 + 1".into()) })
            }
            "clock" => json!({}),
            _ => json!({ "text": input }),
        };
        let found = ctx.call_tool(self.tool, args).await?;
        ctx.think(format!("{}: writing up", self.role)).await;
        Ok(format!("{} found {found}", self.role))
    }
}

/// The supervisor: one message fans out to a team, as the legacy supervisor engine ran it.
/// It runs `triage` first, then the team (`data`, `optimization`) at once, then `reporting` on
/// what they found, and streams the answer. A member that fails or dies is reported in the
/// answer; the others still finish.
#[derive(Debug, Clone)]
pub struct Supervisor {
    team: Vec<&'static str>,
}

impl Supervisor {
    /// A supervisor whose fan-out runs `team` (after `triage`, before `reporting`).
    pub fn with_team(team: Vec<&'static str>) -> Self {
        Self { team }
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::with_team(vec!["data", "optimization"])
    }
}

#[async_trait]
impl Agent for Supervisor {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        ctx.think("Triaging the request").await;
        let triage = ctx.run_agent("triage", input).await?;
        ctx.think("Asking the team").await;
        let calls = self
            .team
            .iter()
            .map(|role| SubAgentCall::new(*role, input))
            .collect();
        let findings: Vec<String> = ctx
            .run_agents(calls, 4)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| format!("({e})")))
            .collect();
        let report = ctx
            .run_agent("reporting", &format!("{triage}; {}", findings.join("; ")))
            .await?;
        let answer = format!("{triage}; {}; {report}", findings.join("; "));
        stream_words(ctx, &answer, Duration::ZERO).await;
        Ok(answer)
    }
}

/// The demo registry: agents `assistant`, `supervisor` (with its team `triage`, `data`,
/// `optimization`, `reporting`) and `waiter` (a long run) and tools `calculator`, `clock`, `text_stats` and `save_note`
/// (which needs the user's approval).
pub fn demo_registry() -> AgentRegistry {
    demo_registry_builder()
        .build()
        .unwrap_or_else(|e| unreachable!("static demo registry is valid: {e}"))
}

/// The demo registry's builder, to add test agents or a policy on top.
pub fn demo_registry_builder() -> engine_core::AgentRegistryBuilder {
    team_builder().agent("assistant", || DemoAssistant)
}

/// The demo registry with the `assistant` answered by a model (`engine-llm`) that may call
/// the demo tools (`save_note` still needs the user's approval); the other demo agents stay.
pub fn model_registry(kit: engine_llm::LlmAgentKit) -> AgentRegistry {
    model_registry_builder(kit)
        .build()
        .unwrap_or_else(|e| unreachable!("static demo registry is valid: {e}"))
}

/// [`model_registry`]'s builder, to add tool sources (MCP servers) or a policy on top.
pub fn model_registry_builder(kit: engine_llm::LlmAgentKit) -> engine_core::AgentRegistryBuilder {
    team_builder().agent("assistant", move || kit.agent())
}

/// Words that make a message ask for a secret (the `no_secrets` guardrail).
const SECRET_WORDS: [&str; 5] = [
    "password",
    "secret",
    "api key",
    "credentials",
    "private key",
];

/// The `no_secrets` check: trips on a message that asks for a secret.
pub fn asks_for_a_secret(text: &str) -> Verdict {
    let lower = text.to_lowercase();
    match SECRET_WORDS.iter().find(|w| lower.contains(*w)) {
        Some(word) => Verdict::trip(format!("the message asks for a secret ({word})")),
        None => Verdict::Pass,
    }
}

/// The `no_card_numbers` check: trips on an answer with 12 or more digits in a row (spaces
/// and dashes between them allowed), a card number.
pub fn shows_a_card_number(text: &str) -> Verdict {
    let mut run = 0;
    for c in text.chars() {
        match c {
            '0'..='9' => {
                run += 1;
                if run >= 12 {
                    return Verdict::trip("the answer shows a card number");
                }
            }
            ' ' | '-' if run > 0 => {}
            _ => run = 0,
        }
    }
    Verdict::Pass
}

/// Words that make a message a billing question (for `frontdesk`).
const BILLING_WORDS: [&str; 6] = ["bill", "invoice", "refund", "charge", "payment", "card"];

/// Says it is looking, then hands billing questions to `billing` and everything else to
/// `assistant` (what it streamed is retracted by the handoff).
#[derive(Debug, Default)]
pub struct FrontDesk;

#[async_trait]
impl Agent for FrontDesk {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        // Streamed, then taken back by the handoff (`answer_retracted`): the page removes it.
        ctx.stream("One moment, let me find who can answer that.")
            .await;
        let lower = input.to_lowercase();
        let handoff = if BILLING_WORDS.iter().any(|w| lower.contains(w)) {
            Handoff::to("billing", input).reason("a billing question")
        } else {
            Handoff::to("assistant", input).reason("a general question")
        };
        Ok(ctx.handoff_with(handoff)?)
    }
}

/// Answers billing questions from a (made-up) account, streaming word by word; asked for the
/// card on file, it reads the whole number out, which its `no_card_numbers` guardrail stops.
#[derive(Debug, Default)]
pub struct Billing;

#[async_trait]
impl Agent for Billing {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        ctx.think("Looking up the account").await;
        let lower = input.to_lowercase();
        let answer = if lower.contains("card") {
            "the card on file is 4242 4242 4242 4242, expiring 12/29".to_owned()
        } else if lower.contains("refund") {
            "your refund of 12.50 EUR was sent on 3 December".to_owned()
        } else {
            "your last invoice is 42.00 EUR, paid on 1 December".to_owned()
        };
        stream_words(ctx, &answer, WORD_DELAY).await;
        Ok(answer)
    }
}

/// Every demo agent but `assistant`, the demo tools, the guardrails and the handoffs.
fn team_builder() -> engine_core::AgentRegistryBuilder {
    AgentRegistry::builder()
        .agent("frontdesk", || FrontDesk)
        .agent("billing", || Billing)
        .handoffs("frontdesk", ["billing", "assistant"])
        .guardrail(InputGuardrail::new(
            "no_secrets",
            Check::code(|input| asks_for_a_secret(&input.checked.text())),
        ))
        .guardrail_for(
            "billing",
            OutputGuardrail::new(
                "no_card_numbers",
                Check::code(|input| shows_a_card_number(&input.checked.text())),
            ),
        )
        .agent("supervisor", Supervisor::default)
        .agent("waiter", || Waiter)
        .agent("triage", || Specialist::new("triage", "text_stats"))
        .agent("data", || Specialist::new("data", "clock"))
        .agent("optimization", || {
            Specialist::new("optimization", "calculator")
        })
        .agent("reporting", || Specialist::new("reporting", "text_stats"))
        .tool("calculator", Calculator)
        .tool("clock", Clock)
        .tool("text_stats", TextStats)
        .tool_requiring_approval("save_note", SaveNote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_guardrails_trip_on_secrets_and_card_numbers() {
        assert!(asks_for_a_secret("what is my PASSWORD?").is_trip());
        assert!(!asks_for_a_secret("what is 6 * 7?").is_trip());
        assert!(shows_a_card_number("card 4242 4242 4242 4242").is_trip());
        assert!(
            !shows_a_card_number("your last invoice is 42.00 EUR, paid on 1 December").is_trip()
        );
    }

    #[test]
    fn finds_arithmetic() {
        assert_eq!(find_arithmetic("what is 6 * 7?").as_deref(), Some("6 * 7"));
        assert_eq!(find_arithmetic("hello there"), None);
    }
}
