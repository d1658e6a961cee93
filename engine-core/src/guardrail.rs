//! Guardrails: checks that stop a run before harm. A [`Guardrail`] is code or an agent (run as
//! a sub-agent, a classifier model say) that answers [`Verdict::Pass`] or [`Verdict::Trip`]
//! with a reason, registered in the [`AgentRegistry`](crate::AgentRegistry) for one agent or
//! for every agent. One builder per kind, so that a mode that makes no sense for a kind (a
//! parallel output guardrail, a tool guardrail that holds text back) cannot be written:
//!
//! | builder | checks | modes |
//! |---|---|---|
//! | [`InputGuardrail`] | the user's message, before the run's first agent | blocking (default), [`parallel`](InputGuardrail::parallel) |
//! | [`OutputGuardrail`] | the final answer | hold (default), [`stream`](OutputGuardrail::stream) |
//! | [`ToolGuardrail::input`] | a tool call's arguments, before it runs | end the run (default), [`deny_call`](ToolGuardrail::deny_call) |
//! | [`ToolGuardrail::output`] | a tool's result, before the agent sees it | end the run (default), [`deny_call`](ToolGuardrail::deny_call) |
//!
//! A guardrail that returns an error, panics or passes its [`timeout`](InputGuardrail::timeout)
//! trips (fails closed), unless built with `fail_open()`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::BoxError;
use crate::context::UserExecutionContext;

/// What a guardrail answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Nothing wrong: the run goes on.
    Pass,
    /// Stop: the run ends (or, for a tool guardrail built with
    /// [`deny_call`](ToolGuardrail::deny_call), the call is denied).
    Trip {
        /// Why, in words the user may see.
        reason: String,
    },
}

impl Verdict {
    /// A trip with this reason.
    pub fn trip(reason: impl Into<String>) -> Self {
        Self::Trip {
            reason: reason.into(),
        }
    }
    /// Whether this is a trip.
    pub fn is_trip(&self) -> bool {
        matches!(self, Self::Trip { .. })
    }
}

/// Which kind of guardrail tripped. Carried by
/// [`AgentEvent::GuardrailTripped`](crate::AgentEvent::GuardrailTripped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GuardrailKind {
    /// On the user's message.
    Input,
    /// On the final answer.
    Output,
    /// On a tool call's arguments.
    ToolInput,
    /// On a tool's result.
    ToolOutput,
}

impl GuardrailKind {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
            Self::ToolInput => "tool_input",
            Self::ToolOutput => "tool_output",
        }
    }
}

/// What a trip did. Carried by
/// [`AgentEvent::GuardrailTripped`](crate::AgentEvent::GuardrailTripped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TripAction {
    /// The run ends with status `guardrail_tripped`.
    EndRun,
    /// Only this tool call is denied: the agent gets
    /// [`ToolError::GuardrailDenied`](crate::ToolError::GuardrailDenied) and goes on.
    DenyCall,
}

/// What a guardrail is shown.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Checked<'a> {
    /// The user's message (input guardrails).
    Input(&'a str),
    /// The final answer (output guardrails).
    Output(&'a str),
    /// A tool call about to run (tool-input guardrails).
    ToolCall {
        /// The tool.
        tool: &'a str,
        /// Its arguments, as the agent gave them.
        arguments: &'a Value,
    },
    /// A tool's result, before the agent sees it (tool-output guardrails).
    ToolResult {
        /// The tool.
        tool: &'a str,
        /// Its arguments.
        arguments: &'a Value,
        /// What it returned.
        result: &'a Value,
    },
}

impl Checked<'_> {
    /// The text an agent guardrail is given: the message or answer itself, or the tool call
    /// as JSON (`{"tool":..,"arguments":..}`, plus `"result"` for a result).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Self::Input(t) | Self::Output(t) => Cow::Borrowed(t),
            Self::ToolCall { tool, arguments } => {
                Cow::Owned(serde_json::json!({ "tool": tool, "arguments": arguments }).to_string())
            }
            Self::ToolResult {
                tool,
                arguments,
                result,
            } => Cow::Owned(
                serde_json::json!({ "tool": tool, "arguments": arguments, "result": result })
                    .to_string(),
            ),
        }
    }
}

/// Everything a guardrail sees: the checked data and the run's own context. Nothing of
/// another run or user.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct GuardrailInput<'a> {
    /// The run's context (user, thread, run, and the request of the checked agent).
    pub context: &'a UserExecutionContext,
    /// The agent whose message, answer or tool call is checked.
    pub agent: &'a str,
    /// What is checked.
    pub checked: Checked<'a>,
}

/// A guardrail written as async code (for one that awaits something: a service, a lock).
/// Plain synchronous code is simpler as [`Check::code`].
///
/// ```
/// use engine_core::{async_trait, BoxError, GuardrailCheck, GuardrailInput, Verdict};
///
/// struct NoShouting;
/// #[async_trait]
/// impl GuardrailCheck for NoShouting {
///     async fn check(&self, input: &GuardrailInput<'_>) -> Result<Verdict, BoxError> {
///         let text = input.checked.text();
///         Ok(if text.len() > 3 && text.chars().all(|c| !c.is_lowercase()) {
///             Verdict::trip("please do not shout")
///         } else {
///             Verdict::Pass
///         })
///     }
/// }
/// ```
#[async_trait]
pub trait GuardrailCheck: Send + Sync + 'static {
    /// Decides. An `Err` counts as a failure of the guardrail (it trips unless `fail_open`).
    async fn check(&self, input: &GuardrailInput<'_>) -> Result<Verdict, BoxError>;
}

/// A synchronous check (a closure).
pub(crate) type CodeFn = dyn Fn(&GuardrailInput<'_>) -> Verdict + Send + Sync;
/// How an agent guardrail's answer becomes a verdict.
pub(crate) type DecideFn = dyn Fn(&str) -> Verdict + Send + Sync;

/// How a guardrail decides: code, async code, or a registered agent.
#[derive(Clone)]
pub struct Check(pub(crate) CheckImpl);

#[derive(Clone)]
pub(crate) enum CheckImpl {
    Code(Arc<CodeFn>),
    Async(Arc<dyn GuardrailCheck>),
    Agent {
        agent: Arc<str>,
        decide: Arc<DecideFn>,
    },
}

impl Check {
    /// Synchronous code: the cheapest check (no allocation, no timer).
    pub fn code(f: impl Fn(&GuardrailInput<'_>) -> Verdict + Send + Sync + 'static) -> Self {
        Self(CheckImpl::Code(Arc::new(f)))
    }
    /// Async code, under the guardrail's timeout.
    pub fn code_async(check: impl GuardrailCheck) -> Self {
        Self(CheckImpl::Async(Arc::new(check)))
    }
    /// The registered agent `agent` (a classifier, say), run as a sub-agent of the checked
    /// agent on [`Checked::text`]; `decide` turns its answer into the verdict. Its events are
    /// framed by `sub_agent_started` / `sub_agent_completed` like any sub-agent's; its error,
    /// death or timeout is a failure of the guardrail.
    pub fn agent(
        agent: impl Into<String>,
        decide: impl Fn(&str) -> Verdict + Send + Sync + 'static,
    ) -> Self {
        Self(CheckImpl::Agent {
            agent: Arc::from(agent.into()),
            decide: Arc::new(decide),
        })
    }
    pub(crate) fn agent_name(&self) -> Option<&str> {
        match &self.0 {
            CheckImpl::Agent { agent, .. } => Some(agent),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            CheckImpl::Code(_) => f.write_str("Check::Code"),
            CheckImpl::Async(_) => f.write_str("Check::Async"),
            CheckImpl::Agent { agent, .. } => write!(f, "Check::Agent({agent})"),
        }
    }
}

/// Default [`timeout`](InputGuardrail::timeout) of a guardrail.
pub const DEFAULT_GUARDRAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// What every guardrail has: its name, check, time limit, and what a failure means.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub(crate) name: Arc<str>,
    pub(crate) check: Check,
    pub(crate) timeout: Duration,
    pub(crate) fail_open: bool,
}

impl Base {
    fn new(name: impl Into<String>, check: Check) -> Self {
        Self {
            name: Arc::from(name.into()),
            check,
            timeout: DEFAULT_GUARDRAIL_TIMEOUT,
            fail_open: false,
        }
    }
}

/// The methods every guardrail builder shares.
macro_rules! common_methods {
    () => {
        /// Longest the check may take (default 10 s, [`DEFAULT_GUARDRAIL_TIMEOUT`]); past it,
        /// the guardrail has failed.
        pub fn timeout(mut self, limit: Duration) -> Self {
            self.base.timeout = limit;
            self
        }
        /// A guardrail that fails (errors, panics, times out) lets the run go on (logged as a
        /// warning) instead of tripping. The default is to fail closed.
        pub fn fail_open(mut self) -> Self {
            self.base.fail_open = true;
            self
        }
    };
}

/// A guardrail on the user's message, for the run's first agent (after a handoff, the
/// message already passed).
///
/// - *blocking* (the default): the agent starts only once every blocking input guardrail has
///   passed. A trip runs no tool and streams no text.
/// - [`parallel`](Self::parallel): the agent starts at once, beside the check; a trip cancels
///   it (it is not polled again, so no tool call starts after the trip is known), and text it
///   streamed is retracted (`answer_retracted`). An agent that answers first waits for the
///   check before the run completes.
///
/// ```
/// use engine_core::{AgentRegistry, Check, InputGuardrail, Verdict};
///
/// let no_secrets = InputGuardrail::new(
///     "no_secrets",
///     Check::code(|input| {
///         if input.checked.text().to_lowercase().contains("password") {
///             Verdict::trip("asks for a secret")
///         } else {
///             Verdict::Pass
///         }
///     }),
/// );
/// let registry = AgentRegistry::builder().guardrail(no_secrets).build()?;
/// # Ok::<(), engine_core::RegistryError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "register it with AgentRegistryBuilder::guardrail"]
pub struct InputGuardrail {
    pub(crate) base: Base,
    pub(crate) parallel: bool,
}

impl InputGuardrail {
    /// A blocking input guardrail named `name`.
    pub fn new(name: impl Into<String>, check: Check) -> Self {
        Self {
            base: Base::new(name, check),
            parallel: false,
        }
    }
    /// Runs beside the agent instead of before it.
    pub fn parallel(mut self) -> Self {
        self.parallel = true;
        self
    }
    common_methods!();
}

/// A guardrail on the final answer of the agent that answers the run.
///
/// - *hold* (the default): the agent's `answer_delta`s are held back until the answer passes,
///   then sent at once as one delta; when it trips, the user sees no text at all.
/// - [`stream`](Self::stream): deltas flow as the agent streams; a trip is followed by
///   `answer_retracted`, which clients honour by removing the streamed text.
///
/// If an agent has both kinds, it holds.
#[derive(Debug, Clone)]
#[must_use = "register it with AgentRegistryBuilder::guardrail"]
pub struct OutputGuardrail {
    pub(crate) base: Base,
    pub(crate) stream: bool,
}

impl OutputGuardrail {
    /// A holding output guardrail named `name`.
    pub fn new(name: impl Into<String>, check: Check) -> Self {
        Self {
            base: Base::new(name, check),
            stream: false,
        }
    }
    /// Lets the deltas flow; a trip retracts them.
    pub fn stream(mut self) -> Self {
        self.stream = true;
        self
    }
    common_methods!();
}

/// A guardrail on tool calls of the agents it is registered for (sub-agents included, each by
/// its own name): on the arguments before the call runs ([`input`](Self::input)) or on the
/// result before the agent sees it ([`output`](Self::output)). A trip ends the run, or with
/// [`deny_call`](Self::deny_call) denies only that call (`tool_completed` status
/// `guardrail_denied`; the agent gets [`ToolError::GuardrailDenied`](crate::ToolError)).
/// Either way a tool-input trip never runs the tool.
#[derive(Debug, Clone)]
#[must_use = "register it with AgentRegistryBuilder::guardrail"]
pub struct ToolGuardrail {
    pub(crate) base: Base,
    pub(crate) on_result: bool,
    pub(crate) deny_call: bool,
}

impl ToolGuardrail {
    /// Checks each call's arguments before it runs (and before any approval is asked).
    pub fn input(name: impl Into<String>, check: Check) -> Self {
        Self {
            base: Base::new(name, check),
            on_result: false,
            deny_call: false,
        }
    }
    /// Checks each call's result before the agent sees it.
    pub fn output(name: impl Into<String>, check: Check) -> Self {
        Self {
            base: Base::new(name, check),
            on_result: true,
            deny_call: false,
        }
    }
    /// A trip denies only this call instead of ending the run.
    pub fn deny_call(mut self) -> Self {
        self.deny_call = true;
        self
    }
    common_methods!();
}

/// A guardrail of any kind, as the registry takes it (`From` each builder).
#[derive(Debug, Clone)]
pub struct Guardrail(pub(crate) Arc<Def>);

/// One registered guardrail.
#[derive(Debug)]
pub(crate) struct Def {
    pub(crate) base: Base,
    pub(crate) mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Input { parallel: bool },
    Output { stream: bool },
    ToolInput { deny_call: bool },
    ToolOutput { deny_call: bool },
}

impl Def {
    pub(crate) fn kind(&self) -> GuardrailKind {
        match self.mode {
            Mode::Input { .. } => GuardrailKind::Input,
            Mode::Output { .. } => GuardrailKind::Output,
            Mode::ToolInput { .. } => GuardrailKind::ToolInput,
            Mode::ToolOutput { .. } => GuardrailKind::ToolOutput,
        }
    }
    pub(crate) fn action(&self) -> TripAction {
        match self.mode {
            Mode::ToolInput { deny_call: true } | Mode::ToolOutput { deny_call: true } => {
                TripAction::DenyCall
            }
            _ => TripAction::EndRun,
        }
    }
}

impl Guardrail {
    /// The guardrail's name.
    pub fn name(&self) -> &str {
        &self.0.base.name
    }
    /// Its kind.
    pub fn kind(&self) -> GuardrailKind {
        self.0.kind()
    }
}

impl From<InputGuardrail> for Guardrail {
    fn from(g: InputGuardrail) -> Self {
        Self(Arc::new(Def {
            base: g.base,
            mode: Mode::Input {
                parallel: g.parallel,
            },
        }))
    }
}

impl From<OutputGuardrail> for Guardrail {
    fn from(g: OutputGuardrail) -> Self {
        Self(Arc::new(Def {
            base: g.base,
            mode: Mode::Output { stream: g.stream },
        }))
    }
}

impl From<ToolGuardrail> for Guardrail {
    fn from(g: ToolGuardrail) -> Self {
        let deny_call = g.deny_call;
        Self(Arc::new(Def {
            base: g.base,
            mode: if g.on_result {
                Mode::ToolOutput { deny_call }
            } else {
                Mode::ToolInput { deny_call }
            },
        }))
    }
}

/// The guardrails that apply to one agent, sorted by kind and mode (built once, with the
/// registry). An agent without any has none of these at all (`None`), so a run without
/// guardrails pays nothing for them.
#[derive(Debug, Default)]
pub(crate) struct Guards {
    pub(crate) input_blocking: Vec<Arc<Def>>,
    pub(crate) input_parallel: Vec<Arc<Def>>,
    pub(crate) output: Vec<Arc<Def>>,
    /// Some output guardrail holds the answer's deltas back.
    pub(crate) hold: bool,
    pub(crate) tool_input: Vec<Arc<Def>>,
    pub(crate) tool_output: Vec<Arc<Def>>,
}

impl Guards {
    /// Whether any input guardrail applies (the run then takes the guarded way).
    pub(crate) fn on_input(&self) -> bool {
        !self.input_blocking.is_empty() || !self.input_parallel.is_empty()
    }

    /// Sorts `defs`; `None` when there are none.
    pub(crate) fn of<'a>(defs: impl Iterator<Item = &'a Arc<Def>>) -> Option<Arc<Self>> {
        let mut g = Self::default();
        let mut any = false;
        for def in defs {
            any = true;
            let def = Arc::clone(def);
            match def.mode {
                Mode::Input { parallel: false } => g.input_blocking.push(def),
                Mode::Input { parallel: true } => g.input_parallel.push(def),
                Mode::Output { stream } => {
                    g.hold |= !stream;
                    g.output.push(def);
                }
                Mode::ToolInput { .. } => g.tool_input.push(def),
                Mode::ToolOutput { .. } => g.tool_output.push(def),
            }
        }
        any.then(|| Arc::new(g))
    }
}
