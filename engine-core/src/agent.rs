//! The [`Agent`] and [`Tool`] traits, the optional [`ToolPermissionPolicy`], and the read-only
//! [`AgentRegistry`] every engine draws fresh agent instances from.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::context::UserExecutionContext;
use crate::ids::UserId;
use crate::run::RunContext;

/// The error type agents and tools return: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An AI agent: answers one input message, thinking and calling tools through its
/// [`RunContext`].
///
/// A fresh instance is created for every run (see [`AgentRegistry`]), so fields of `self` are
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

/// What a tool sees of the run that called it.
#[derive(Debug, Clone)]
pub struct ToolContext {
    context: UserExecutionContext,
    cancel: CancellationToken,
}

impl ToolContext {
    pub(crate) fn new(context: UserExecutionContext, cancel: CancellationToken) -> Self {
        Self { context, cancel }
    }
    /// The context of the calling run (user, thread, run, request).
    pub fn context(&self) -> &UserExecutionContext {
        &self.context
    }
    /// Whether the calling run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    /// Resolves when the calling run is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }
}

/// A tool an agent may call with JSON arguments. Tools are shared by all runs (behind an `Arc`),
/// so a tool must keep no per-user mutable state; per-call data arrives in the arguments and the
/// [`ToolContext`].
///
/// ```
/// use engine_core::{async_trait, BoxError, Tool, ToolContext};
/// use serde_json::{json, Value};
///
/// struct Add;
///
/// #[async_trait]
/// impl Tool for Add {
///     async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
///         let a = args["a"].as_f64().ok_or("argument `a` must be a number")?;
///         let b = args["b"].as_f64().ok_or("argument `b` must be a number")?;
///         Ok(json!(a + b))
///     }
/// }
/// ```
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// Performs the call. An `Err` or a panic is reported as a `tool_completed` with status
    /// `error` and returned to the agent as a [`ToolError`](crate::ToolError).
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, BoxError>;
}

/// Decides whether a user may call a tool. Denied calls do not run; the agent gets
/// [`ToolError::PermissionDenied`](crate::ToolError::PermissionDenied) and the user sees a
/// `tool_completed` with status `permission_denied`.
///
/// Any `Fn(&UserId, &str) -> bool` closure is a policy:
///
/// ```
/// use engine_core::{AgentRegistry, UserId};
///
/// let registry = AgentRegistry::builder()
///     .permission_policy(|user: &UserId, tool: &str| tool != "shell" || user.as_str() == "admin")
///     .build()?;
/// # Ok::<(), engine_core::RegistryError>(())
/// ```
pub trait ToolPermissionPolicy: Send + Sync + 'static {
    /// `true` when `user` may call `tool`.
    fn is_allowed(&self, user: &UserId, tool: &str) -> bool;
}

impl<F> ToolPermissionPolicy for F
where
    F: Fn(&UserId, &str) -> bool + Send + Sync + 'static,
{
    fn is_allowed(&self, user: &UserId, tool: &str) -> bool {
        self(user, tool)
    }
}

/// The registry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two agents or two tools were registered under one name.
    #[error("duplicate {kind} name `{name}`; each {kind} needs a unique name")]
    Duplicate {
        /// `agent` or `tool`.
        kind: &'static str,
        /// The repeated name.
        name: String,
    },
    /// A name was empty or whitespace.
    #[error("{kind} names must not be empty")]
    EmptyName {
        /// `agent` or `tool`.
        kind: &'static str,
    },
}

type AgentMaker = Arc<dyn Fn() -> Box<dyn Agent> + Send + Sync>;

/// Agents and tools known to the engines: read-only after [`build`](AgentRegistryBuilder::build),
/// cheap to clone and shared by all engines. It stores agent *constructors*: each run gets a
/// fresh agent instance, so no agent state crosses runs or users.
#[derive(Clone)]
pub struct AgentRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    agents: BTreeMap<Arc<str>, AgentMaker>,
    tools: BTreeMap<Arc<str>, Arc<dyn Tool>>,
    policy: Option<Arc<dyn ToolPermissionPolicy>>,
}

impl AgentRegistry {
    /// Starts an empty registry.
    pub fn builder() -> AgentRegistryBuilder {
        AgentRegistryBuilder::default()
    }
    /// Registered agent names, sorted.
    pub fn agent_names(&self) -> impl Iterator<Item = &str> {
        self.inner.agents.keys().map(|k| &**k)
    }
    /// Registered tool names, sorted.
    pub fn tool_names(&self) -> impl Iterator<Item = &str> {
        self.inner.tools.keys().map(|k| &**k)
    }
    /// Whether an agent of this name is registered.
    pub fn has_agent(&self, name: &str) -> bool {
        self.inner.agents.contains_key(name)
    }
    /// A fresh instance of the named agent.
    pub(crate) fn create_agent(&self, name: &str) -> Option<Box<dyn Agent>> {
        self.inner.agents.get(name).map(|make| make())
    }
    pub(crate) fn tool(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.inner.tools.get(name)
    }
    /// The registered (shared) name of an agent, so runs need not copy it.
    pub(crate) fn agent_name(&self, name: &str) -> Option<Arc<str>> {
        self.inner
            .agents
            .get_key_value(name)
            .map(|(k, _)| Arc::clone(k))
    }
    /// The registered (shared) name of a tool and the tool.
    pub(crate) fn tool_entry(&self, name: &str) -> Option<(Arc<str>, Arc<dyn Tool>)> {
        self.inner
            .tools
            .get_key_value(name)
            .map(|(k, t)| (Arc::clone(k), Arc::clone(t)))
    }
    pub(crate) fn is_allowed(&self, user: &UserId, tool: &str) -> bool {
        self.inner
            .policy
            .as_ref()
            .is_none_or(|p| p.is_allowed(user, tool))
    }
}

impl std::fmt::Debug for AgentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRegistry")
            .field("agents", &self.inner.agents.keys().collect::<Vec<_>>())
            .field("tools", &self.inner.tools.keys().collect::<Vec<_>>())
            .field("policy", &self.inner.policy.is_some())
            .finish()
    }
}

/// Collects agents, tools and a policy for an [`AgentRegistry`].
#[derive(Default)]
#[must_use = "a builder does nothing until build() is called"]
pub struct AgentRegistryBuilder {
    agents: Vec<(String, AgentMaker)>,
    tools: Vec<(String, Arc<dyn Tool>)>,
    policy: Option<Arc<dyn ToolPermissionPolicy>>,
}

impl AgentRegistryBuilder {
    /// Registers an agent constructor under `name`; it is called once per run.
    pub fn agent<A, F>(mut self, name: impl Into<String>, make: F) -> Self
    where
        A: Agent,
        F: Fn() -> A + Send + Sync + 'static,
    {
        self.agents.push((
            name.into(),
            Arc::new(move || Box::new(make()) as Box<dyn Agent>),
        ));
        self
    }
    /// Registers a tool under `name`.
    pub fn tool(mut self, name: impl Into<String>, tool: impl Tool) -> Self {
        self.tools.push((name.into(), Arc::new(tool)));
        self
    }
    /// Sets the permission policy (default: every user may call every tool).
    pub fn permission_policy(mut self, policy: impl ToolPermissionPolicy) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }
    /// Freezes the registry.
    ///
    /// # Errors
    /// [`RegistryError`] for an empty or repeated name.
    pub fn build(self) -> Result<AgentRegistry, RegistryError> {
        fn collect<T>(
            kind: &'static str,
            items: Vec<(String, T)>,
        ) -> Result<BTreeMap<Arc<str>, T>, RegistryError> {
            let mut map = BTreeMap::new();
            for (name, item) in items {
                if name.trim().is_empty() {
                    return Err(RegistryError::EmptyName { kind });
                }
                if map.contains_key(name.as_str()) {
                    return Err(RegistryError::Duplicate { kind, name });
                }
                map.insert(Arc::from(name), item);
            }
            Ok(map)
        }
        Ok(AgentRegistry {
            inner: Arc::new(RegistryInner {
                agents: collect("agent", self.agents)?,
                tools: collect("tool", self.tools)?,
                policy: self.policy,
            }),
        })
    }
}
