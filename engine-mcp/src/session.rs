//! One client session with one server (for one user, or shared): starting it over a child
//! process or Streamable HTTP with the user's identity put in place, and what the server tells
//! the client (`notifications/tools/list_changed`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, Peer, RoleClient, ServiceExt};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;

use crate::config::{ServerConfig, Transport, USER_PLACEHOLDER};

/// What the server may tell the client.
#[derive(Debug, Clone)]
pub(crate) struct Handler {
    list_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("engine-mcp", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// A live session.
#[derive(Debug)]
pub(crate) struct Session {
    service: RunningService<RoleClient, Handler>,
    last_used: Mutex<Instant>,
    in_flight: AtomicUsize,
}

impl Session {
    pub(crate) fn peer(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }
    /// The session ended (process exited, connection closed).
    pub(crate) fn is_closed(&self) -> bool {
        self.service.is_closed() || self.service.peer().is_transport_closed()
    }
    /// Unused for longer than `idle`, with no call in flight.
    pub(crate) fn is_idle(&self, idle: std::time::Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self
                .last_used
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed()
                >= idle
    }
    fn touch(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }
    /// Marks a call in flight until the guard drops (on every path: a dropped call future too).
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(Arc::clone(self))
    }
}

/// A call in flight on a session.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Session>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts a session: the process or the connection, then the MCP handshake. `user` replaces
/// `{user}` in the configuration's values (per-user servers only).
pub(crate) async fn connect(
    config: &ServerConfig,
    user: Option<&str>,
    list_changed: Arc<Notify>,
) -> Result<Session, String> {
    let fill = |v: &str| match user {
        Some(u) => v.replace(USER_PLACEHOLDER, u),
        None => v.to_owned(),
    };
    let handler = Handler { list_changed };
    let service = match &config.transport {
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
        } => {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(args.iter().map(|a| fill(a)))
                .envs(env.iter().map(|(k, v)| (k, fill(v))));
            if let Some(dir) = cwd {
                cmd.current_dir(dir);
            }
            let (transport, stderr) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("`{command}` could not be started: {e}"))?;
            if let Some(stderr) = stderr {
                // The server's own diagnostics, for the operator; the task ends with the
                // process.
                let server = config.name.clone();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::debug!(server = %server, stderr = %line, "MCP server output");
                    }
                });
            }
            handler
                .serve(transport)
                .await
                .map_err(|e| format!("the MCP handshake failed: {e}"))?
        }
        Transport::Http { url, headers } => {
            let mut custom = HashMap::new();
            for (k, v) in headers {
                let name = reqwest::header::HeaderName::try_from(k.as_str())
                    .map_err(|e| format!("header name `{k}`: {e}"))?;
                let value = reqwest::header::HeaderValue::try_from(fill(v))
                    .map_err(|e| format!("the value of header `{k}`: {e}"))?;
                custom.insert(name, value);
            }
            let transport = StreamableHttpClientTransport::with_client(
                reqwest::Client::new(),
                StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(custom),
            );
            handler
                .serve(transport)
                .await
                .map_err(|e| format!("the MCP handshake with {url} failed: {e}"))?
        }
    };
    Ok(Session {
        service,
        last_used: Mutex::new(Instant::now()),
        in_flight: AtomicUsize::new(0),
    })
}
