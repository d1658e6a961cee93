//! Tools from Model Context Protocol servers, as engine tools.
//!
//! A configuration in the `mcpServers` format MCP clients already use ([`McpConfig`]) names
//! the servers: child processes (`command`, `args`, `env`) and Streamable HTTP endpoints
//! (`url`, `headers`), with this engine's keys beside them (`perUser`, `requireApproval`,
//! `allowTools`/`denyTools`, timeouts). [`McpTools::start`] lists every server's tools and
//! keeps the list fresh (on `notifications/tools/list_changed` and after a TTL); added to a
//! registry as a [`ToolSource`], each tool is called
//! `<server>.<tool>` and goes through `RunContext::call_tool` like any tool: the permission
//! policy, approvals, the tool timeout, cancellation, redaction and the events are the
//! engine's.
//!
//! - **Sessions.** A server shares one session among all users, or, with `perUser`, has one
//!   per (server, user), started with the user's id in place of `{user}` in its `env`/`args`
//!   (child process) or `headers` (HTTP). Sessions are reused across calls and runs, closed
//!   after `idleTimeoutSecs` unused (or by [`McpTools::close_user`]), and started again, with
//!   backoff, when they die; a call in flight when its server dies fails with a
//!   [`McpError::Exited`].
//! - **Time limits reach the server.** When the engine's tool timeout passes or the run is
//!   cancelled, the call's future is dropped and a guard sends the server MCP's
//!   `notifications/cancelled` for the request; the call ends at once.
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//! use engine_core::AgentRegistry;
//! use engine_mcp::{McpConfig, McpTools};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = McpConfig::parse(
//!     r#"{ "mcpServers": { "time": { "command": "uvx", "args": ["mcp-server-time"] } } }"#,
//!     Path::new("inline.json"),
//! )?;
//! let tools = McpTools::start(config).await;
//! let registry = AgentRegistry::builder()
//!     .tool_source(Arc::clone(&tools) as Arc<dyn engine_core::ToolSource>)
//!     .build()?;
//! // An agent of this registry may now call "time.get_current_time".
//! # drop(registry);
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod server;
mod session;
mod tool;

use std::sync::{Arc, Weak};
use std::time::Duration;

use engine_core::{SourcedTool, ToolSource, UserId};

pub use config::{Approval, ConfigError, McpConfig, ServerConfig, Transport, USER_PLACEHOLDER};
pub use error::McpError;

use server::Server;

/// How often each server's upkeep looks at its sessions and its tool list.
const UPKEEP_TICK: Duration = Duration::from_millis(500);

/// The configured servers' tools, as a [`ToolSource`] for an
/// [`AgentRegistry`](engine_core::AgentRegistry). Dropping it stops its upkeep tasks and
/// closes every session.
#[derive(Debug)]
pub struct McpTools {
    servers: Vec<Arc<Server>>,
    upkeep: Vec<tokio::task::JoinHandle<()>>,
}

/// What [`McpTools::status`] says of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStatus {
    /// The server's name.
    pub name: String,
    /// Whether its tool list has been listed (a server that could not be reached at start is
    /// `false` until a retry succeeds).
    pub listed: bool,
    /// How many tools it offers now.
    pub tools: usize,
    /// Live sessions (one shared, or one per user).
    pub sessions: usize,
}

impl McpTools {
    /// Lists every server's tools (all at once) and starts each server's upkeep task (idle
    /// sessions, the tool list's TTL and `list_changed`, retries of a server that could not be
    /// reached). A server that fails here is logged and retried with backoff; the others
    /// work meanwhile ([`status`](Self::status) says which are listed). Needs a tokio runtime.
    pub async fn start(config: McpConfig) -> Arc<Self> {
        let servers: Vec<Arc<Server>> = config
            .servers
            .into_iter()
            .map(|c| Arc::new(Server::new(c)))
            .collect();
        let listings = servers.iter().map(|s| {
            let s = Arc::clone(s);
            tokio::spawn(async move {
                if let Err(e) = s.refresh().await {
                    tracing::warn!(server = %s.name(), error = %e, "MCP server unavailable at start; retrying in the background");
                }
            })
        });
        let listings: Vec<_> = listings.collect();
        for l in listings {
            // A panic in one listing leaves that server unlisted; its upkeep retries it.
            let _ = l.await;
        }
        let upkeep = servers
            .iter()
            .map(|s| tokio::spawn(upkeep(Arc::downgrade(s), Arc::clone(&s.core.list_changed))))
            .collect();
        Arc::new(Self { servers, upkeep })
    }

    /// Each server's state.
    pub fn status(&self) -> Vec<ServerStatus> {
        self.servers
            .iter()
            .map(|s| ServerStatus {
                name: s.name().to_owned(),
                listed: s.is_listed(),
                tools: s.tools().len(),
                sessions: s.core.sessions(),
            })
            .collect()
    }

    /// Lists one server's tools again now (as `list_changed` does).
    ///
    /// # Errors
    /// [`McpError`] when the server cannot be reached; the cached list stays.
    /// Returns `Ok(None)` for a name that is not configured.
    pub async fn refresh(&self, server: &str) -> Result<Option<usize>, McpError> {
        match self.servers.iter().find(|s| s.name() == server) {
            Some(s) => s.refresh().await.map(Some),
            None => Ok(None),
        }
    }

    /// Closes `user`'s sessions of per-user servers (call it when the user's last engine
    /// closes); the next call starts them again.
    pub fn close_user(&self, user: &UserId) {
        for s in &self.servers {
            s.core.close_user(user);
        }
    }
}

impl Drop for McpTools {
    fn drop(&mut self) {
        for task in &self.upkeep {
            task.abort();
        }
    }
}

impl ToolSource for McpTools {
    fn tool(&self, name: &str) -> Option<SourcedTool> {
        self.servers
            .iter()
            .filter(|s| name.starts_with(s.core.config.prefix.as_str()))
            .find_map(|s| s.tools().get(name).cloned())
    }
    fn tools(&self) -> Vec<SourcedTool> {
        self.servers
            .iter()
            .flat_map(|s| s.tools().values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

/// One server's upkeep: lists its tools again on `list_changed`, after the TTL, or (never
/// listed yet) after the backoff; closes idle and dead sessions. Ends when the server is
/// dropped.
async fn upkeep(server: Weak<Server>, list_changed: Arc<tokio::sync::Notify>) {
    loop {
        let changed = tokio::select! {
            () = list_changed.notified() => true,
            () = tokio::time::sleep(UPKEEP_TICK) => false,
        };
        let Some(server) = server.upgrade() else {
            return;
        };
        if changed || server.due() {
            if let Err(e) = server.refresh().await {
                tracing::warn!(server = %server.name(), error = %e, "cannot list MCP tools");
            }
        }
        server.core.sweep();
    }
}
