//! The read-only [`AgentRegistry`] every engine draws fresh agent instances and shared tools
//! from.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::agent::Agent;
use crate::guardrail::{Def, Guardrail, Guards};
use crate::handoff::{HandoffInput, DEFAULT_MAX_HANDOFFS};
use crate::ids::UserId;
use crate::tool::{Tool, ToolPermissionPolicy, ToolSource};

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
    /// A guardrail or handoff names an agent that is not registered.
    #[error("{used_by} names agent `{name}`, which is not registered; register it with AgentRegistryBuilder::agent")]
    UnknownAgent {
        /// What names it (`guardrail \`x\``, `handoff from \`y\``).
        used_by: String,
        /// The unknown name.
        name: String,
    },
}

/// A registered tool and whether its calls wait for approval.
struct RegisteredTool {
    tool: Arc<dyn Tool>,
    approval: bool,
}

/// Makes a fresh instance of one registered agent.
pub(crate) type AgentMaker = Arc<dyn Fn() -> Box<dyn Agent> + Send + Sync>;

/// A handoff target's input filter.
pub(crate) type HandoffFilter = dyn Fn(&HandoffInput<'_>) -> String + Send + Sync;

/// A registered agent: its maker, the guardrails that apply to it, and whom it may hand off
/// to.
struct RegisteredAgent {
    maker: AgentMaker,
    guards: Option<Arc<Guards>>,
    /// Allowed handoff targets, sorted (the registry's shared names).
    handoff_to: Vec<Arc<str>>,
    /// How a handoff to this agent filters its input.
    filter: Option<Arc<HandoffFilter>>,
}

/// What a run or sub-agent needs of one registered agent (one look-up).
#[derive(Clone)]
pub(crate) struct AgentEntry {
    pub(crate) name: Arc<str>,
    pub(crate) maker: AgentMaker,
    pub(crate) guards: Option<Arc<Guards>>,
}

/// Agents and tools known to the engines: read-only after [`build`](AgentRegistryBuilder::build),
/// cheap to clone and shared by all engines. It stores agent *constructors*: each run gets a
/// fresh agent instance, so no agent state crosses runs or users.
#[derive(Clone)]
pub struct AgentRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    agents: BTreeMap<Arc<str>, RegisteredAgent>,
    tools: BTreeMap<Arc<str>, RegisteredTool>,
    sources: Vec<Arc<dyn ToolSource>>,
    policy: Option<Arc<dyn ToolPermissionPolicy>>,
    /// The guardrails registered for every agent (a pipeline run's own).
    global_guards: Option<Arc<Guards>>,
    max_handoffs: u32,
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
    /// Every tool with its name: the registered ones sorted by name, then those of the tool
    /// sources (in the order the sources were added) whose names no registered tool has.
    pub(crate) fn tools(&self) -> Vec<(Arc<str>, Arc<dyn Tool>)> {
        let mut all: Vec<(Arc<str>, Arc<dyn Tool>)> = self
            .inner
            .tools
            .iter()
            .map(|(n, t)| (Arc::clone(n), Arc::clone(&t.tool)))
            .collect();
        for source in &self.inner.sources {
            for t in source.tools() {
                if !self.inner.tools.contains_key(&**t.name()) {
                    all.push((Arc::clone(t.name()), Arc::clone(t.tool())));
                }
            }
        }
        all
    }
    /// The registered (shared) name of an agent, its maker and guardrails: one look-up for a
    /// run or a sub-agent.
    pub(crate) fn agent_entry(&self, name: &str) -> Option<AgentEntry> {
        self.inner
            .agents
            .get_key_value(name)
            .map(|(k, a)| AgentEntry {
                name: Arc::clone(k),
                maker: Arc::clone(&a.maker),
                guards: a.guards.clone(),
            })
    }
    /// The guardrails registered for every agent (those of a pipeline run).
    pub(crate) fn global_guards(&self) -> Option<Arc<Guards>> {
        self.inner.global_guards.clone()
    }
    /// The agents `from` may hand the run off to, sorted.
    pub fn handoff_targets(&self, from: &str) -> impl Iterator<Item = &str> {
        self.inner
            .agents
            .get(from)
            .into_iter()
            .flat_map(|a| a.handoff_to.iter().map(|t| &**t))
    }
    /// The shared name of `to` if `from` may hand off to it.
    pub(crate) fn handoff_target(&self, from: &str, to: &str) -> Option<Arc<str>> {
        let a = self.inner.agents.get(from)?;
        a.handoff_to.iter().find(|t| &***t == to).cloned()
    }
    /// The input filter of handoffs to `to`.
    pub(crate) fn handoff_filter(&self, to: &str) -> Option<Arc<HandoffFilter>> {
        self.inner.agents.get(to)?.filter.clone()
    }
    /// Most handoffs one run may make.
    pub fn max_handoffs(&self) -> u32 {
        self.inner.max_handoffs
    }
    /// The registered (shared) name of a tool, the tool, and whether it was registered as
    /// needing approval: one look-up for everything a call needs.
    /// A registered tool wins over a tool source's of the same name.
    pub(crate) fn tool_entry(&self, name: &str) -> Option<(Arc<str>, Arc<dyn Tool>, bool)> {
        if let Some((k, t)) = self.inner.tools.get_key_value(name) {
            return Some((Arc::clone(k), Arc::clone(&t.tool), t.approval));
        }
        self.inner.sources.iter().find_map(|s| {
            s.tool(name).map(|t| {
                let approval = t.requires_approval();
                (Arc::clone(t.name()), Arc::clone(t.tool()), approval)
            })
        })
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
            .field("tool_sources", &self.inner.sources.len())
            .field("policy", &self.inner.policy.is_some())
            .field("max_handoffs", &self.inner.max_handoffs)
            .finish_non_exhaustive()
    }
}

/// Collects agents, tools and a policy for an [`AgentRegistry`].
#[derive(Default)]
#[must_use = "a builder does nothing until build() is called"]
pub struct AgentRegistryBuilder {
    agents: Vec<(String, AgentMaker)>,
    tools: Vec<(String, RegisteredTool)>,
    sources: Vec<Arc<dyn ToolSource>>,
    policy: Option<Arc<dyn ToolPermissionPolicy>>,
    /// Guardrails, each for one agent or (`None`) for every agent, in registration order.
    guardrails: Vec<(Option<String>, Guardrail)>,
    handoffs: Vec<(String, Vec<String>)>,
    filters: Vec<(String, Arc<HandoffFilter>)>,
    max_handoffs: Option<u32>,
}

impl std::fmt::Debug for AgentRegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn names<T>(v: &[(String, T)]) -> Vec<&str> {
            v.iter().map(|(n, _)| n.as_str()).collect()
        }
        f.debug_struct("AgentRegistryBuilder")
            .field("agents", &names(&self.agents))
            .field("tools", &names(&self.tools))
            .field("tool_sources", &self.sources.len())
            .field("policy", &self.policy.is_some())
            .field("guardrails", &self.guardrails.len())
            .finish_non_exhaustive()
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
    /// Adds a source of tools known only at run time (an MCP server's tools, for one), consulted
    /// after the registered tools; see [`ToolSource`].
    pub fn tool_source(mut self, source: Arc<dyn ToolSource>) -> Self {
        self.sources.push(source);
        self
    }
    /// Sets the permission policy (default: every user may call every tool).
    pub fn permission_policy(mut self, policy: impl ToolPermissionPolicy) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }
    /// Registers a guardrail for every agent (an [`InputGuardrail`](crate::InputGuardrail),
    /// [`OutputGuardrail`](crate::OutputGuardrail) or [`ToolGuardrail`](crate::ToolGuardrail)).
    /// Guardrails of one kind run in registration order, those for every agent first; the
    /// first trip decides.
    pub fn guardrail(mut self, guardrail: impl Into<Guardrail>) -> Self {
        self.guardrails.push((None, guardrail.into()));
        self
    }
    /// Registers a guardrail for the agent `agent` only (also when it runs as a sub-agent,
    /// for its tool calls; see [`ToolGuardrail`](crate::ToolGuardrail)).
    pub fn guardrail_for(
        mut self,
        agent: impl Into<String>,
        guardrail: impl Into<Guardrail>,
    ) -> Self {
        self.guardrails.push((Some(agent.into()), guardrail.into()));
        self
    }
    /// Lets the agent `from`, when it is the run's top-level agent, hand the run off to each of
    /// `targets` ([`RunContext::handoff`](crate::RunContext::handoff)). Repeated calls add
    /// targets.
    pub fn handoffs<I, S>(mut self, from: impl Into<String>, targets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.handoffs
            .push((from.into(), targets.into_iter().map(Into::into).collect()));
        self
    }
    /// Sets what the agent `to` runs on when a run is handed off to it: `filter` gets the
    /// user's message and the input the agent handing off gave (trim a history, drop what the
    /// target must not see, summarise), and returns the target's input. Default: the input
    /// given to the handoff.
    pub fn handoff_filter(
        mut self,
        to: impl Into<String>,
        filter: impl Fn(&HandoffInput<'_>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.filters.push((to.into(), Arc::new(filter)));
        self
    }
    /// Most handoffs one run may make (default [`DEFAULT_MAX_HANDOFFS`], 8); the next ends
    /// the run `failed` with [`HandoffError::LimitReached`](crate::HandoffError::LimitReached).
    pub fn max_handoffs(mut self, limit: u32) -> Self {
        self.max_handoffs = Some(limit);
        self
    }
    /// Freezes the registry.
    ///
    /// # Errors
    /// [`RegistryError`] for an empty or repeated name, or a guardrail or handoff naming an
    /// agent that is not registered.
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
        let makers = collect("agent", self.agents)?;
        let unknown = |used_by: String, name: &str| RegistryError::UnknownAgent {
            used_by,
            name: name.to_owned(),
        };
        for (agent, g) in &self.guardrails {
            if let Some(agent) = agent.as_deref().filter(|a| !makers.contains_key(*a)) {
                return Err(unknown(format!("guardrail `{}`", g.name()), agent));
            }
            if let Some(checker) = g.0.base.check.agent_name() {
                if !makers.contains_key(checker) {
                    return Err(unknown(format!("guardrail `{}`", g.name()), checker));
                }
            }
        }
        let global: Vec<&Arc<Def>> = self
            .guardrails
            .iter()
            .filter(|(a, _)| a.is_none())
            .map(|(_, g)| &g.0)
            .collect();
        let mut agents = BTreeMap::new();
        for (name, maker) in makers.iter() {
            let own = self
                .guardrails
                .iter()
                .filter(|(a, _)| a.as_deref() == Some(&**name))
                .map(|(_, g)| &g.0);
            agents.insert(
                Arc::clone(name),
                RegisteredAgent {
                    maker: Arc::clone(maker),
                    guards: Guards::of(global.iter().copied().chain(own)),
                    handoff_to: Vec::new(),
                    filter: None,
                },
            );
        }
        for (from, targets) in self.handoffs {
            for to in targets {
                let Some((shared, _)) = makers.get_key_value(to.as_str()) else {
                    return Err(unknown(format!("handoff from `{from}`"), &to));
                };
                let Some(a) = agents.get_mut(from.as_str()) else {
                    return Err(unknown(format!("handoff to `{to}`"), &from));
                };
                if !a.handoff_to.contains(shared) {
                    a.handoff_to.push(Arc::clone(shared));
                    a.handoff_to.sort();
                }
            }
        }
        for (to, filter) in self.filters {
            let Some(a) = agents.get_mut(to.as_str()) else {
                return Err(unknown("handoff filter".into(), &to));
            };
            a.filter = Some(filter);
        }
        Ok(AgentRegistry {
            inner: Arc::new(RegistryInner {
                agents,
                tools: collect("tool", self.tools)?,
                sources: self.sources,
                policy: self.policy,
                global_guards: Guards::of(global.into_iter()),
                max_handoffs: self.max_handoffs.unwrap_or(DEFAULT_MAX_HANDOFFS),
            }),
        })
    }
}
