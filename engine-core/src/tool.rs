//! The [`Tool`] trait, what a tool sees of its run ([`ToolContext`]), the optional
//! [`ToolPermissionPolicy`], and [`ToolSource`] (tools known only at run time, such as an MCP
//! server's).

use async_trait::async_trait;
use serde_json::Value;

use std::sync::Arc;

use crate::agent::BoxError;
use crate::context::UserExecutionContext;
use crate::ids::UserId;
use crate::run::control::RunControl;

/// What a tool sees of the run that called it.
#[derive(Debug, Clone)]
pub struct ToolContext {
    context: UserExecutionContext,
    control: Arc<RunControl>,
}

impl ToolContext {
    pub(crate) fn new(context: UserExecutionContext, control: Arc<RunControl>) -> Self {
        Self { context, control }
    }
    /// The context of the calling run (user, thread, run, request).
    pub fn context(&self) -> &UserExecutionContext {
        &self.context
    }
    /// Whether the calling run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.control.cancel.is_set()
    }
    /// Resolves when the calling run is cancelled.
    pub async fn cancelled(&self) {
        self.control.cancel.wait().await;
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

    /// What the tool does, for a model choosing tools (one or two sentences). Default: none.
    fn description(&self) -> Option<&str> {
        None
    }

    /// A JSON Schema of the arguments object, for a model calling the tool. Default: none
    /// (models then see an object with any properties).
    ///
    /// ```
    /// use engine_core::{async_trait, BoxError, Tool, ToolContext};
    /// use serde_json::{json, Value};
    ///
    /// struct Shout;
    /// #[async_trait]
    /// impl Tool for Shout {
    ///     async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
    ///         Ok(json!(args["text"].as_str().unwrap_or_default().to_uppercase()))
    ///     }
    ///     fn description(&self) -> Option<&str> {
    ///         Some("Returns the text in capitals.")
    ///     }
    ///     fn parameters(&self) -> Option<Value> {
    ///         Some(json!({
    ///             "type": "object",
    ///             "properties": { "text": { "type": "string" } },
    ///             "required": ["text"]
    ///         }))
    ///     }
    /// }
    /// ```
    fn parameters(&self) -> Option<Value> {
        None
    }
}

/// How a tool presents itself to a model: its registered name, description and argument
/// schema (from [`ToolDispatcher::specs`](crate::ToolDispatcher::specs)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ToolSpec {
    /// The registered name.
    pub name: String,
    /// [`Tool::description`].
    pub description: Option<String>,
    /// [`Tool::parameters`].
    pub parameters: Option<Value>,
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

    /// `true` when this call (by `user`, of `tool`, with `args`) must wait for the user's
    /// approval before it runs, besides the tools registered with
    /// [`AgentRegistryBuilder::tool_requiring_approval`](crate::AgentRegistryBuilder::tool_requiring_approval).
    /// Asked only for allowed calls. The default asks for none.
    ///
    /// ```
    /// use engine_core::{ToolPermissionPolicy, UserId};
    /// use serde_json::Value;
    ///
    /// /// Transfers above 100 need the user's approval.
    /// struct BigTransfers;
    /// impl ToolPermissionPolicy for BigTransfers {
    ///     fn is_allowed(&self, _user: &UserId, _tool: &str) -> bool { true }
    ///     fn needs_approval(&self, _user: &UserId, tool: &str, args: &Value) -> bool {
    ///         tool == "transfer" && args["amount"].as_f64().unwrap_or(0.0) > 100.0
    ///     }
    /// }
    /// ```
    fn needs_approval(&self, user: &UserId, tool: &str, args: &Value) -> bool {
        let _ = (user, tool, args);
        false
    }
}

impl<F> ToolPermissionPolicy for F
where
    F: Fn(&UserId, &str) -> bool + Send + Sync + 'static,
{
    fn is_allowed(&self, user: &UserId, tool: &str) -> bool {
        self(user, tool)
    }
}

/// A tool offered by a [`ToolSource`]: its name, the tool, and whether its calls wait for the
/// user's approval.
#[derive(Clone)]
pub struct SourcedTool {
    name: Arc<str>,
    tool: Arc<dyn Tool>,
    requires_approval: bool,
}

impl SourcedTool {
    /// A tool named `name` whose calls run without approval.
    pub fn new(name: impl Into<Arc<str>>, tool: Arc<dyn Tool>) -> Self {
        Self {
            name: name.into(),
            tool,
            requires_approval: false,
        }
    }
    /// Sets whether every call waits for the user's approval (as
    /// [`AgentRegistryBuilder::tool_requiring_approval`](crate::AgentRegistryBuilder::tool_requiring_approval)).
    #[must_use]
    pub fn requiring_approval(mut self, requires: bool) -> Self {
        self.requires_approval = requires;
        self
    }
    /// The name calls use.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
    /// The tool.
    pub fn tool(&self) -> &Arc<dyn Tool> {
        &self.tool
    }
    /// Whether every call waits for the user's approval.
    pub fn requires_approval(&self) -> bool {
        self.requires_approval
    }
}

impl std::fmt::Debug for SourcedTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourcedTool")
            .field("name", &self.name)
            .field("requires_approval", &self.requires_approval)
            .finish_non_exhaustive()
    }
}

/// Tools known only at run time (an MCP server's, listed when it connects and again when its
/// list changes), consulted after the registry's own tools: a registered tool of the same name
/// wins. Calls of a sourced tool go through the same dispatcher as any tool (permission policy,
/// approvals, timeout, cancellation, redaction, events).
///
/// Both methods are called on the run's path (a look-up per call, a listing per
/// [`ToolDispatcher::specs`](crate::ToolDispatcher::specs)): they must answer from memory,
/// never wait on the network.
///
/// ```
/// use std::sync::Arc;
/// use engine_core::{async_trait, AgentRegistry, BoxError, SourcedTool, Tool, ToolContext, ToolSource};
/// use serde_json::Value;
///
/// struct Echo;
/// #[async_trait]
/// impl Tool for Echo {
///     async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
///         Ok(args)
///     }
/// }
///
/// struct OneTool;
/// impl ToolSource for OneTool {
///     fn tool(&self, name: &str) -> Option<SourcedTool> {
///         (name == "remote.echo").then(|| SourcedTool::new("remote.echo", Arc::new(Echo)))
///     }
///     fn tools(&self) -> Vec<SourcedTool> {
///         self.tool("remote.echo").into_iter().collect()
///     }
/// }
///
/// let registry = AgentRegistry::builder().tool_source(Arc::new(OneTool)).build()?;
/// # Ok::<(), engine_core::RegistryError>(())
/// ```
pub trait ToolSource: Send + Sync + 'static {
    /// The tool called `name`, if this source offers it now.
    fn tool(&self, name: &str) -> Option<SourcedTool>;
    /// Every tool this source offers now.
    fn tools(&self) -> Vec<SourcedTool>;
}
