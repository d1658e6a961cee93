//! The [`Tool`] trait, what a tool sees of its run ([`ToolContext`]), and the optional
//! [`ToolPermissionPolicy`].

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
