//! The configuration file: the `mcpServers` object MCP clients already use (`command`/`args`/
//! `env` for a child process, `url`/`headers` for Streamable HTTP) plus this engine's keys,
//! checked field by field so that an error names the file, the server and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

/// What replaces this placeholder in `env`, `args` and `headers` values of a per-user server:
/// the calling user's id.
pub const USER_PLACEHOLDER: &str = "{user}";

/// A configuration file could not be used. Every variant names where the problem is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the MCP configuration {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("the MCP configuration {file} is not valid JSON: {source}")]
    Json {
        /// The file.
        file: PathBuf,
        /// Where and why.
        #[source]
        source: serde_json::Error,
    },
    /// The top level is not an object with an `mcpServers` object.
    #[error("the MCP configuration {file} needs a top-level object with an `mcpServers` object")]
    NoServers {
        /// The file.
        file: PathBuf,
    },
    /// One field of one server is wrong.
    #[error("the MCP configuration {file}: server `{server}`, field `{field}`: {problem}")]
    Field {
        /// The file.
        file: PathBuf,
        /// The server's name (its key under `mcpServers`).
        server: String,
        /// The field.
        field: String,
        /// What is wrong and what would be right.
        problem: String,
    },
}

/// How the engine reaches a server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// A child process speaking MCP on its stdin/stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments (`{user}` replaced for a per-user server).
        args: Vec<String>,
        /// Variables added to its environment (`{user}` replaced for a per-user server).
        env: BTreeMap<String, String>,
        /// Its working directory (default: the engine's).
        cwd: Option<PathBuf>,
    },
    /// A Streamable HTTP endpoint.
    Http {
        /// The endpoint.
        url: String,
        /// Headers sent with every request (`{user}` replaced for a per-user server).
        headers: BTreeMap<String, String>,
    },
}

/// Which of a server's tools need the user's approval before each call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Approval {
    /// None (the default).
    #[default]
    Never,
    /// Every tool.
    Always,
    /// These tools (the server's own names).
    Tools(Vec<String>),
}

/// One server of the file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The server's name: its key under `mcpServers`.
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
    /// `perUser`: one session per (server, user), the user's id in place of `{user}`;
    /// otherwise one session shared by all users.
    pub per_user: bool,
    /// `prefix`: what goes before a tool's name to make the engine's tool name (default
    /// `<server>.`).
    pub prefix: String,
    /// `requireApproval`: `true`, `false`, or a list of the server's tool names.
    pub approval: Approval,
    /// `allowTools`: only these tools are offered (default: all).
    pub allow: Option<Vec<String>>,
    /// `denyTools`: these tools are never offered.
    pub deny: Vec<String>,
    /// `callTimeoutMs`: a call's own limit, besides the engine's tool timeout (which always
    /// applies). Default: none.
    pub call_timeout: Option<Duration>,
    /// `connectTimeoutMs`: starting the process or reaching the endpoint, and the MCP
    /// handshake (default 20 s).
    pub connect_timeout: Duration,
    /// `idleTimeoutSecs`: a session unused this long is closed (default 300 s).
    pub idle_timeout: Duration,
    /// `toolsTtlSecs`: the tool list is listed again after this long, besides on the server's
    /// `notifications/tools/list_changed` (default 300 s).
    pub tools_ttl: Duration,
    /// `listUser`: the identity a per-user server is started with to list its tools (default
    /// `_tools`).
    pub list_user: String,
}

impl ServerConfig {
    /// Whether a call of the server's tool `tool` waits for approval.
    pub fn requires_approval(&self, tool: &str) -> bool {
        match &self.approval {
            Approval::Never => false,
            Approval::Always => true,
            Approval::Tools(t) => t.iter().any(|n| n == tool),
        }
    }
    /// Whether the server's tool `tool` is offered (allow and deny lists).
    pub fn offers(&self, tool: &str) -> bool {
        self.allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|n| n == tool))
            && !self.deny.iter().any(|n| n == tool)
    }
}

/// A validated configuration: the servers, sorted by name (disabled servers left out).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct McpConfig {
    /// The servers.
    pub servers: Vec<ServerConfig>,
}

impl McpConfig {
    /// Reads and validates a file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, and for a server's mistake the server and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let file = path.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Validates a configuration's text; `file` is only used in error messages.
    ///
    /// # Errors
    /// As [`from_file`](Self::from_file).
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            file: file.to_path_buf(),
            source,
        })?;
        let Some(servers) = value.get("mcpServers").and_then(Value::as_object) else {
            return Err(ConfigError::NoServers {
                file: file.to_path_buf(),
            });
        };
        let mut out = Vec::new();
        for (name, raw) in servers {
            let fields = Fields {
                file,
                server: name,
                obj: raw.as_object(),
            };
            if let Some(s) = fields.server()? {
                out.push(s);
            }
        }
        Ok(Self { servers: out })
    }
}

/// One server's object, read field by field.
struct Fields<'a> {
    file: &'a Path,
    server: &'a str,
    obj: Option<&'a Map<String, Value>>,
}

const KNOWN: &[&str] = &[
    "type",
    "command",
    "args",
    "env",
    "cwd",
    "url",
    "headers",
    "disabled",
    "perUser",
    "prefix",
    "requireApproval",
    "allowTools",
    "denyTools",
    "callTimeoutMs",
    "connectTimeoutMs",
    "idleTimeoutSecs",
    "toolsTtlSecs",
    "listUser",
];

impl Fields<'_> {
    fn err(&self, field: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            file: self.file.to_path_buf(),
            server: self.server.to_owned(),
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
    fn get(&self, field: &str) -> Option<&Value> {
        self.obj.and_then(|o| o.get(field))
    }
    fn string(&self, field: &str) -> Result<Option<String>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(field, "must be a string")),
        }
    }
    fn boolean(&self, field: &str) -> Result<bool, ConfigError> {
        match self.get(field) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.err(field, "must be true or false")),
        }
    }
    fn strings(&self, field: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.err(field, "must be an array of strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.err(field, "must be an array of strings")),
        }
    }
    fn map(&self, field: &str) -> Result<BTreeMap<String, String>, ConfigError> {
        match self.get(field) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(o)) => o
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_owned()))
                        .ok_or_else(|| {
                            self.err(field, format!("the value of `{k}` must be a string"))
                        })
                })
                .collect(),
            Some(_) => Err(self.err(field, "must be an object of strings")),
        }
    }
    /// A positive whole number of `unit`s, at most `max`.
    fn duration(
        &self,
        field: &str,
        default: Duration,
        unit: fn(u64) -> Duration,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=max).contains(&n) => Ok(unit(n)),
                _ => Err(self.err(field, format!("must be a whole number from 1 to {max}"))),
            },
        }
    }

    fn server(&self) -> Result<Option<ServerConfig>, ConfigError> {
        let Some(obj) = self.obj else {
            return Err(self.err("(server)", "must be an object"));
        };
        let name_ok = !self.server.is_empty()
            && self.server.len() <= 64
            && self
                .server
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(self.err(
                "(name)",
                "a server name is 1 to 64 letters, digits, `_` or `-`",
            ));
        }
        if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(self.err(
                unknown,
                format!("unknown field; the known fields are {}", KNOWN.join(", ")),
            ));
        }
        if self.boolean("disabled")? {
            return Ok(None);
        }
        let per_user = self.boolean("perUser")?;
        let command = self.string("command")?;
        let url = self.string("url")?;
        let kind = self.string("type")?;
        let transport = match (command, url) {
            (Some(_), Some(_)) => {
                return Err(self.err("url", "a server has either `command` or `url`, not both"))
            }
            (None, None) => {
                return Err(self.err(
                    "command",
                    "missing: give `command` (a child process) or `url` (Streamable HTTP)",
                ))
            }
            (Some(command), None) => {
                if kind.as_deref().is_some_and(|k| k != "stdio") {
                    return Err(self.err("type", "must be \"stdio\" for a server with `command`"));
                }
                if command.trim().is_empty() {
                    return Err(self.err("command", "must not be empty"));
                }
                for f in ["headers"] {
                    if self.get(f).is_some() {
                        return Err(self.err(f, "only a server with `url` has headers"));
                    }
                }
                Transport::Stdio {
                    command,
                    args: self.strings("args")?.unwrap_or_default(),
                    env: self.map("env")?,
                    cwd: self.string("cwd")?.map(PathBuf::from),
                }
            }
            (None, Some(url)) => {
                if kind
                    .as_deref()
                    .is_some_and(|k| !matches!(k, "http" | "streamable-http" | "streamableHttp"))
                {
                    return Err(self.err(
                        "type",
                        "must be \"http\" or \"streamable-http\" for a server with `url` \
                         (SSE-only servers are not supported)",
                    ));
                }
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(self.err("url", "must start with http:// or https://"));
                }
                for f in ["args", "env", "cwd"] {
                    if self.get(f).is_some() {
                        return Err(self.err(f, "only a server with `command` has this field"));
                    }
                }
                Transport::Http {
                    url,
                    headers: self.map("headers")?,
                }
            }
        };
        self.check_placeholders(&transport, per_user)?;
        let approval = match self.get("requireApproval") {
            None | Some(Value::Bool(false)) => Approval::Never,
            Some(Value::Bool(true)) => Approval::Always,
            Some(Value::Array(_)) => {
                Approval::Tools(self.strings("requireApproval")?.unwrap_or_default())
            }
            Some(_) => {
                return Err(self.err(
                    "requireApproval",
                    "must be true, false, or an array of the server's tool names",
                ))
            }
        };
        let prefix = self
            .string("prefix")?
            .unwrap_or_else(|| format!("{}.", self.server));
        let list_user = self.string("listUser")?.unwrap_or_else(|| "_tools".into());
        if list_user.trim().is_empty() {
            return Err(self.err("listUser", "must not be empty"));
        }
        Ok(Some(ServerConfig {
            name: self.server.to_owned(),
            transport,
            per_user,
            prefix,
            approval,
            allow: self.strings("allowTools")?,
            deny: self.strings("denyTools")?.unwrap_or_default(),
            call_timeout: match self.get("callTimeoutMs") {
                None => None,
                Some(_) => Some(self.duration(
                    "callTimeoutMs",
                    Duration::ZERO,
                    Duration::from_millis,
                    86_400_000,
                )?),
            },
            connect_timeout: self.duration(
                "connectTimeoutMs",
                Duration::from_secs(20),
                Duration::from_millis,
                600_000,
            )?,
            idle_timeout: self.duration(
                "idleTimeoutSecs",
                Duration::from_secs(300),
                Duration::from_secs,
                86_400,
            )?,
            tools_ttl: self.duration(
                "toolsTtlSecs",
                Duration::from_secs(300),
                Duration::from_secs,
                86_400,
            )?,
            list_user,
        }))
    }

    /// `{user}` only in per-user servers, and a per-user server passes the identity somewhere.
    fn check_placeholders(&self, t: &Transport, per_user: bool) -> Result<(), ConfigError> {
        let (field, values): (&str, Vec<&String>) = match t {
            Transport::Stdio { args, env, .. } => {
                ("env", env.values().chain(args.iter()).collect())
            }
            Transport::Http { headers, .. } => ("headers", headers.values().collect()),
        };
        let used = values.iter().any(|v| v.contains(USER_PLACEHOLDER));
        if used && !per_user {
            return Err(self.err(
                field,
                "`{user}` is replaced only in a server with \"perUser\": true",
            ));
        }
        if per_user && !used {
            return Err(self.err(
                field,
                "a per-user server passes the user's identity: put `{user}` in an `env` value \
                 (or an argument) of a child process, or in a header of an HTTP server",
            ));
        }
        Ok(())
    }
}
