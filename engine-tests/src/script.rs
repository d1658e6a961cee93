//! A scriptable agent and test tools, so suites can drive every engine behaviour through the
//! public API with nothing but the input message.
//!
//! The input is a `;`-separated script:
//!
//! | command | effect |
//! |---|---|
//! | `think:TEXT` | `agent_thinking` with TEXT |
//! | `sleep:MS` | sleeps MS milliseconds |
//! | `tool:NAME` / `tool:NAME:JSON` | calls tool NAME (arguments `{}` or JSON); errors are noted, not fatal |
//! | `fail:MSG` | the agent returns an error |
//! | `panic:MSG` | the agent panics |
//! | `wait_cancel` | waits for cancellation, then says so and returns |
//! | `say:TEXT` | streams TEXT as an `answer_delta` |
//! | `answer:TEXT` | answers exactly TEXT (instead of the usual answer) |
//! | `sub:SCRIPT` | runs the script agent as a sub-agent on SCRIPT (`\|` stands for `;`); its answer or error is noted |
//! | `fanout:N:SCRIPT` | runs N such sub-agents at once |
//! | `cleanup:NAME` / `cleanup_fail:NAME` / `cleanup_panic:NAME` | registers a cleanup action that records NAME (and then fails or panics) |
//! | `handoff:AGENT:SCRIPT` | hands the run off to AGENT on SCRIPT (`\|` stands for `;`) and returns; an error is returned |
//! | `abandon:NAME` | calls tool NAME and gives up on it after 1 ms (its future dropped, as a `select!` would) |
//!
//! The script registry's guardrails, for every agent, trip only on marker words: an input
//! guardrail (blocking) on `forbidden_input`, an output guardrail (stream mode) on
//! `forbidden_output`, a tool-input guardrail that denies the call on `forbidden_arg` in the
//! arguments. Its agents may hand off: `script` to `script` and `assistant`, `assistant` to
//! `script`.
//!
//! The answer names the user and lists tool results, so a leak of one user's answer into
//! another's stream is detectable. A script that streamed answers with the streamed text
//! followed by the usual answer (so the engine streams the rest itself). The tool `guarded`
//! echoes like `echo` but every call waits for the user's approval.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine_core::{
    async_trait, Agent, AgentRegistry, AgentRegistryBuilder, BoxError, Check, InputGuardrail,
    OutputGuardrail, RunContext, SubAgentCall, Tool, ToolContext, ToolGuardrail, Verdict,
};
use serde_json::{json, Value};

/// What the script agent and tools observed, shared by one registry's runs (test-only).
#[derive(Debug, Default)]
pub struct Observations {
    /// Script agents that started running (after any queueing).
    pub agent_starts: AtomicUsize,
    /// Agents that saw their run's cancellation.
    pub agent_saw_cancel: AtomicUsize,
    /// `slow` tool calls that saw their run's cancellation.
    pub tool_saw_cancel: AtomicUsize,
    /// Cleanup actions, in the order they ran.
    pub cleanups: std::sync::Mutex<Vec<String>>,
}

/// The scripted agent.
#[derive(Debug)]
pub struct ScriptAgent {
    observed: Arc<Observations>,
}

impl ScriptAgent {
    /// A script agent reporting to `observed` (to register it under other names).
    pub fn new(observed: Arc<Observations>) -> Self {
        Self { observed }
    }
}

#[async_trait]
impl Agent for ScriptAgent {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        self.observed.agent_starts.fetch_add(1, Ordering::SeqCst);
        let mut notes = Vec::new();
        let mut answer = None;
        for cmd in input.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (op, arg) = cmd.split_once(':').unwrap_or((cmd, ""));
            match op {
                "think" => ctx.think(arg.to_owned()).await,
                "sleep" => tokio::time::sleep(Duration::from_millis(arg.parse()?)).await,
                "tool" => {
                    let (name, args) = arg.split_once(':').unwrap_or((arg, "{}"));
                    match ctx.call_tool(name, serde_json::from_str(args)?).await {
                        Ok(v) => notes.push(format!("{name}={v}")),
                        Err(e) => notes.push(format!("{name}!{e}")),
                    }
                }
                "say" => ctx.stream(arg.to_owned()).await,
                "sub" => match ctx.run_agent("script", &arg.replace('|', ";")).await {
                    Ok(a) => notes.push(format!("sub={a}")),
                    Err(e) => notes.push(format!("sub!{e}")),
                },
                "fanout" => {
                    let (n, inner) = arg.split_once(':').unwrap_or((arg, ""));
                    let calls = (0..n.parse::<usize>()?)
                        .map(|_| SubAgentCall::new("script", inner.replace('|', ";")))
                        .collect();
                    for r in ctx.run_agents(calls, 4).await {
                        match r {
                            Ok(a) => notes.push(format!("sub={a}")),
                            Err(e) => notes.push(format!("sub!{e}")),
                        }
                    }
                }
                "cleanup" | "cleanup_fail" | "cleanup_panic" => {
                    let observed = Arc::clone(&self.observed);
                    let (name, how) = (arg.to_owned(), op.to_owned());
                    ctx.on_cleanup(arg, move || async move {
                        observed.cleanups.lock().unwrap().push(name.clone());
                        match how.as_str() {
                            "cleanup_fail" => Err(format!("cleanup {name} failed").into()),
                            "cleanup_panic" => panic!("cleanup {name} panicked"),
                            _ => Ok(()),
                        }
                    });
                }
                "answer" => answer = Some(arg.to_owned()),
                "handoff" => {
                    let (agent, script) = arg.split_once(':').unwrap_or((arg, ""));
                    return Ok(ctx.handoff(agent, script.replace('|', ";"))?);
                }
                "abandon" => {
                    let call = ctx.call_tool(arg, json!({}));
                    let _ = tokio::time::timeout(Duration::from_millis(1), call).await;
                }
                "fail" => return Err(arg.to_owned().into()),
                "panic" => panic!("{arg}"),
                "wait_cancel" => {
                    ctx.cancelled().await;
                    self.observed
                        .agent_saw_cancel
                        .fetch_add(1, Ordering::SeqCst);
                    return Ok("stopped on cancellation".into());
                }
                other => return Err(format!("unknown script command {other:?}").into()),
            }
        }
        if let Some(answer) = answer {
            return Ok(answer);
        }
        Ok(format!(
            "{}answer for {} [{}]",
            ctx.streamed(),
            ctx.context().user_id(),
            notes.join(", ")
        ))
    }
}

/// Returns its arguments and the calling user.
#[derive(Debug, Default)]
pub struct EchoTool;

#[async_trait]
impl Tool for EchoTool {
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, BoxError> {
        Ok(json!({ "echo": args, "user": ctx.context().user_id().as_str() }))
    }
}

/// Always fails.
#[derive(Debug, Default)]
pub struct FailTool;

#[async_trait]
impl Tool for FailTool {
    async fn call(&self, _args: Value, ctx: &ToolContext) -> Result<Value, BoxError> {
        Err(format!("backend unavailable for {}", ctx.context().user_id()).into())
    }
}

/// Always panics.
#[derive(Debug, Default)]
pub struct PanicTool;

#[async_trait]
impl Tool for PanicTool {
    async fn call(&self, _args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        panic!("tool bug")
    }
}

/// Sleeps `args.ms` milliseconds (default: an hour), returning early on cancellation.
#[derive(Debug)]
pub struct SlowTool {
    observed: Arc<Observations>,
}

#[async_trait]
impl Tool for SlowTool {
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, BoxError> {
        let ms = args["ms"].as_u64().unwrap_or(3_600_000);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "slept_ms": ms })),
            () = ctx.cancelled() => {
                self.observed.tool_saw_cancel.fetch_add(1, Ordering::SeqCst);
                Err("cancelled".into())
            }
        }
    }
}

/// A check that trips when the checked text contains `marker`.
pub fn trips_on(marker: &'static str) -> Check {
    Check::code(move |input| {
        if input.checked.text().contains(marker) {
            Verdict::trip(format!("the text contains {marker}"))
        } else {
            Verdict::Pass
        }
    })
}

/// The script registry builder: the script agent under the names `script` and `assistant`
/// (the name the gateway runs), tools `echo`, `fail`, `panic`, `slow`, and `guarded` (an echo
/// whose calls wait for approval), the marker-word guardrails and the handoffs of the module
/// docs.
pub fn script_registry_builder(observed: &Arc<Observations>) -> AgentRegistryBuilder {
    let for_agent = Arc::clone(observed);
    let for_assistant = Arc::clone(observed);
    AgentRegistry::builder()
        .agent("script", move || ScriptAgent {
            observed: Arc::clone(&for_agent),
        })
        .agent("assistant", move || ScriptAgent {
            observed: Arc::clone(&for_assistant),
        })
        .tool("echo", EchoTool)
        .tool_requiring_approval("guarded", EchoTool)
        .tool("fail", FailTool)
        .tool("panic", PanicTool)
        .tool(
            "slow",
            SlowTool {
                observed: Arc::clone(observed),
            },
        )
        .guardrail(InputGuardrail::new(
            "no_forbidden_input",
            trips_on("forbidden_input"),
        ))
        .guardrail(
            OutputGuardrail::new("no_forbidden_output", trips_on("forbidden_output")).stream(),
        )
        .guardrail(ToolGuardrail::input("no_forbidden_arg", trips_on("forbidden_arg")).deny_call())
        .handoffs("script", ["script", "assistant"])
        .handoffs("assistant", ["script"])
}

/// The script registry and what its runs observe.
pub fn script_registry() -> (AgentRegistry, Arc<Observations>) {
    let observed = Arc::new(Observations::default());
    let registry = script_registry_builder(&observed)
        .build()
        .unwrap_or_else(|e| unreachable!("static script registry is valid: {e}"));
    (registry, observed)
}
