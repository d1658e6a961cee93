//! [`GatewayConfig`]: the gateway's limits, keys, timeouts and served agent, checked before it
//! starts. Its `Debug` output never shows the secret.

use std::ops::RangeInclusive;
use std::time::Duration;

use engine_core::limits::check_range;
use engine_core::{AgentRegistry, ConfigError, EngineConfig};
use engine_factory::FactoryConfig;

/// Why a [`GatewayConfig`] cannot start a gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayConfigError {
    /// A production JWT secret shorter than the minimum.
    #[error("the JWT secret is {len} bytes; a production secret needs at least {min} (generate one with `openssl rand -hex 32`)")]
    SecretTooShort {
        /// Its length in bytes.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A limit outside its range.
    #[error(transparent)]
    Range(#[from] ConfigError),
    /// The default agent is not in the registry.
    #[error("the default agent `{agent}` is not served; served agents: {served}")]
    UnknownAgent {
        /// The configured name.
        agent: String,
        /// The registry's agents.
        served: String,
    },
}

/// Gateway limits, keys and timeouts.
#[derive(Clone)]
pub struct GatewayConfig {
    /// HS256 secret for bearer tokens, at least [`MIN_SECRET_BYTES`](Self::MIN_SECRET_BYTES)
    /// in every mode.
    pub jwt_secret: Vec<u8>,
    /// Whether `/dev/token` hands out tokens, to loopback callers only (a peer address in
    /// `127.0.0.0/8` or `::1`). Never relaxes any other check.
    pub development: bool,
    /// Required `iss` claim (`None`: not checked).
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim (`None`: a token with an `aud` claim is refused).
    pub jwt_audience: Option<String>,
    /// Longest token lifetime accepted (`exp - iat`, or `exp - now` without `iat`).
    pub max_token_lifetime: Duration,
    /// Clock difference tolerated on `exp`, `nbf` and `iat`.
    pub token_leeway: Duration,
    /// Whether `GET /ws?token=<jwt>` is accepted (proxies log query strings: off by default;
    /// browsers use the `bearer.<jwt>` subprotocol or a one-time ticket instead).
    pub query_token: bool,
    /// How long a one-time ticket from `POST /ws/ticket` stays valid.
    pub ticket_ttl: Duration,
    /// How often the server pings each socket.
    pub ping_interval: Duration,
    /// How long after a ping a socket that sent nothing (no pong, no frame) is closed with
    /// code 1011; also the read timeout (nothing received for `ping_interval + pong_timeout`).
    pub pong_timeout: Duration,
    /// A socket with no message in either direction (pings and pongs aside) for this long is
    /// closed with code 1000 (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Longest time a client may take to send a request's headers (slowloris).
    pub header_read_timeout: Duration,
    /// WebSockets allowed open at once on this gateway (then `503`).
    pub max_connections: usize,
    /// WebSockets allowed open at once from one IP address (then `429`).
    pub max_connections_per_ip: usize,
    /// Largest accepted text frame, in bytes (larger ones get `frame_too_large`).
    pub max_frame_bytes: usize,
    /// `user_message` frames allowed per user per minute.
    pub messages_per_minute: usize,
    /// `resume` frames allowed per user per minute (each reads a run's events back).
    pub resumes_per_minute: usize,
    /// Open WebSockets allowed per user.
    pub max_connections_per_user: usize,
    /// Events kept per user for `resume`.
    pub replay_buffer: usize,
    /// Frames queued per connection before it misses events.
    pub connection_queue: usize,
    /// The factory (engine limits, concurrent runs per user, shutdown deadline).
    pub factory: FactoryConfig,
    /// Token lifetime for `/dev/token`.
    pub dev_token_ttl: Duration,
    /// A user with no connection and no run for this long loses its session (engine, replay
    /// buffer); `resume` of its old runs then answers `unknown_run`.
    pub session_idle: Duration,
    /// The agent that answers a `user_message` naming none.
    pub default_agent: String,
}

/// The gateway's engine limits: 3 runs at once per user and 4 more waiting; the engine refuses
/// the next with `too_many_runs`.
fn default_factory_config() -> FactoryConfig {
    let engine = EngineConfig::builder()
        .max_queued_runs(4)
        .build()
        .unwrap_or_default();
    FactoryConfig::builder()
        .engine(engine)
        .build()
        .unwrap_or_default()
}

impl GatewayConfig {
    /// Shortest production JWT secret, in bytes (HS256 wants at least its 256-bit key size).
    pub const MIN_SECRET_BYTES: usize = 32;
    /// Allowed range of [`max_frame_bytes`](Self::max_frame_bytes).
    pub const MAX_FRAME_BYTES: RangeInclusive<usize> = 256..=1 << 20;
    /// Allowed range of [`messages_per_minute`](Self::messages_per_minute).
    pub const MESSAGES_PER_MINUTE: RangeInclusive<usize> = 1..=10_000;
    /// Allowed range of [`resumes_per_minute`](Self::resumes_per_minute).
    pub const RESUMES_PER_MINUTE: RangeInclusive<usize> = 1..=100_000;
    /// Allowed range of [`max_connections_per_user`](Self::max_connections_per_user).
    pub const MAX_CONNECTIONS_PER_USER: RangeInclusive<usize> = 1..=100;
    /// Allowed range of [`replay_buffer`](Self::replay_buffer).
    pub const REPLAY_BUFFER: RangeInclusive<usize> = 1..=100_000;
    /// Allowed range of [`connection_queue`](Self::connection_queue).
    pub const CONNECTION_QUEUE: RangeInclusive<usize> = 1..=100_000;
    /// Allowed range of [`session_idle`](Self::session_idle).
    pub const SESSION_IDLE: RangeInclusive<Duration> =
        Duration::from_secs(10)..=Duration::from_secs(7 * 24 * 3600);
    /// Allowed range of [`max_token_lifetime`](Self::max_token_lifetime).
    pub const MAX_TOKEN_LIFETIME: RangeInclusive<Duration> =
        Duration::from_secs(60)..=Duration::from_secs(30 * 24 * 3600);
    /// Allowed range of [`token_leeway`](Self::token_leeway).
    pub const TOKEN_LEEWAY: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(300);
    /// Allowed range of [`ticket_ttl`](Self::ticket_ttl).
    pub const TICKET_TTL: RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(300);
    /// Allowed range of [`ping_interval`](Self::ping_interval) and
    /// [`pong_timeout`](Self::pong_timeout).
    pub const PING: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(3600);
    /// Allowed range of [`idle_timeout`](Self::idle_timeout) when set.
    pub const IDLE_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
    /// Allowed range of [`header_read_timeout`](Self::header_read_timeout).
    pub const HEADER_READ_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(300);
    /// Allowed range of [`max_connections`](Self::max_connections) and
    /// [`max_connections_per_ip`](Self::max_connections_per_ip).
    pub const MAX_CONNECTIONS: RangeInclusive<usize> = 1..=10_000_000;

    /// Checks the configuration against the agents it will serve, with the same care as
    /// `FactoryConfig`: every limit in range, a secret of at least
    /// [`MIN_SECRET_BYTES`](Self::MIN_SECRET_BYTES) (also with `/dev/token` on), a default
    /// agent that exists.
    ///
    /// ```
    /// use engine_gateway::{demo::demo_registry, GatewayConfig};
    ///
    /// let weak = GatewayConfig::with_secret("secret");
    /// let err = weak.validate(&demo_registry()).unwrap_err();
    /// assert!(err.to_string().contains("at least 32"));
    /// let mut dev_tokens = GatewayConfig::with_secret("secret");
    /// dev_tokens.development = true;
    /// assert!(dev_tokens.validate(&demo_registry()).is_err(), "/dev/token relaxes nothing");
    /// assert!(GatewayConfig::development().validate(&demo_registry()).is_ok());
    /// ```
    ///
    /// # Errors
    /// [`GatewayConfigError`] naming the first problem.
    pub fn validate(&self, registry: &AgentRegistry) -> Result<(), GatewayConfigError> {
        if self.jwt_secret.len() < Self::MIN_SECRET_BYTES {
            return Err(GatewayConfigError::SecretTooShort {
                len: self.jwt_secret.len(),
                min: Self::MIN_SECRET_BYTES,
            });
        }
        check_range(
            "max_frame_bytes",
            self.max_frame_bytes,
            Self::MAX_FRAME_BYTES,
        )?;
        check_range(
            "messages_per_minute",
            self.messages_per_minute,
            Self::MESSAGES_PER_MINUTE,
        )?;
        check_range(
            "resumes_per_minute",
            self.resumes_per_minute,
            Self::RESUMES_PER_MINUTE,
        )?;
        check_range(
            "max_connections_per_user",
            self.max_connections_per_user,
            Self::MAX_CONNECTIONS_PER_USER,
        )?;
        check_range("replay_buffer", self.replay_buffer, Self::REPLAY_BUFFER)?;
        check_range(
            "connection_queue",
            self.connection_queue,
            Self::CONNECTION_QUEUE,
        )?;
        check_range("session_idle", self.session_idle, Self::SESSION_IDLE)?;
        check_range(
            "max_token_lifetime",
            self.max_token_lifetime,
            Self::MAX_TOKEN_LIFETIME,
        )?;
        check_range("token_leeway", self.token_leeway, Self::TOKEN_LEEWAY)?;
        check_range("ticket_ttl", self.ticket_ttl, Self::TICKET_TTL)?;
        check_range("ping_interval", self.ping_interval, Self::PING)?;
        check_range("pong_timeout", self.pong_timeout, Self::PING)?;
        if let Some(idle) = self.idle_timeout {
            check_range("idle_timeout", idle, Self::IDLE_TIMEOUT)?;
        }
        check_range(
            "header_read_timeout",
            self.header_read_timeout,
            Self::HEADER_READ_TIMEOUT,
        )?;
        check_range(
            "max_connections",
            self.max_connections,
            Self::MAX_CONNECTIONS,
        )?;
        check_range(
            "max_connections_per_ip",
            self.max_connections_per_ip,
            Self::MAX_CONNECTIONS,
        )?;
        if !registry.has_agent(&self.default_agent) {
            return Err(GatewayConfigError::UnknownAgent {
                agent: self.default_agent.clone(),
                served: registry.agent_names().collect::<Vec<_>>().join(", "),
            });
        }
        Ok(())
    }

    /// Development defaults with a random secret and `/dev/token` enabled.
    pub fn development() -> Self {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        Self {
            jwt_secret: secret.into_bytes(),
            development: true,
            jwt_issuer: None,
            jwt_audience: None,
            max_token_lifetime: Duration::from_secs(24 * 3600),
            token_leeway: Duration::from_secs(5),
            query_token: false,
            ticket_ttl: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(20),
            idle_timeout: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 20_000,
            max_connections_per_ip: 500,
            max_frame_bytes: 16 * 1024,
            messages_per_minute: 30,
            resumes_per_minute: 120,
            max_connections_per_user: 5,
            replay_buffer: 1000,
            connection_queue: 1024,
            factory: default_factory_config(),
            dev_token_ttl: Duration::from_secs(12 * 3600),
            session_idle: Duration::from_secs(600),
            default_agent: "assistant".to_owned(),
        }
    }

    /// The rules tokens are checked against (issuer, audience, lifetime, leeway).
    pub fn token_rules(&self) -> crate::auth::TokenRules {
        let mut rules = crate::auth::TokenRules::default();
        rules.issuer.clone_from(&self.jwt_issuer);
        rules.audience.clone_from(&self.jwt_audience);
        rules.max_lifetime = self.max_token_lifetime;
        rules.leeway = self.token_leeway;
        rules
    }

    /// Production settings: `secret` required, `/dev/token` disabled.
    pub fn with_secret(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            jwt_secret: secret.into(),
            development: false,
            ..Self::development()
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    /// Every field but the secret, which shows as `<redacted>` (with its length).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field(
                "jwt_secret",
                &format_args!("<redacted, {} bytes>", self.jwt_secret.len()),
            )
            .field("development", &self.development)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("max_token_lifetime", &self.max_token_lifetime)
            .field("token_leeway", &self.token_leeway)
            .field("query_token", &self.query_token)
            .field("ticket_ttl", &self.ticket_ttl)
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("messages_per_minute", &self.messages_per_minute)
            .field("resumes_per_minute", &self.resumes_per_minute)
            .field("max_connections_per_user", &self.max_connections_per_user)
            .field("replay_buffer", &self.replay_buffer)
            .field("connection_queue", &self.connection_queue)
            .field("factory", &self.factory)
            .field("dev_token_ttl", &self.dev_token_ttl)
            .field("session_idle", &self.session_idle)
            .field("default_agent", &self.default_agent)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_secret() {
        let config = GatewayConfig::with_secret("a-production-secret-of-at-least-32-bytes!");
        let text = format!("{config:?}");
        eprintln!("{text}");
        assert!(!text.contains("a-production-secret"), "{text}");
        assert!(text.contains("<redacted, 41 bytes>"), "{text}");
        assert!(text.contains("max_connections_per_ip"), "{text}");
    }
}
