//! [`GatewayConfig`]: the gateway's limits, keys and served agent, checked before it starts.

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

/// Gateway limits and keys.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// HS256 secret for bearer tokens.
    pub jwt_secret: Vec<u8>,
    /// Whether `/dev/token` hands out tokens (never in production).
    pub development: bool,
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

    /// Checks the configuration against the agents it will serve, with the same care as
    /// `FactoryConfig`: every limit in range, a production secret of at least
    /// [`MIN_SECRET_BYTES`](Self::MIN_SECRET_BYTES), a default agent that exists.
    ///
    /// ```
    /// use engine_gateway::{demo::demo_registry, GatewayConfig};
    ///
    /// let weak = GatewayConfig::with_secret("secret");
    /// let err = weak.validate(&demo_registry()).unwrap_err();
    /// assert!(err.to_string().contains("at least 32"));
    /// assert!(GatewayConfig::development().validate(&demo_registry()).is_ok());
    /// ```
    ///
    /// # Errors
    /// [`GatewayConfigError`] naming the first problem.
    pub fn validate(&self, registry: &AgentRegistry) -> Result<(), GatewayConfigError> {
        if !self.development && self.jwt_secret.len() < Self::MIN_SECRET_BYTES {
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

    /// Production settings: `secret` required, `/dev/token` disabled.
    pub fn with_secret(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            jwt_secret: secret.into(),
            development: false,
            ..Self::development()
        }
    }
}
