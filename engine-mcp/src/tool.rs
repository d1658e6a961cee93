//! [`McpTool`]: one tool of one server as an engine `Tool`. A call uses the calling user's
//! session (or the shared one); when the engine drops the call (tool timeout, run cancelled) a
//! guard tells the server to cancel the request.

use std::sync::Arc;

use engine_core::{async_trait, BoxError, Tool, ToolContext, UserId};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotification,
    CancelledNotificationParam, ClientRequest, RequestId, ServerResult,
};
use rmcp::service::PeerRequestOptions;
use rmcp::{Peer, RoleClient, ServiceError};
use serde_json::Value;

use crate::error::McpError;
use crate::server::ServerCore;

/// One tool of one server.
#[derive(Debug)]
pub(crate) struct McpTool {
    core: Arc<ServerCore>,
    /// The server's name for the tool.
    remote: Arc<str>,
    description: Option<String>,
    schema: Value,
}

impl McpTool {
    pub(crate) fn new(core: Arc<ServerCore>, tool: rmcp::model::Tool) -> Self {
        Self {
            core,
            remote: Arc::from(&*tool.name),
            description: tool.description.map(String::from),
            schema: Value::Object((*tool.input_schema).clone()),
        }
    }
}

#[async_trait]
impl Tool for McpTool {
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, BoxError> {
        Ok(call(&self.core, &self.remote, args, ctx.context().user_id()).await?)
    }
    fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    fn parameters(&self) -> Option<Value> {
        Some(self.schema.clone())
    }
}

/// Sends `notifications/cancelled` for a request when dropped armed: the engine's timeout and
/// cancellation end a call by dropping its future, and the server must hear of it.
struct CancelOnDrop {
    peer: Peer<RoleClient>,
    id: Option<RequestId>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let peer = self.peer.clone();
        runtime.spawn(async move {
            let note = CancelledNotification::new(CancelledNotificationParam::new(
                Some(id),
                Some("the engine ended the call (tool timeout or run cancelled)".into()),
            ));
            // A session that died meanwhile has nobody to tell.
            let _ = peer.send_notification(note.into()).await;
        });
    }
}

async fn call(
    core: &ServerCore,
    tool: &str,
    args: Value,
    user: &UserId,
) -> Result<Value, McpError> {
    let arguments = match args {
        Value::Null => None,
        Value::Object(m) => Some(m),
        Value::Bool(_) => return Err(McpError::Arguments { found: "a boolean" }),
        Value::Number(_) => return Err(McpError::Arguments { found: "a number" }),
        Value::String(_) => return Err(McpError::Arguments { found: "a string" }),
        Value::Array(_) => return Err(McpError::Arguments { found: "an array" }),
    };
    let session = core.session(user).await?;
    let _busy = session.busy();
    let server = || core.config.name.clone();
    let mut params = CallToolRequestParams::new(tool.to_owned());
    if let Some(a) = arguments {
        params = params.with_arguments(a);
    }
    let peer = session.peer();
    let handle = peer
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .map_err(|source| failed(core, tool, source))?;
    let mut guard = CancelOnDrop {
        peer: peer.clone(),
        id: Some(handle.id.clone()),
    };
    let response = match core.config.call_timeout {
        None => handle.await_response().await,
        Some(limit) => match tokio::time::timeout(limit, handle.await_response()).await {
            Ok(r) => r,
            // The guard, still armed, tells the server.
            Err(_) => {
                return Err(McpError::CallTimeout {
                    server: server(),
                    tool: tool.to_owned(),
                    timeout: limit,
                })
            }
        },
    };
    guard.id = None;
    match response {
        Ok(ServerResult::CallToolResult(r)) => result(core, tool, r),
        Ok(_) => Err(failed(core, tool, ServiceError::UnexpectedResponse)),
        Err(e) => Err(failed(core, tool, e)),
    }
}

fn failed(core: &ServerCore, tool: &str, source: ServiceError) -> McpError {
    match source {
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => McpError::Exited {
            server: core.config.name.clone(),
            tool: tool.to_owned(),
        },
        source => McpError::Protocol {
            server: core.config.name.clone(),
            tool: tool.to_owned(),
            source,
        },
    }
}

/// The value an agent gets: the structured content when there is one, a lone text as a
/// string, else the content blocks as JSON. `isError` results become errors with their text.
fn result(core: &ServerCore, tool: &str, r: CallToolResult) -> Result<Value, McpError> {
    let texts = || {
        r.content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if r.is_error == Some(true) {
        return Err(McpError::ToolFailed {
            server: core.config.name.clone(),
            tool: tool.to_owned(),
            message: texts(),
        });
    }
    if let Some(s) = r.structured_content {
        return Ok(s);
    }
    if let [only] = r.content.as_slice() {
        if let Some(t) = only.as_text() {
            return Ok(Value::String(t.text.clone()));
        }
    }
    Ok(serde_json::to_value(&r.content).unwrap_or(Value::Null))
}
