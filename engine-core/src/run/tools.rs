//! The per-run [`ToolDispatcher`]: name resolution, the permission policy, the tool timeout,
//! cancellation, panic containment, and the `tool_executing` / `tool_completed` pair of every
//! call.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;

use crate::context::UserExecutionContext;
use crate::error::{panic_message, ToolError};
use crate::event::ApprovalOutcome;
use crate::event::{AgentEvent, ToolStatus};
use crate::guardrail::{Checked, Def, GuardrailInput, Guards, TripAction};
use crate::limits::MAX_RESULT_CHARS;
use crate::multitask::ApprovalDecision;
use crate::run::checks::{self, Scope, Trip};
use crate::run::control::{Open, OpenItem, RunControl};
use crate::run::emit::{millis, EmitterSlot};
use crate::run::guard::{guarded, Guarded};
use crate::run::RunKit;
use crate::sanitize::{sanitize_arguments, sanitize_result, truncate_str};
use crate::tool::{Tool, ToolContext, ToolSpec};

/// The per-run tool dispatcher: resolves tool names, applies the permission policy, the tool
/// timeout and cancellation, contains panics, and emits the `tool_executing` /
/// `tool_completed` pair of every call. One exists per run and is dropped with it.
#[doc(alias(
    "ToolExecutionEngine",
    "UnifiedToolExecutionEngine",
    "UnifiedToolDispatcher",
    "RequestScopedToolDispatcher"
))]
pub struct ToolDispatcher {
    /// The registry and the engine's configuration (what sub-agents are built from, too).
    pub(super) kit: Arc<RunKit>,
    pub(super) context: UserExecutionContext,
    pub(super) control: Arc<RunControl>,
    pub(super) calls: u32,
    /// The guardrails of the agent that calls (`None`: it has none, and calls pay nothing).
    pub(super) guards: Option<Arc<Guards>>,
    /// The calling agent's depth (0: the run's top-level agent).
    pub(super) depth: u32,
}

impl std::fmt::Debug for ToolDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolDispatcher")
            .field("run_id", self.context.run_id())
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl ToolDispatcher {
    /// Names of the tools registered in the registry, sorted (the permission policy is applied
    /// per call; tools of a [`ToolSource`](crate::ToolSource) are listed by
    /// [`specs`](Self::specs)).
    pub fn tool_names(&self) -> Vec<&str> {
        self.kit.registry.tool_names().collect()
    }
    /// Whether a tool of this name is registered or offered by a tool source.
    pub fn has_tool(&self, name: &str) -> bool {
        self.kit.registry.tool_entry(name).is_some()
    }
    /// Whether the run's user may call this tool under the permission policy.
    pub fn is_allowed(&self, name: &str) -> bool {
        self.kit.registry.is_allowed(self.context.user_id(), name)
    }
    /// The tools this run's user may call, described for a model: name, description and
    /// argument schema; the registered tools sorted by name, then those of the tool sources
    /// (tools the permission policy denies are left out).
    pub fn specs(&self) -> Vec<ToolSpec> {
        let user = self.context.user_id();
        self.kit
            .registry
            .tools()
            .into_iter()
            .filter(|(name, _)| self.kit.registry.is_allowed(user, name))
            .map(|(name, tool)| ToolSpec {
                name: (*name).to_owned(),
                description: tool.description().map(str::to_owned),
                parameters: tool.parameters(),
            })
            .collect()
    }
    /// Tool calls made so far by this agent.
    pub fn calls_made(&self) -> u32 {
        self.calls
    }

    pub(super) async fn dispatch(
        &mut self,
        emitter: &mut EmitterSlot,
        caller: &Arc<str>,
        name: &str,
        args: Value,
    ) -> Result<Value, ToolError> {
        self.calls += 1;
        let call_id = self.control.next_call_id();
        let me = self.context.request_id();
        // The registry's shared name when the tool exists; unknown names are copied once.
        let entry = self.kit.registry.tool_entry(name);
        let tool_name = entry
            .as_ref()
            .map_or_else(|| Arc::from(name), |(n, _, _)| Arc::clone(n));
        self.control.opened(
            me,
            OpenItem::Tool {
                call_id,
                tool_name: Arc::clone(&tool_name),
            },
        );
        let checked = self.check(name, entry.is_some());
        let approval = checked.is_ok()
            && (entry.as_ref().is_some_and(|(_, _, registered)| *registered)
                || self
                    .kit
                    .registry
                    .policy_needs_approval(self.context.user_id(), name, &args));
        let arguments = sanitize_arguments(&args);
        // The approval request shows the same arguments; copied only when there is one.
        let shown = approval.then(|| arguments.clone());
        emitter
            .emit(
                me,
                AgentEvent::ToolExecuting {
                    tool_name: Arc::clone(&tool_name),
                    call_id,
                    arguments,
                },
            )
            .await;
        let outcome = match (checked, shown, &self.guards) {
            (Err(e), _, _) => Err(e),
            // Only an agent with guardrails takes this way, boxed so that the others' calls
            // do not carry its state.
            (Ok(()), shown, Some(guards)) => {
                let guards = Arc::clone(guards);
                let tool = entry.map(|(_, t, _)| t);
                let call = Call {
                    name,
                    tool_name,
                    call_id,
                    shown,
                    tool,
                    args,
                };
                Box::pin(self.guarded_call(emitter, caller, &guards, call)).await
            }
            (Ok(()), Some(shown), None) => {
                match self
                    .wait_for_approval(emitter, name, tool_name, call_id, shown)
                    .await
                {
                    Ok(()) => self.invoke(name, entry.map(|(_, t, _)| t), args).await,
                    Err(e) => Err(e),
                }
            }
            (Ok(()), None, None) => self.invoke(name, entry.map(|(_, t, _)| t), args).await,
        };
        let (status, result, error) = match &outcome {
            Ok(v) => (ToolStatus::Success, Some(sanitize_result(v)), None),
            Err(e) => {
                let status = match e {
                    ToolError::PermissionDenied { .. } => ToolStatus::PermissionDenied,
                    ToolError::Timeout { .. } => ToolStatus::Timeout,
                    ToolError::Cancelled { .. } => ToolStatus::Cancelled,
                    ToolError::Denied { .. } => ToolStatus::Denied,
                    ToolError::ApprovalTimeout { .. } => ToolStatus::Timeout,
                    ToolError::GuardrailDenied { .. } => ToolStatus::GuardrailDenied,
                    _ => ToolStatus::Error,
                };
                (
                    status,
                    None,
                    Some(truncate_str(&e.to_string(), MAX_RESULT_CHARS)),
                )
            }
        };
        if let Some(open) = self.control.closed_call(call_id) {
            let done = tool_completed(&open, status, result, error);
            emitter.emit(self.context.request_id(), done).await;
        }
        outcome
    }

    /// Asks for approval when the call needs it, then runs the tool.
    #[allow(clippy::too_many_arguments)]
    async fn approve_and_invoke(
        &self,
        emitter: &mut EmitterSlot,
        name: &str,
        tool_name: Arc<str>,
        call_id: u32,
        shown: Option<Value>,
        tool: Option<Arc<dyn Tool>>,
        args: Value,
    ) -> Result<Value, ToolError> {
        if let Some(shown) = shown {
            self.wait_for_approval(emitter, name, tool_name, call_id, shown)
                .await?;
        }
        self.invoke(name, tool, args).await
    }

    /// A call of an agent with tool guardrails: on the arguments before the call (and before
    /// any approval is asked), on the result before the agent sees it.
    async fn guarded_call(
        &self,
        emitter: &mut EmitterSlot,
        caller: &str,
        guards: &Guards,
        call: Call<'_>,
    ) -> Result<Value, ToolError> {
        let Call {
            name,
            tool_name,
            call_id,
            shown,
            tool,
            args,
        } = call;
        if !guards.tool_input.is_empty() {
            let input = Checked::ToolCall {
                tool: name,
                arguments: &args,
            };
            self.guard(emitter, caller, &guards.tool_input, input, name, call_id)
                .await?;
        }
        if guards.tool_output.is_empty() {
            return self
                .approve_and_invoke(emitter, name, tool_name, call_id, shown, tool, args)
                .await;
        }
        // The tool takes its arguments by value; the output guardrail sees them too.
        let kept = args.clone();
        let result = self
            .approve_and_invoke(emitter, name, tool_name, call_id, shown, tool, args)
            .await?;
        let input = Checked::ToolResult {
            tool: name,
            arguments: &kept,
            result: &result,
        };
        self.guard(emitter, caller, &guards.tool_output, input, name, call_id)
            .await?;
        Ok(result)
    }

    /// Runs the tool guardrails `defs` on one call. A trip emits `guardrail_tripped` and
    /// denies the call; a trip that ends the run is recorded in the run's control first, so
    /// from then on no tool call of the run passes its checks.
    async fn guard(
        &self,
        emitter: &mut EmitterSlot,
        agent: &str,
        defs: &[Arc<Def>],
        checked: Checked<'_>,
        name: &str,
        call_id: u32,
    ) -> Result<(), ToolError> {
        let input = GuardrailInput {
            context: &self.context,
            agent,
            checked,
        };
        let mut scope = Scope {
            context: &self.context,
            control: &self.control,
            kit: &self.kit,
            depth: self.depth,
            emitter,
        };
        let Some(trip) = checks::first_trip(defs, &input, &mut scope).await else {
            // A run cancelled during the checks: the call does not run.
            if self.control.cancel.is_set() {
                return Err(ToolError::Cancelled { name: name.into() });
            }
            return Ok(());
        };
        let event = trip.event(Some(call_id));
        let Trip {
            guardrail,
            reason,
            action,
            ..
        } = trip.clone();
        if action == TripAction::EndRun {
            self.control.record_trip(trip);
        }
        emitter.emit(self.context.request_id(), event).await;
        Err(ToolError::GuardrailDenied {
            name: name.into(),
            guardrail: guardrail.to_string(),
            reason,
        })
    }

    /// The checks before a call may run or ask for approval: the tool exists, the user may
    /// call it, the run is not cancelled.
    fn check(&self, name: &str, exists: bool) -> Result<(), ToolError> {
        if !exists {
            return Err(ToolError::NotFound { name: name.into() });
        }
        if !self.is_allowed(name) {
            return Err(ToolError::PermissionDenied {
                name: name.into(),
                user: self.context.user_id().clone(),
            });
        }
        if self.control.cancel.is_set() {
            return Err(ToolError::Cancelled { name: name.into() });
        }
        Ok(())
    }

    /// Emits `approval_requested`, waits for the user's decision (or the approval timeout, or
    /// the run's cancellation), and emits `approval_decided` unless the run was cancelled.
    async fn wait_for_approval(
        &self,
        emitter: &mut EmitterSlot,
        name: &str,
        tool_name: Arc<str>,
        call_id: u32,
        arguments: Value,
    ) -> Result<(), ToolError> {
        // Registered before the event goes out, so an answer that comes at once finds it.
        let decision = self.control.await_approval(call_id);
        let me = self.context.request_id();
        emitter
            .emit(
                me,
                AgentEvent::ApprovalRequested {
                    tool_name,
                    call_id,
                    arguments,
                },
            )
            .await;
        let waited = tokio::select! {
            biased;
            () = self.control.cancel.wait() => None,
            d = tokio::time::timeout(self.kit.config.approval_timeout(), decision) => Some(d),
        };
        self.control.end_approval(call_id);
        let (outcome, result) = match waited {
            None => return Err(ToolError::Cancelled { name: name.into() }),
            Some(Ok(Ok(ApprovalDecision::Approve))) => (ApprovalOutcome::Approved, Ok(())),
            // A sender dropped without a decision cannot happen while the run is live; treat it
            // as a denial rather than running an unapproved tool.
            Some(Ok(Ok(_) | Err(_))) => (
                ApprovalOutcome::Denied,
                Err(ToolError::Denied { name: name.into() }),
            ),
            Some(Err(_)) => (
                ApprovalOutcome::TimedOut,
                Err(ToolError::ApprovalTimeout {
                    name: name.into(),
                    timeout_ms: millis(self.kit.config.approval_timeout()),
                }),
            ),
        };
        emitter
            .emit(me, AgentEvent::ApprovalDecided { call_id, outcome })
            .await;
        result
    }

    async fn invoke(
        &self,
        name: &str,
        tool: Option<Arc<dyn Tool>>,
        args: Value,
    ) -> Result<Value, ToolError> {
        let Some(tool) = tool else {
            return Err(ToolError::NotFound { name: name.into() });
        };
        let tool_ctx = ToolContext::new(self.context.clone(), Arc::clone(&self.control));
        let call = AssertUnwindSafe(tool.call(args, &tool_ctx)).catch_unwind();
        // Biased toward the tool: a tool that watches its ToolContext sees the cancellation and
        // may return before the call is abandoned.
        let result = guarded(
            call,
            &self.control.cancel,
            Some(self.kit.config.tool_timeout()),
            || Duration::ZERO,
        );
        match result.await {
            Guarded::Cancelled => Err(ToolError::Cancelled { name: name.into() }),
            Guarded::TimedOut => Err(ToolError::Timeout {
                name: name.into(),
                timeout_ms: millis(self.kit.config.tool_timeout()),
            }),
            Guarded::Done(Err(panic)) => Err(ToolError::Panicked {
                name: name.into(),
                message: panic_message(&*panic),
            }),
            Guarded::Done(Ok(Err(e))) if self.control.cancel.is_set() => {
                tracing::debug!(tool = name, error = %e, "tool returned after cancellation");
                Err(ToolError::Cancelled { name: name.into() })
            }
            Guarded::Done(Ok(Err(e))) => Err(ToolError::Failed {
                name: name.into(),
                message: e.to_string(),
            }),
            Guarded::Done(Ok(Ok(v))) => Ok(v),
        }
    }
}

/// One call on its way to the tool, as the guarded way takes it.
struct Call<'a> {
    name: &'a str,
    tool_name: Arc<str>,
    call_id: u32,
    shown: Option<Value>,
    tool: Option<Arc<dyn Tool>>,
    args: Value,
}

/// The `tool_completed` event of an open call.
pub(crate) fn tool_completed(
    open: &Open,
    status: ToolStatus,
    result: Option<Value>,
    error: Option<String>,
) -> AgentEvent {
    let (call_id, tool_name) = match &open.item {
        OpenItem::Tool { call_id, tool_name } => (*call_id, Arc::clone(tool_name)),
        OpenItem::SubAgent { agent_name, .. } => (0, Arc::clone(agent_name)),
    };
    AgentEvent::ToolCompleted {
        tool_name,
        call_id,
        status,
        result,
        error,
        duration_ms: millis(open.started.elapsed()),
    }
}
