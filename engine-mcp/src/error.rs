//! [`McpError`]: why a call of an MCP tool failed. Its text is what the agent (and the user's
//! `tool_completed` event) sees, so each says what happened and what happens next.

use std::time::Duration;

/// A call of an MCP tool, or a session for one, failed. The dispatcher turns it into a
/// [`ToolError::Failed`](engine_core::ToolError::Failed) carrying this message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The server could not be started or reached, or its handshake failed.
    #[error("cannot start MCP server `{server}`: {message}; it is tried again in {} ms", retry_in.as_millis())]
    Connect {
        /// The server.
        server: String,
        /// What failed (the process could not start, the endpoint refused, the handshake timed
        /// out).
        message: String,
        /// When the next start is tried.
        retry_in: Duration,
    },
    /// A previous start failed and the backoff has not passed.
    #[error("MCP server `{server}` is not running (its last start failed); the next start is tried in {} ms", retry_in.as_millis())]
    Restarting {
        /// The server.
        server: String,
        /// How long until the next start is tried.
        retry_in: Duration,
    },
    /// The session ended while the call was in flight (the process exited, the connection
    /// closed).
    #[error("MCP server `{server}` stopped during the call to `{tool}`; it is started again on the next call")]
    Exited {
        /// The server.
        server: String,
        /// The server's tool name.
        tool: String,
    },
    /// The server answered with a protocol error (unknown tool, invalid arguments, ...).
    #[error("MCP server `{server}` refused the call to `{tool}`: {source}")]
    Protocol {
        /// The server.
        server: String,
        /// The server's tool name.
        tool: String,
        /// The SDK's error.
        #[source]
        source: rmcp::ServiceError,
    },
    /// The tool ran and reported an error (`isError: true`).
    #[error("the MCP tool `{tool}` of server `{server}` failed: {message}")]
    ToolFailed {
        /// The server.
        server: String,
        /// The server's tool name.
        tool: String,
        /// The text the tool returned.
        message: String,
    },
    /// The server's own `callTimeoutMs` passed (the server was told to cancel).
    #[error("the MCP tool `{tool}` of server `{server}` did not answer within {} ms (callTimeoutMs); the server was told to cancel it", timeout.as_millis())]
    CallTimeout {
        /// The server.
        server: String,
        /// The server's tool name.
        tool: String,
        /// The limit.
        timeout: Duration,
    },
    /// The arguments were not a JSON object.
    #[error("the arguments of an MCP tool must be a JSON object (or null), not {found}")]
    Arguments {
        /// The JSON type given.
        found: &'static str,
    },
    /// The [`McpTools`](crate::McpTools) the tool came from was dropped.
    #[error("the MCP tools were shut down")]
    ShutDown,
}
