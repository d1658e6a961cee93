//! `engine-redis`: cluster mode for the engine on Redis. Several gateway nodes (several
//! [`ExecutionEngineFactory`]s in different processes) share one Redis and get:
//!
//! * **per-user limits across nodes**: a user's engine slots are leases in one sorted set per
//!   user (member = node + engine, score = expiry), reserved and released by Lua scripts, so the
//!   limit is exact however many nodes race; a heartbeat renews this node's leases, and a
//!   crashed node's leases expire after the TTL;
//! * **one event stream per user**: every event of a run on any node is `XADD`ed to its user's
//!   stream (trimmed with `MAXLEN ~`), and each node follows the streams of its subscribed users
//!   with a blocking `XREAD`, so a user's tabs on every node see every run, and a run can be
//!   resumed on any node within the retention window ([`EventBus::replay`]);
//! * **cancel and approval anywhere**: [`RedisCluster::cancel`] and [`RedisCluster::approve`]
//!   reach the node that runs the run, with the same answers as a local call; another user's
//!   run id is unknown on every node, since the run record lives under the asking user's keys.
//!
//! Every key of a user is `{prefix}:{u:<user>}:...` with the user id percent-encoded, so no
//! user id can spell another user's key.
//!
//! ```no_run
//! use engine_core::AgentRegistry;
//! use engine_factory::{ExecutionEngineFactory, FactoryConfig};
//! use engine_redis::{ClusterConfig, RedisCluster};
//!
//! # async fn demo(registry: AgentRegistry) -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = RedisCluster::connect(
//!     ClusterConfig::new("redis://127.0.0.1:6379").with_node_id("node-a"),
//! )
//! .await?;
//! let factory =
//!     ExecutionEngineFactory::with_seams(FactoryConfig::default(), registry, cluster.seams())?;
//! cluster.serve(&factory); // answer cancels and approvals from other nodes
//! # Ok(())
//! # }
//! ```
//!
//! [`EventBus::replay`]: engine_factory::EventBus::replay

mod admission;
mod bus;
mod config;
mod control;
mod feed;
mod health;
mod keys;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

use engine_core::{ApprovalDecision, RunId, UserId};
use engine_factory::{ExecutionEngineFactory, Seams};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

pub use config::{ClusterConfig, ClusterConfigError};
pub use control::ControlError;
pub use health::ClusterMetrics;

use admission::RedisAdmission;
use bus::{BusSettings, RedisBus};
use control::{Control, Op};
use health::Health;
use keys::Keys;

/// Names keys in one user's namespace on the cluster's Redis, for data kept beside the
/// engine's (for example a model agent's thread history). No user id can spell another user's
/// key: ids and parts are percent-encoded as for the engine's own keys.
///
/// ```
/// # fn demo(cluster: &engine_redis::RedisCluster) {
/// use engine_core::UserId;
/// let keys = cluster.key_builder();
/// let key = keys.user_key(&UserId::new("alice:1").unwrap(), &["thread", "t-1"]);
/// assert!(key.ends_with("{u:alice%3A1}:thread:t-1"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    keys: Keys,
}

impl KeyBuilder {
    /// `{prefix}:{u:<user>}:<part>:<part>...`.
    pub fn user_key(&self, user: &UserId, parts: &[&str]) -> String {
        self.keys.user_key(user, parts)
    }
}

/// Why a node could not join the cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ClusterConfigError),
    /// Redis could not be reached or refused the connection.
    #[error("cannot reach Redis at {url}: {cause}")]
    Unreachable {
        /// The URL (password hidden).
        url: String,
        /// What the client reported.
        cause: String,
    },
}

/// One node of a Redis-backed cluster: the [`Seams`] for its factory, the cross-node control
/// plane and the node's Redis counters. Dropping it stops its background tasks.
pub struct RedisCluster {
    config: ClusterConfig,
    conn: ConnectionManager,
    client: redis::Client,
    admission: Arc<RedisAdmission>,
    bus: Arc<RedisBus>,
    control: Arc<Control>,
    health: Arc<Health>,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RedisCluster {
    /// Connects to Redis (checking it answers `PING` within the connect timeout), and starts
    /// this node's lease heartbeat, stream publisher and reader, and control listener.
    ///
    /// # Errors
    /// [`ClusterError::Config`] for an invalid configuration, [`ClusterError::Unreachable`]
    /// naming the URL (password hidden) and the cause when Redis does not answer.
    pub async fn connect(config: ClusterConfig) -> Result<Self, ClusterError> {
        config.validate()?;
        let unreachable = |cause: String| ClusterError::Unreachable {
            url: config.url_redacted(),
            cause,
        };
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| unreachable(e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(
                config
                    .connect_timeout
                    .max(std::time::Duration::from_secs(2)),
            ))
            .set_number_of_retries(1)
            .set_max_delay(std::time::Duration::from_millis(500));
        let connecting = ConnectionManager::new_with_config(client.clone(), manager_config);
        let mut conn = tokio::time::timeout(config.connect_timeout, connecting)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", config.connect_timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let keys = Keys::new(&config.prefix);
        let health = Arc::new(Health::new());
        let stop = CancellationToken::new();
        let node = config.node_id.clone();
        let admission = Arc::new(RedisAdmission::new(
            conn.clone(),
            keys.clone(),
            node.clone(),
            config.lease_ttl,
            Arc::clone(&health),
        ));
        admission.spawn_heartbeat(stop.clone());
        let bus = Arc::new(RedisBus::start(
            conn.clone(),
            client.clone(),
            BusSettings {
                keys: keys.clone(),
                node: node.clone(),
                maxlen: config.stream_maxlen,
                retention: config.retention,
            },
            Arc::clone(&health),
            &stop,
        ));
        let control = Arc::new(Control::new(
            conn.clone(),
            keys,
            node.clone(),
            config.control_timeout,
            Arc::clone(&health),
        ));
        control.listen(client.clone(), stop.clone()).await;
        tracing::info!(node_id = %node, url = %config.url_redacted(), "joined the cluster");
        Ok(Self {
            config,
            conn,
            client,
            admission,
            bus,
            control,
            health,
            stop,
        })
    }

    /// The seams to build this node's factory with
    /// ([`ExecutionEngineFactory::with_seams`]).
    pub fn seams(&self) -> Seams {
        Seams::default()
            .admission(Arc::clone(&self.admission) as _)
            .event_bus(Arc::clone(&self.bus) as _)
    }

    /// Answers cancels and approvals that other nodes forward for runs on `factory` (this
    /// node's factory, built with [`seams`](Self::seams)). Call once; later calls are ignored.
    pub fn serve(&self, factory: &ExecutionEngineFactory) {
        if !self.control.set_factory(factory.clone()) {
            tracing::warn!("RedisCluster::serve called twice; the first factory keeps serving");
        }
    }

    /// Cancels `user`'s run `run`, on this node or on the node that runs it.
    ///
    /// # Errors
    /// [`ControlError::UnknownRun`] when no node runs it for `user` (another user's run id
    /// included), [`ControlError::NodeUnreachable`], [`ControlError::Unavailable`].
    pub async fn cancel(&self, user: &UserId, run: &RunId) -> Result<(), ControlError> {
        self.control.apply(user, run, Op::Cancel).await
    }

    /// Decides tool call `call_id` of `user`'s run `run`, wherever it runs.
    ///
    /// # Errors
    /// As [`cancel`](Self::cancel), and [`ControlError::UnknownApproval`].
    pub async fn approve(
        &self,
        user: &UserId,
        run: &RunId,
        call_id: u32,
        decision: ApprovalDecision,
    ) -> Result<(), ControlError> {
        self.control
            .apply(user, run, Op::Approve { call_id, decision })
            .await
    }

    /// Whether Redis answers `PING` now.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let pong = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        match pong {
            Ok(Ok(_)) => {
                self.health.ok();
                true
            }
            Ok(Err(e)) => {
                self.health.failed("ping", &e);
                false
            }
            Err(_) => false,
        }
    }

    /// Follows Redis reachability: `true` while the last operation succeeded.
    pub fn watch_reachability(&self) -> tokio::sync::watch::Receiver<bool> {
        self.health.watch()
    }

    /// The node's Redis counters.
    pub fn metrics(&self) -> ClusterMetrics {
        self.health.snapshot()
    }

    /// Users this node keeps per-user bus state for (attached feeds): only users with a
    /// subscriber on this node, so it returns to 0 when they go.
    pub fn tracked_users(&self) -> usize {
        self.bus.tracked()
    }

    /// Engine leases this node holds now.
    pub fn leases_held(&self) -> usize {
        self.admission.held_count()
    }

    /// Renews this node's leases now (the heartbeat does it every third of the TTL); returns
    /// how many were renewed.
    pub async fn renew_leases(&self) -> u64 {
        self.admission.renew_all().await
    }

    /// This node's configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// A handle on the node's shared Redis connection (it reconnects by itself), for data kept
    /// beside the engine's.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Key names in users' namespaces under this cluster's prefix.
    pub fn key_builder(&self) -> KeyBuilder {
        KeyBuilder {
            keys: Keys::new(&self.config.prefix),
        }
    }

    /// The Redis client (for tools and tests that inspect keys).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Stops the heartbeat, reader, publisher and listener (also done on drop). Leases not
    /// released expire after the TTL.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}
