//! The [`Gateway`]: one factory, per-user sessions, serving and graceful shutdown. Routes are
//! in `routes.rs`, a connection's reader and writer in `connection.rs`, client frames in
//! `dispatch.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use engine_core::{AgentRegistry, UserId};
use engine_factory::{ExecutionEngineFactory, FactoryError};
use engine_redis::RedisCluster;
use engine_store::SqlStore;
use tokio_util::sync::CancellationToken;

use crate::auth::TokenKeys;
use crate::metrics::GatewayMetrics;
use crate::protocol::ServerFrame;
use crate::session::{lock, Outgoing, UserSession};
use crate::slots::{ConnectionSlots, Tickets};
use crate::webhook::{WebhookConfig, Webhooks};
use crate::{GatewayConfig, GatewayConfigError};

/// What a gateway keeps beyond its process and shares with other nodes: both optional.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Backends {
    /// Cluster mode: the Redis link shared with the other nodes.
    pub cluster: Option<RedisCluster>,
    /// The run store (SQLite for one node, Postgres for a cluster).
    pub store: Option<SqlStore>,
    /// Webhooks on run end (needs `store`, opened with
    /// [`StoreConfig::with_webhooks`](engine_store::StoreConfig::with_webhooks)).
    pub webhooks: Option<WebhookConfig>,
}

impl Backends {
    /// With the cluster link `cluster`.
    #[must_use]
    pub fn with_cluster(mut self, cluster: RedisCluster) -> Self {
        self.cluster = Some(cluster);
        self
    }
    /// With the run store `store`.
    #[must_use]
    pub fn with_store(mut self, store: SqlStore) -> Self {
        self.store = Some(store);
        self
    }
    /// With webhooks on run end, as `config` says.
    #[must_use]
    pub fn with_webhooks(mut self, config: WebhookConfig) -> Self {
        self.webhooks = Some(config);
        self
    }
}

/// The gateway: one factory, per-user sessions, the HTTP routes.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: GatewayConfig,
    pub(crate) keys: TokenKeys,
    pub(crate) factory: ExecutionEngineFactory,
    /// Cluster mode: this node's link to Redis (limits, event streams, remote cancel).
    pub(crate) cluster: Option<RedisCluster>,
    /// Where runs, events and threads are kept (`None`: in memory only, as before).
    pub(crate) store: Option<SqlStore>,
    /// The webhook dispatcher's state, when webhooks are on.
    pub(crate) webhooks: Option<Arc<Webhooks>>,
    pub(crate) sessions: Mutex<HashMap<UserId, Arc<UserSession>>>,
    pub(crate) metrics: GatewayMetrics,
    /// Open WebSockets, globally and per address (the caps).
    pub(crate) slots: Arc<ConnectionSlots>,
    /// One-time tickets from `POST /ws/ticket`.
    pub(crate) tickets: Tickets,
    pub(crate) shutting_down: AtomicBool,
    /// Cancelled once runs have ended and their events were forwarded: connections close.
    pub(crate) close_connections: CancellationToken,
    pub(crate) pumps: tokio_util::task::TaskTracker,
    /// Every upgraded connection's task: shutdown waits for them to send their close frames
    /// (axum's graceful shutdown does not track upgraded connections).
    pub(crate) connections: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway over a new factory with `registry`'s agents (the page uses `assistant`).
    ///
    /// # Errors
    /// [`GatewayError::Config`] when the configuration does not validate
    /// ([`GatewayConfig::validate`]), [`GatewayError::Factory`] when the factory cannot be
    /// created in this process.
    pub fn new(config: GatewayConfig, registry: AgentRegistry) -> Result<Self, GatewayError> {
        Self::with_backends(config, registry, Backends::default())
    }

    /// A gateway whose runs, events and threads are kept in `backends.store` (SQLite or
    /// Postgres: they survive a restart, and `resume` reads them), and which is a node of
    /// `backends.cluster`'s Redis cluster when given (see [`clustered`](Self::clustered)).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_backends(
        config: GatewayConfig,
        registry: AgentRegistry,
        backends: Backends,
    ) -> Result<Self, GatewayError> {
        config.validate(&registry)?;
        let Backends {
            cluster,
            store,
            webhooks,
        } = backends;
        let webhooks = match (webhooks, &store) {
            (None, _) => None,
            (Some(hooks), Some(store)) if store.webhooks() => Some(Arc::new(
                Webhooks::new(hooks).map_err(|e| GatewayError::Webhooks(e.to_string()))?,
            )),
            (Some(_), _) => {
                return Err(GatewayError::Webhooks(
                    "webhooks need a run store opened with StoreConfig::with_webhooks(true) \
                     (the gateway binary: --database-url other than `memory`)"
                        .to_owned(),
                ))
            }
        };
        let mut seams = cluster
            .as_ref()
            .map(RedisCluster::seams)
            .unwrap_or_default();
        if let Some(store) = &store {
            seams = seams.run_store(Arc::new(store.clone()));
        }
        let factory = ExecutionEngineFactory::with_seams(config.factory.clone(), registry, seams)?;
        if let Some(cluster) = &cluster {
            cluster.serve(&factory);
        }
        let clustered = cluster.is_some();
        let gateway = Self::assemble(config, factory, cluster, store, webhooks);
        if clustered {
            gateway.watch_cluster();
        }
        gateway.start_webhooks();
        Ok(gateway)
    }

    /// A gateway node of a cluster: per-user limits, event streams, resume, cancel and
    /// approvals are shared through `cluster`'s Redis with every other node on it. A user's
    /// tabs on any node see the runs of every node. Start the cluster link with
    /// [`RedisCluster::connect`]; the nodes must share the JWT secret.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn clustered(
        config: GatewayConfig,
        registry: AgentRegistry,
        cluster: RedisCluster,
    ) -> Result<Self, GatewayError> {
        Self::with_backends(config, registry, Backends::default().with_cluster(cluster))
    }

    fn assemble(
        config: GatewayConfig,
        factory: ExecutionEngineFactory,
        cluster: Option<RedisCluster>,
        store: Option<SqlStore>,
        webhooks: Option<Arc<Webhooks>>,
    ) -> Self {
        let metrics = GatewayMetrics::new();
        if let Some(store) = &store {
            metrics.register_store(store.clone());
        }
        Self {
            inner: Arc::new(Inner {
                store,
                webhooks,
                keys: TokenKeys::with_rules(&config.jwt_secret, config.token_rules()),
                config,
                factory,
                cluster,
                sessions: Mutex::new(HashMap::new()),
                metrics,
                slots: Arc::new(ConnectionSlots::default()),
                tickets: Tickets::default(),
                shutting_down: AtomicBool::new(false),
                close_connections: CancellationToken::new(),
                pumps: tokio_util::task::TaskTracker::new(),
                connections: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    /// Tells every connection when Redis becomes unreachable (live events from other nodes
    /// pause; runs on this node go on and still reach this node's connections).
    fn watch_cluster(&self) {
        let Some(cluster) = &self.inner.cluster else {
            return;
        };
        let mut reach = cluster.watch_reachability();
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while reach.changed().await.is_ok() {
                let up = *reach.borrow_and_update();
                let Some(inner) = weak.upgrade() else { break };
                if up {
                    continue;
                }
                let frame = Outgoing::plain(
                    ServerFrame::error(
                        crate::protocol::ErrorCode::ClusterUnavailable,
                        "the cluster's Redis is unreachable: events of runs on other nodes pause \
                         and new engines cannot start; runs on this node go on. Resume your runs \
                         once it is back",
                    )
                    .to_json(),
                );
                let sessions: Vec<Arc<UserSession>> =
                    lock(&inner.sessions).values().cloned().collect();
                for s in sessions {
                    s.broadcast(&frame);
                }
            }
        });
    }

    /// The run store, when the gateway keeps its runs in a database.
    pub fn store(&self) -> Option<&SqlStore> {
        self.inner.store.as_ref()
    }

    /// The cluster link, in cluster mode.
    pub fn cluster(&self) -> Option<&RedisCluster> {
        self.inner.cluster.as_ref()
    }

    /// The token keys (to issue tokens in tests or an auth service).
    pub fn keys(&self) -> &TokenKeys {
        &self.inner.keys
    }

    /// The factory behind the gateway.
    pub fn factory(&self) -> &ExecutionEngineFactory {
        &self.inner.factory
    }

    /// Serves until `signal` completes, then shuts down gracefully (see
    /// [`shutdown`](Self::shutdown)). Each connection is served by hyper under a timer, so a
    /// client that does not finish its request headers within
    /// [`header_read_timeout`](crate::GatewayConfig::header_read_timeout) is cut off; every
    /// request knows its peer address (for `/dev/token` and the per-address cap).
    ///
    /// # Errors
    /// I/O errors of the listener.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let sweeper = self.clone();
        let idle = self.inner.config.session_idle;
        let sweep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                if sweeper.inner.shutting_down.load(Ordering::Acquire) {
                    break;
                }
                sweeper.sweep_idle(idle).await;
            }
        });
        let result = crate::listen::serve_http(self, listener, signal).await;
        sweep.abort();
        result
    }

    /// Removes the sessions of users with no connection, no run in flight and no activity for
    /// `idle`: their engine is closed, their pump stopped, their replay buffer dropped. Returns
    /// how many were removed. `serve` runs this every minute with
    /// [`GatewayConfig::session_idle`](crate::GatewayConfig::session_idle).
    pub async fn sweep_idle(&self, idle: std::time::Duration) -> usize {
        let gone: Vec<Arc<UserSession>> = {
            let mut sessions = lock(&self.inner.sessions);
            let idle_users: Vec<UserId> = sessions
                .iter()
                .filter(|(_, s)| s.is_idle(idle))
                .map(|(u, _)| u.clone())
                .collect();
            // Removed only if still without a connection, marked under its connections lock:
            // a socket that got this session just before cannot attach to it afterwards.
            let swept: Vec<UserId> = idle_users
                .into_iter()
                .filter(|u| sessions.get(u).is_some_and(|s| s.sweep_if_unattached()))
                .collect();
            swept.iter().filter_map(|u| sessions.remove(u)).collect()
        };
        for s in &gone {
            s.pump_stop.cancel();
            if let Some(engine) = s.engine.lock().await.take() {
                engine.close().await;
            }
        }
        gone.len()
    }

    /// Graceful shutdown: refuse new sockets and messages, cancel runs within the factory's
    /// deadline (each emits its terminal event, forwarded to the user's connections), then
    /// close every socket with a `1001 going away` close frame, and return once every
    /// connection has sent it (or the shutdown deadline passed). Idempotent.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if !inner.shutting_down.swap(true, Ordering::AcqRel) {
            tracing::info!(
                connections = inner.metrics.open_connections.load(Ordering::Relaxed),
                "gateway shutting down"
            );
            inner.factory.shutdown().await;
            // The hub is closed: every pump forwards what is left and ends.
            inner.pumps.close();
            // Webhook attempts under way finish and are settled (a claim left unsettled would
            // wait out its lease after a restart); deliveries still due wait in the store.
            self.stop_webhooks().await;
        }
        inner.pumps.wait().await;
        inner.close_connections.cancel();
        inner.connections.close();
        let deadline = inner.config.factory.shutdown_deadline();
        if tokio::time::timeout(deadline, inner.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = inner.connections.len(),
                "connections still closing at the shutdown deadline"
            );
        }
    }

    pub(crate) fn session(&self, user: &UserId) -> Arc<UserSession> {
        let mut sessions = lock(&self.inner.sessions);
        if let Some(s) = sessions.get(user) {
            // Touched under the sessions lock, which the idle sweep holds while it decides: a
            // session handed out now is not swept before its caller uses it.
            s.touch();
            return Arc::clone(s);
        }
        let session = Arc::new(UserSession::new(
            user.clone(),
            self.inner.config.replay_buffer,
        ));
        sessions.insert(user.clone(), Arc::clone(&session));
        // One pump per user: the user's hub subscription -> replay buffer -> connections.
        let mut sub = self.inner.factory.subscribe(user);
        let s = Arc::clone(&session);
        let me = self.clone();
        let stop = session.pump_stop.clone();
        let clustered = self.inner.cluster.is_some();
        self.inner.pumps.spawn(async move {
            // Cluster mode: events come through Redis, where a run's events can be trimmed or
            // lost with a Redis crash; a jump in a run's sequence is announced as a gap.
            let mut last_seq: std::collections::HashMap<engine_core::RunId, u64> =
                std::collections::HashMap::new();
            if let Err(e) = sub.ready().await {
                tracing::warn!(user_id = %s.user, error = %e, "live events from other nodes unavailable");
            }
            s.mark_live();
            loop {
                let e = tokio::select! {
                    e = sub.recv() => match e {
                        // Shared by the replay buffer and the frame (one allocation per event).
                        Some(e) => Arc::new(e),
                        None => break,
                    },
                    () = stop.cancelled() => break,
                };
                if clustered {
                    let last = last_seq.get(&e.run_id).copied().unwrap_or(0);
                    if e.seq > last + 1 {
                        let gap = ServerFrame::Gap {
                            run_id: e.run_id.clone(),
                            from_seq: last + 1,
                            to_seq: e.seq - 1,
                        };
                        s.broadcast(&Outgoing::plain(gap.to_json()));
                    }
                    if e.event.is_terminal() {
                        last_seq.remove(&e.run_id);
                    } else {
                        if last_seq.len() >= 10_000 {
                            last_seq.clear();
                        }
                        last_seq.insert(e.run_id.clone(), e.seq.max(last));
                    }
                }
                lock(&s.replay).push(Arc::clone(&e));
                s.notify_watchers(&e);
                let emitted_us = e.timestamp_us;
                let frame = Outgoing {
                    text: ServerFrame::Event { envelope: e }.to_json().into(),
                    emitted_us,
                };
                let (sent, dropped) = s.broadcast(&frame);
                let m = &me.inner.metrics;
                m.events_sent.inc_by(sent);
                m.events_dropped.inc_by(dropped);
            }
        });
        session
    }
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] GatewayConfigError),
    /// The engine factory could not be created.
    #[error(transparent)]
    Factory(#[from] FactoryError),
    /// Webhooks cannot start as configured.
    #[error("cannot start webhooks: {0}")]
    Webhooks(String),
}
