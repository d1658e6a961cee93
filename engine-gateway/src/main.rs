//! `engine-gateway`: the gateway binary with the demo agents. `engine-gateway --help` lists
//! every flag and its environment variable; logs go to stderr.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use engine_core::{EngineConfig, UserId};
use engine_factory::Durability;
use engine_factory::FactoryConfig;
use engine_gateway::demo::{demo_registry_builder, model_registry_builder};
use engine_gateway::{Backends, Gateway, GatewayConfig, WebhookConfig};
use engine_llm::{
    ApiKey, HistoryStore, InMemoryHistory, LlmAgentKit, LlmConfig, RedisHistory, StoreHistory,
};
use engine_mcp::{McpConfig, McpTools};
use engine_redis::{ClusterConfig, RedisCluster};
use engine_store::{SqlStore, StoreConfig};

/// mimalloc: runs across 1,000 users went 10-25% faster than with glibc malloc on the 2-core
/// VM (the `allocator` row of `cargo xtask bench`, BENCHMARKS.md). Only this binary sets it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The reference WebSocket gateway of the one engine: authenticated per-user event streams,
/// replay, limits, graceful shutdown. Without a JWT secret it runs in development mode (a
/// random secret, a printed token for `alice`, and `/dev/token?user=<id>`).
#[derive(Debug, Parser)]
#[command(name = "engine-gateway", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// HS256 secret for bearer tokens, at least 32 bytes; production mode when set.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<Secret>,
    /// Accept only tokens whose `iss` claim is this issuer.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Accept tokens whose `aud` claim names this audience (without it, a token carrying an
    /// `aud` claim is refused).
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Longest token lifetime accepted (`exp - iat`), in seconds.
    #[arg(long, env = "GATEWAY_MAX_TOKEN_LIFETIME_SECS", default_value_t = 24 * 3600)]
    max_token_lifetime_secs: u64,
    /// Clock difference tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[arg(long, env = "GATEWAY_TOKEN_LEEWAY_SECS", default_value_t = 5)]
    token_leeway_secs: u64,
    /// Also accept the token as `/ws?token=<jwt>` (proxies and access logs record query
    /// strings; prefer the `bearer.<jwt>` subprotocol or a ticket from `POST /ws/ticket`).
    #[arg(long, env = "GATEWAY_ALLOW_QUERY_TOKEN", value_parser = clap::builder::BoolishValueParser::new())]
    allow_query_token: bool,
    /// How often the server pings each socket, in milliseconds.
    #[arg(long, env = "GATEWAY_PING_INTERVAL_MS", default_value_t = 30_000)]
    ping_interval_ms: u64,
    /// A socket that sends nothing (no pong) this long after a ping is closed with 1011, in
    /// milliseconds.
    #[arg(long, env = "GATEWAY_PONG_TIMEOUT_MS", default_value_t = 20_000)]
    pong_timeout_ms: u64,
    /// A socket with no message either way for this long is closed with 1000, in seconds
    /// (0: never).
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_SECS", default_value_t = 0)]
    idle_timeout_secs: u64,
    /// Longest a client may take to send a request's headers, in milliseconds (slowloris).
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    header_read_timeout_ms: u64,
    /// WebSockets open at once on this gateway; the next upgrade gets 503.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// WebSockets open at once from one IP address; the next upgrade gets 429.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = 500)]
    max_connections_per_ip: usize,
    /// Log format on stderr.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, in `tracing` EnvFilter syntax (for example `info,engine_core=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// The agent that answers messages naming none.
    #[arg(long, env = "GATEWAY_AGENT", default_value = "assistant")]
    agent: String,
    /// Largest accepted text frame, in bytes.
    #[arg(long, env = "GATEWAY_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    max_frame_bytes: usize,
    /// Messages allowed per user per minute.
    #[arg(long, env = "GATEWAY_MESSAGES_PER_MINUTE", default_value_t = 30)]
    messages_per_minute: usize,
    /// `resume` frames allowed per user per minute.
    #[arg(long, env = "GATEWAY_RESUMES_PER_MINUTE", default_value_t = 120)]
    resumes_per_minute: usize,
    /// Open WebSockets allowed per user.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER", default_value_t = 5)]
    max_connections_per_user: usize,
    /// Events kept per user for `resume`.
    #[arg(long, env = "GATEWAY_REPLAY_BUFFER", default_value_t = 1000)]
    replay_buffer: usize,
    /// Frames queued per connection before it misses events.
    #[arg(long, env = "GATEWAY_CONNECTION_QUEUE", default_value_t = 1024)]
    connection_queue: usize,
    /// Seconds after which a user with no connection and no run loses its session.
    #[arg(long, env = "GATEWAY_SESSION_IDLE_SECS", default_value_t = 600)]
    session_idle_secs: u64,
    /// Engines a user may hold at once.
    #[arg(long, env = "GATEWAY_MAX_ENGINES_PER_USER", default_value_t = 2)]
    max_engines_per_user: usize,
    /// Runs of a user executing at once.
    #[arg(long, env = "GATEWAY_MAX_CONCURRENT_RUNS", default_value_t = 3)]
    max_concurrent_runs: usize,
    /// Runs of a user waiting beyond those (then `too_many_runs`).
    #[arg(long, env = "GATEWAY_MAX_QUEUED_RUNS", default_value_t = 4)]
    max_queued_runs: usize,
    /// Longest a run's agent may work, in seconds.
    #[arg(long, env = "GATEWAY_RUN_TIMEOUT_SECS", default_value_t = 25)]
    run_timeout_secs: u64,
    /// Longest a shutdown waits for runs to end and sockets to close, in seconds.
    #[arg(long, env = "GATEWAY_SHUTDOWN_DEADLINE_SECS", default_value_t = 10)]
    shutdown_deadline_secs: u64,
    /// Cluster mode: the Redis shared by every gateway node (`redis://host:port[/db]`). Per-user
    /// limits, event streams, resume, cancel and approvals then span all nodes.
    #[arg(long, env = "GATEWAY_REDIS_URL", hide_env_values = true)]
    redis_url: Option<Secret>,
    /// Cluster mode: the prefix of every Redis key and channel (several deployments can share
    /// one Redis under different prefixes).
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "engine")]
    redis_prefix: String,
    /// This node's name in the cluster and in the run store (default: random).
    #[arg(long, env = "GATEWAY_NODE_ID")]
    node_id: Option<String>,
    /// Cluster mode: how long a crashed node's engine slots outlive it, in milliseconds.
    #[arg(long, env = "GATEWAY_LEASE_TTL_MS", default_value_t = 30_000)]
    lease_ttl_ms: u64,
    /// Cluster mode: about how many events each user's Redis stream keeps for resume.
    #[arg(long, env = "GATEWAY_STREAM_MAXLEN", default_value_t = 10_000)]
    stream_maxlen: u64,
    /// Where the gateway keeps its state: an SQLite file `gateway.db` in this directory,
    /// created on first start (unless `--database-url` names another database).
    #[arg(long, env = "GATEWAY_DATA_DIR", default_value = ".engine-gateway")]
    data_dir: std::path::PathBuf,
    /// The run store: `sqlite://<path>` (one node), `postgres://user:password@host/db` (a
    /// cluster, with `--redis-url`), or `memory` (nothing kept across restarts). Default: the
    /// SQLite file in `--data-dir` on one node; `memory` in cluster mode.
    #[arg(long, env = "GATEWAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<Secret>,
    /// With a shared database (Postgres): how long after a node's last heartbeat its
    /// unfinished runs are marked `interrupted` by another node, in milliseconds (each node
    /// beats every fifth of it).
    #[arg(long, env = "GATEWAY_NODE_LEASE_MS", default_value_t = 10_000)]
    node_lease_ms: u64,
    /// When a run's terminal record is committed: `batch` (before the run is reported ended)
    /// or `sync` (before its terminal event is sent to anyone).
    #[arg(long, env = "GATEWAY_DURABILITY", value_enum, default_value_t = DurabilityArg::Batch)]
    durability: DurabilityArg,
    /// POST each ended run's record to this URL (Standard Webhooks signatures, at least once,
    /// retried with backoff; needs a run store, so not with `--database-url memory`).
    #[arg(long, env = "GATEWAY_WEBHOOK_URL", requires = "webhook_secret")]
    webhook_url: Option<String>,
    /// The webhooks' signing secret: `whsec_` and the base64 of 24 to 64 random bytes
    /// (`echo whsec_$(openssl rand -base64 32)`).
    #[arg(
        long,
        env = "GATEWAY_WEBHOOK_SECRET",
        hide_env_values = true,
        requires = "webhook_url"
    )]
    webhook_secret: Option<Secret>,
    /// Longest one webhook attempt may take, in milliseconds (then it is retried).
    #[arg(long, env = "GATEWAY_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    webhook_timeout_ms: u64,
    /// The first webhook retry's delay in milliseconds, doubling per attempt up to 10 minutes.
    #[arg(long, env = "GATEWAY_WEBHOOK_RETRY_MS", default_value_t = 1_000)]
    webhook_retry_ms: u64,
    /// How long a failing webhook delivery is retried before it is given up, in seconds
    /// (then: an error log line and `engine_gateway_webhook_deliveries_total{result="given_up"}`).
    #[arg(long, env = "GATEWAY_WEBHOOK_GIVE_UP_SECS", default_value_t = 86_400)]
    webhook_give_up_secs: u64,
    /// Serve `/dev/token?user=<id>` (to loopback callers only: a peer in 127.0.0.0/8 or ::1)
    /// while using `--jwt-secret`, for several development nodes sharing one secret. It
    /// relaxes nothing else: the secret still needs 32 bytes, and no token is printed.
    #[arg(long, env = "GATEWAY_DEV_TOKENS", value_parser = clap::builder::BoolishValueParser::new())]
    dev_tokens: bool,
    /// Answer the `assistant` with a model: the base URL of an OpenAI-compatible server (for
    /// example `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1` for Ollama). The key
    /// comes from `LLM_API_KEY`. Without it the assistant is the rule-based demo.
    #[arg(long, env = "GATEWAY_LLM_BASE_URL", requires = "llm_model")]
    llm_base_url: Option<String>,
    /// The model the server should use (with `--llm-base-url`).
    #[arg(long, env = "GATEWAY_LLM_MODEL", requires = "llm_base_url")]
    llm_model: Option<String>,
    /// The system prompt of the model assistant.
    #[arg(
        long,
        env = "GATEWAY_LLM_SYSTEM_PROMPT",
        default_value = "You are a helpful assistant in a chat. Use the tools when they help. Answer briefly."
    )]
    llm_system_prompt: String,
    /// A file of MCP servers (the `mcpServers` JSON format, with engine-mcp's keys) whose
    /// tools the agents may call as `<server>.<tool>`. An invalid file stops the start, naming
    /// the file, the server and the field; a server that cannot be reached is reported and
    /// retried while the others work.
    #[arg(long, env = "GATEWAY_MCP_CONFIG")]
    mcp_config: Option<std::path::PathBuf>,
    /// Export tracing spans (HTTP requests, runs) over OTLP/HTTP to this collector base URL,
    /// for example `http://127.0.0.1:4318` (built with the `otel` feature).
    #[cfg(feature = "otel")]
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

/// A flag that holds a secret (a JWT secret, a URL with a password): its `Debug` is redacted.
#[derive(Clone)]
struct Secret(String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DurabilityArg {
    /// Events written behind in batches; a run's terminal record before it is reported ended.
    Batch,
    /// As `batch`, and the terminal record before the terminal event is sent.
    Sync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

impl Args {
    /// The gateway configuration these flags describe (checked by `Gateway::new`).
    fn config(&self) -> Result<GatewayConfig, engine_core::ConfigError> {
        let mut config = match &self.jwt_secret {
            Some(secret) => GatewayConfig::with_secret(secret.as_str().as_bytes().to_vec()),
            None => GatewayConfig::development(),
        };
        // Only `/dev/token` (loopback callers); the secret check stays (Gateway::new).
        config.development |= self.dev_tokens;
        config.jwt_issuer.clone_from(&self.jwt_issuer);
        config.jwt_audience.clone_from(&self.jwt_audience);
        config.max_token_lifetime = Duration::from_secs(self.max_token_lifetime_secs);
        config.token_leeway = Duration::from_secs(self.token_leeway_secs);
        config.query_token = self.allow_query_token;
        config.ping_interval = Duration::from_millis(self.ping_interval_ms);
        config.pong_timeout = Duration::from_millis(self.pong_timeout_ms);
        config.idle_timeout =
            (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs));
        config.header_read_timeout = Duration::from_millis(self.header_read_timeout_ms);
        config.max_connections = self.max_connections;
        config.max_connections_per_ip = self.max_connections_per_ip;
        config.max_frame_bytes = self.max_frame_bytes;
        config.messages_per_minute = self.messages_per_minute;
        config.resumes_per_minute = self.resumes_per_minute;
        config.max_connections_per_user = self.max_connections_per_user;
        config.replay_buffer = self.replay_buffer;
        config.connection_queue = self.connection_queue;
        config.session_idle = Duration::from_secs(self.session_idle_secs);
        config.default_agent.clone_from(&self.agent);
        let engine = EngineConfig::builder()
            .max_concurrent_runs(self.max_concurrent_runs)
            .max_queued_runs(self.max_queued_runs)
            .run_timeout(Duration::from_secs(self.run_timeout_secs))
            .build()?;
        config.factory = FactoryConfig::builder()
            .max_engines_per_user(self.max_engines_per_user)
            .shutdown_deadline(Duration::from_secs(self.shutdown_deadline_secs))
            .engine(engine)
            .build()?;
        Ok(config)
    }
}

/// What must stay alive while the gateway logs (and, with `otel`, flushed at the end).
#[derive(Default)]
struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered.
    fn flush(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("engine-gateway: OTLP export did not finish: {e}");
            }
        }
    }
}

fn init_logs(args: &Args) -> Result<Telemetry, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| format!("invalid --log / RUST_LOG filter {:?}: {e}", args.log))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match args.log_format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    #[allow(unused_mut)]
    let mut telemetry = Telemetry::default();
    #[cfg(feature = "otel")]
    let otel = match &args.otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry::trace::TracerProvider as _;
            use opentelemetry_otlp::WithExportConfig as _;
            let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .build()
                .map_err(|e| format!("cannot set up the OTLP exporter for {endpoint}: {e}"))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("engine-gateway")
                        .build(),
                )
                .build();
            let tracer = provider.tracer("engine-gateway");
            telemetry.provider = Some(provider);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
        None => None,
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    #[cfg(feature = "otel")]
    let registry = registry.with(otel);
    registry
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(telemetry)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutdown signal received");
}

/// The served agents: the demo's, or a model assistant whose thread history is the run store's
/// thread messages (with a store), the cluster's Redis (a cluster without one), or memory.
fn registry(
    args: &Args,
    cluster: Option<&RedisCluster>,
    store: Option<&SqlStore>,
    mcp: Option<&Arc<McpTools>>,
) -> Result<engine_core::AgentRegistry, String> {
    let with_mcp = |b: engine_core::AgentRegistryBuilder| match mcp {
        Some(tools) => b.tool_source(Arc::clone(tools) as Arc<dyn engine_core::ToolSource>),
        None => b,
    };
    let (Some(url), Some(model)) = (&args.llm_base_url, &args.llm_model) else {
        return with_mcp(demo_registry_builder())
            .build()
            .map_err(|e| e.to_string());
    };
    let mut llm = LlmConfig::new(url.clone(), model.clone())
        .with_system_prompt(args.llm_system_prompt.clone());
    if let Some(key) = ApiKey::from_env("LLM_API_KEY") {
        llm = llm.with_api_key(key);
    }
    let history: Arc<dyn HistoryStore> = match (store, cluster) {
        (Some(store), _) => Arc::new(StoreHistory::new(Arc::new(store.clone()))),
        // A thread's history shared by every node, under its user's keys.
        (None, Some(c)) => Arc::new(RedisHistory::new(
            c,
            100,
            Duration::from_secs(7 * 24 * 3600),
        )),
        (None, None) => Arc::new(InMemoryHistory::default()),
    };
    let kit =
        LlmAgentKit::with_history(llm, history).map_err(|e| format!("--llm-base-url: {e}"))?;
    with_mcp(model_registry_builder(kit))
        .build()
        .map_err(|e| e.to_string())
}

const SQLITE_CLUSTER: &str = "a cluster (--redis-url) needs a database every node shares: use --database-url postgres://... (an SQLite file belongs to one process)";

/// The run store the flags ask for (`None`: `memory`). A cluster needs a database every node
/// shares: SQLite is refused with `--redis-url`.
async fn open_store(
    args: &Args,
    cluster: Option<&RedisCluster>,
) -> Result<Option<SqlStore>, String> {
    let url = match (&args.database_url, cluster) {
        (Some(url), _) if url.as_str() == "memory" => None,
        (Some(url), _) => Some(url.as_str().to_owned()),
        (None, Some(_)) => {
            tracing::warn!("cluster mode without --database-url: runs are not kept across restarts (set --database-url postgres://...)");
            None
        }
        (None, None) => {
            let file = args.data_dir.join("gateway.db");
            std::fs::create_dir_all(&args.data_dir).map_err(|e| {
                format!(
                    "cannot create the data directory {}: {e}",
                    args.data_dir.display()
                )
            })?;
            let file = std::fs::canonicalize(&args.data_dir)
                .map(|d| d.join("gateway.db"))
                .unwrap_or(file);
            Some(format!("sqlite://{}", file.display()))
        }
    };
    let Some(url) = url else {
        return Ok(None);
    };
    if cluster.is_some() && url.starts_with("sqlite:") {
        return Err(SQLITE_CLUSTER.into());
    }
    let node_id = cluster
        .map(|c| c.config().node_id().to_owned())
        .or_else(|| args.node_id.clone());
    let lease = Duration::from_millis(args.node_lease_ms.max(100));
    let mut config = StoreConfig::new(url)
        .with_durability(match args.durability {
            DurabilityArg::Batch => Durability::Batch,
            DurabilityArg::Sync => Durability::Sync,
        })
        .with_node_lease(lease / 5, lease)
        .with_webhooks(args.webhook_url.is_some());
    if let Some(node) = node_id {
        config = config.with_node_id(node);
    }
    let store = SqlStore::open(config).await.map_err(|e| e.to_string())?;
    tracing::info!(
        "runs, events and threads are kept in {}",
        store.url_redacted()
    );
    Ok(Some(store))
}

async fn run(args: Args) -> Result<(), String> {
    let config = args
        .config()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    // Development mode proper: a random secret nobody else holds, so a printed token opens
    // nothing but this process. `--dev-tokens` with a real secret prints nothing.
    let random_secret = args.jwt_secret.is_none();
    let dev_tokens = config.development;
    let limits = format!(
        "{} engines/user, {} runs at once + {} queued, {} messages/min, {} connections/user, {} connections, {} per address",
        config.factory.max_engines_per_user(),
        config.factory.engine().max_concurrent_runs(),
        config.factory.engine().max_queued_runs(),
        config.messages_per_minute,
        config.max_connections_per_user,
        config.max_connections,
        config.max_connections_per_ip,
    );
    // An invalid MCP file stops the start before anything connects; the servers are then
    // started (one that cannot be reached is logged and retried by its upkeep).
    let mcp = match &args.mcp_config {
        None => None,
        Some(path) => {
            let mcp = McpConfig::from_file(path).map_err(|e| e.to_string())?;
            let tools = McpTools::start(mcp).await;
            for s in tools.status() {
                if s.listed {
                    tracing::info!(server = %s.name, tools = s.tools, "MCP server ready");
                } else {
                    tracing::warn!(server = %s.name, "MCP server unavailable; retrying in the background");
                }
            }
            Some(tools)
        }
    };
    // Refused before anything connects: a cluster needs a database every node shares.
    if args.redis_url.is_some()
        && args
            .database_url
            .as_ref()
            .is_some_and(|u| u.as_str().starts_with("sqlite:"))
    {
        return Err(SQLITE_CLUSTER.into());
    }
    let cluster = match &args.redis_url {
        None => None,
        Some(url) => {
            let mut cluster = ClusterConfig::new(url.as_str().to_owned())
                .with_prefix(args.redis_prefix.clone())
                .with_lease_ttl(Duration::from_millis(args.lease_ttl_ms))
                .with_stream_maxlen(args.stream_maxlen);
            if let Some(node) = &args.node_id {
                cluster = cluster.with_node_id(node.clone());
            }
            let cluster = RedisCluster::connect(cluster)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(node_id = cluster.config().node_id(), redis = %cluster.config().url_redacted(), "cluster mode");
            Some(cluster)
        }
    };
    // Bad flags are reported before any file is created: the registry is checked first with
    // in-memory history, then built again on the store's thread messages once it is open.
    config
        .validate(&registry(&args, cluster.as_ref(), None, mcp.as_ref())?)
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let hooks = match (&args.webhook_url, &args.webhook_secret) {
        (Some(url), Some(secret)) => {
            let hooks = WebhookConfig::new(url, secret.as_str())
                .map_err(|e| format!("--webhook-url/--webhook-secret: {e}"))?
                .with_timeout(Duration::from_millis(args.webhook_timeout_ms))
                .with_retry(
                    Duration::from_millis(args.webhook_retry_ms),
                    Duration::from_secs(600),
                )
                .with_give_up_after(Duration::from_secs(args.webhook_give_up_secs));
            if args.database_url.as_ref().map(Secret::as_str) == Some("memory") {
                return Err("webhooks need a run store: drop --database-url memory".into());
            }
            tracing::info!(
                url = hooks.url(),
                give_up_after_s = args.webhook_give_up_secs,
                "webhooks on run end"
            );
            Some(hooks)
        }
        _ => None,
    };
    let store = open_store(&args, cluster.as_ref()).await?;
    let registry = registry(&args, cluster.as_ref(), store.as_ref(), mcp.as_ref())?;
    if args.llm_base_url.is_some() {
        tracing::info!(base_url = ?args.llm_base_url, model = ?args.llm_model, "the assistant is answered by a model");
    }
    let mut backends = Backends::default();
    if let Some(cluster) = cluster {
        backends = backends.with_cluster(cluster);
    }
    if let Some(store) = store {
        backends = backends.with_store(store);
    }
    if let Some(hooks) = hooks {
        backends = backends.with_webhooks(hooks);
    }
    let gateway = Gateway::with_backends(config, registry, backends).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let mode = match (random_secret, dev_tokens) {
        (true, _) => "development",
        (false, true) => "production with /dev/token for loopback callers",
        (false, false) => "production",
    };
    tracing::info!(addr = %local, mode, agent = %args.agent, %limits, "engine-gateway listening on http://{local}/");
    if random_secret {
        let alice = UserId::new("alice").map_err(|e| e.to_string())?;
        let token = gateway
            .keys()
            .issue(&alice, 12 * 3600)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            "development mode (set GATEWAY_JWT_SECRET for production); token for user alice: {token}"
        );
    }
    gateway
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("engine-gateway stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = match init_logs(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("engine-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("engine-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    drop(runtime);
    telemetry.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine-gateway: {e}");
            ExitCode::from(2)
        }
    }
}
