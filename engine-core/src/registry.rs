//! The read-only [`AgentRegistry`] every engine draws fresh agent instances and shared tools
//! from.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::agent::Agent;
use crate::ids::UserId;
use crate::tool::{Tool, ToolPermissionPolicy};

/// The registry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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

/// A registered tool and whether its calls wait for approval.
struct RegisteredTool {
    tool: Arc<dyn Tool>,
    approval: bool,
}

/// Makes a fresh instance of one registered agent.
pub(crate) type AgentMaker = Arc<dyn Fn() -> Box<dyn Agent> + Send + Sync>;

/// Agents and tools known to the engines: read-only after [`build`](AgentRegistryBuilder::build),
/// cheap to clone and shared by all engines. It stores agent *constructors*: each run gets a
/// fresh agent instance, so no agent state crosses runs or users.
#[derive(Clone)]
pub struct AgentRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    agents: BTreeMap<Arc<str>, AgentMaker>,
    tools: BTreeMap<Arc<str>, RegisteredTool>,
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
    /// Every tool with its name, sorted by name.
    pub(crate) fn tools(&self) -> impl Iterator<Item = (&str, &Arc<dyn Tool>)> {
        self.inner.tools.iter().map(|(n, t)| (&**n, &t.tool))
    }
    pub(crate) fn tool(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.inner.tools.get(name).map(|t| &t.tool)
    }
    /// The registered (shared) name of an agent and its maker: one look-up for a run or a
    /// sub-agent.
    pub(crate) fn agent_entry(&self, name: &str) -> Option<(Arc<str>, AgentMaker)> {
        self.inner
            .agents
            .get_key_value(name)
            .map(|(k, make)| (Arc::clone(k), Arc::clone(make)))
    }
    /// The registered (shared) name of a tool, the tool, and whether it was registered as
    /// needing approval: one look-up for everything a call needs.
    pub(crate) fn tool_entry(&self, name: &str) -> Option<(Arc<str>, Arc<dyn Tool>, bool)> {
        self.inner
            .tools
            .get_key_value(name)
            .map(|(k, t)| (Arc::clone(k), Arc::clone(&t.tool), t.approval))
    }
    /// Whether the policy says `user`'s call of the (allowed) tool `name` with `args` must
    /// wait for approval (a tool registered as needing it always waits: see
    /// [`tool_entry`](Self::tool_entry)).
    pub(crate) fn policy_needs_approval(&self, user: &UserId, name: &str, args: &Value) -> bool {
        self.inner
            .policy
            .as_ref()
            .is_some_and(|p| p.needs_approval(user, name, args))
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
    tools: Vec<(String, RegisteredTool)>,
    policy: Option<Arc<dyn ToolPermissionPolicy>>,
}

impl std::fmt::Debug for AgentRegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn names<T>(v: &[(String, T)]) -> Vec<&str> {
            v.iter().map(|(n, _)| n.as_str()).collect()
        }
        f.debug_struct("AgentRegistryBuilder")
            .field("agents", &names(&self.agents))
            .field("tools", &names(&self.tools))
            .field("policy", &self.policy.is_some())
            .finish()
    }
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
        self.tools.push((
            name.into(),
            RegisteredTool {
                tool: Arc::new(tool),
                approval: false,
            },
        ));
        self
    }
    /// Registers a tool under `name` whose every call waits for the user's approval: the run
    /// emits `approval_requested` and the tool runs only once the user approves it through
    /// [`UserExecutionEngine::approve`](crate::UserExecutionEngine::approve).
    pub fn tool_requiring_approval(mut self, name: impl Into<String>, tool: impl Tool) -> Self {
        self.tools.push((
            name.into(),
            RegisteredTool {
                tool: Arc::new(tool),
                approval: true,
            },
        ));
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
