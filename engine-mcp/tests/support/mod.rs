//! What the engine-mcp suites share: where the third-party servers are (installed by
//! `.ci/run`), a factory whose registry has the MCP tools, and an agent that calls one tool.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine_core::{
    async_trait, Agent, AgentEvent, AgentRegistry, BoxError, EngineConfig, EventEnvelope,
    RunContext, ToolSource, UserExecutionContext,
};
use engine_factory::{ExecutionEngineFactory, FactoryConfig};
use engine_mcp::{McpConfig, McpTools};
use serde_json::{json, Value};

/// The repository's root (the npm folder and the venv are under its `target/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A prerequisite: `Some(path)` when present; outside CI a missing one skips the test with a
/// message, under `CI=true` it fails it.
pub fn require(what: &str, env: &str, default: PathBuf) -> Option<PathBuf> {
    let path = std::env::var_os(env).map_or(default, PathBuf::from);
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "{what} is not installed at {} (set {env}, or run .ci/run which installs it)",
        path.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("skipped: {msg}");
    None
}

/// `@modelcontextprotocol/server-everything`'s launcher (npm, `target/ci-npm`).
pub fn everything() -> Option<PathBuf> {
    require(
        "@modelcontextprotocol/server-everything",
        "ENGINE_MCP_EVERYTHING",
        root().join("target/ci-npm/node_modules/.bin/mcp-server-everything"),
    )
}

/// `mcp-server-time` (PyPI, in the venv `target/ci-mcp-venv`).
pub fn time_server() -> Option<PathBuf> {
    require(
        "mcp-server-time",
        "ENGINE_MCP_TIME",
        root().join("target/ci-mcp-venv/bin/mcp-server-time"),
    )
}

/// A Python 3 for the identity server (no packages needed).
pub fn python() -> Option<PathBuf> {
    let venv = root().join("target/ci-mcp-venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    require(
        "python3",
        "ENGINE_MCP_PYTHON",
        PathBuf::from("/usr/bin/python3"),
    )
}

/// The identity server's script.
pub fn identity_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/identity_server.py")
        .display()
        .to_string()
}

/// Calls the tool named in its input (`{"tool": .., "args": ..}`) and answers the result as
/// JSON, or `error: <message>`.
pub struct Caller;

#[async_trait]
impl Agent for Caller {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let req: Value = serde_json::from_str(input)?;
        let name = req["tool"].as_str().unwrap_or_default();
        match ctx.call_tool(name, req["args"].clone()).await {
            Ok(v) => Ok(v.to_string()),
            Err(e) => Ok(format!("error: {e}")),
        }
    }
}

/// Answers the names of the tools it is offered, as a JSON array.
pub struct Lister;

#[async_trait]
impl Agent for Lister {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        let specs: Vec<Value> = ctx
            .tools()
            .specs()
            .into_iter()
            .map(|s| json!({"name": s.name, "description": s.description, "parameters": s.parameters}))
            .collect();
        Ok(Value::Array(specs).to_string())
    }
}

pub struct Setup {
    pub tools: Arc<McpTools>,
    pub factory: ExecutionEngineFactory,
}

/// The MCP tools of `config` (JSON text) in a factory with the agents `caller` and `lister`.
pub async fn setup(config: &str, engine: EngineConfig) -> Setup {
    let config = McpConfig::parse(config, Path::new("test.json")).expect("valid config");
    let tools = McpTools::start(config).await;
    let registry = AgentRegistry::builder()
        .agent("caller", || Caller)
        .agent("lister", || Lister)
        .tool_source(Arc::clone(&tools) as Arc<dyn ToolSource>)
        .build()
        .unwrap();
    let factory = ExecutionEngineFactory::new(
        FactoryConfig::builder()
            .max_engines_per_user(4)
            .engine(engine)
            .build()
            .unwrap(),
        registry,
    )
    .unwrap();
    Setup { tools, factory }
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs `agent` with `input` as `user`; `on` sees every event (and may cancel the run by
/// returning true). Returns the events up to the terminal one.
pub async fn run_as(
    s: &Setup,
    user: &str,
    agent: &str,
    input: &str,
    mut on: impl FnMut(&EventEnvelope, &engine_factory::EngineHandle, &UserExecutionContext) -> bool,
) -> Vec<EventEnvelope> {
    let ctx = UserExecutionContext::new(user, "thread-1", format!("run-{}", next_id())).unwrap();
    let mut sub = s.factory.subscribe(ctx.user_id());
    let engine = s.factory.create_for_user(&ctx).unwrap();
    let handle = engine.spawn(&ctx, agent, input).unwrap();
    let mut seen = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(60), sub.recv())
            .await
            .expect("events keep coming")
            .expect("open");
        if on(&e, &engine, &ctx) {
            handle.cancel();
        }
        let end = e.event.is_terminal();
        seen.push(e);
        if end {
            break;
        }
    }
    engine.close().await;
    seen
}

/// Calls one tool as `user` through the `caller` agent; the run's answer and its events.
pub async fn call(s: &Setup, user: &str, tool: &str, args: Value) -> (String, Vec<EventEnvelope>) {
    let input = json!({"tool": tool, "args": args}).to_string();
    let events = run_as(s, user, "caller", &input, |_, _, _| false).await;
    (result(&events), events)
}

/// The result text of a run's terminal event.
pub fn result(events: &[EventEnvelope]) -> String {
    match &events.last().unwrap().event {
        AgentEvent::AgentCompleted { result, .. } => result.clone().unwrap_or_default(),
        other => panic!("not terminal: {other:?}"),
    }
}

/// The `tool_completed` events: (tool, status, error).
pub fn completions(
    events: &[EventEnvelope],
) -> Vec<(String, engine_core::ToolStatus, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::ToolCompleted {
                tool_name,
                status,
                error,
                ..
            } => Some((tool_name.to_string(), *status, error.clone())),
            _ => None,
        })
        .collect()
}
