//! The gateway's Prometheus metrics (`prometheus-client`, one registry per gateway, no global
//! state): connections, users, events sent and dropped, runs by status, histograms of run
//! duration, queue wait and emit-to-socket lag, refused upgrades and limit hits by reason, and
//! the factory's counters read at each scrape. No label ever carries a user id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use engine_core::RunOutcome;
use engine_factory::FactoryMetrics;
use engine_factory::RunStore as _;
use engine_redis::ClusterMetrics;
use engine_store::SqlStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// `status` of a run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub(crate) status: &'static str,
}

/// `kind` of model tokens.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: &'static str,
}

/// `reason` of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

/// `result` of a webhook delivery attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub(crate) result: &'static str,
}

/// The factory's counters, mirrored at each scrape.
#[derive(Debug, Default)]
struct FactoryMirror {
    engines_created: Counter,
    engines_cleaned: Counter,
    limit_rejections: Counter,
    hub_delivered: Counter,
    hub_dropped: Counter,
    engines_active: Gauge,
    subscribers: Gauge,
}

/// The cluster link's counters (cluster mode; zero on a single node), mirrored at each scrape.
#[derive(Debug, Default)]
struct ClusterMirror {
    redis_up: Gauge,
    published: Counter,
    publish_errors: Counter,
    read: Counter,
    read_errors: Counter,
    reconnects: Counter,
    lease_renewals: Counter,
    leases_lost: Counter,
    control_forwarded: Counter,
}

/// Every metric of one gateway.
pub(crate) struct GatewayMetrics {
    registry: Mutex<Registry>,
    pub(crate) connections: Gauge,
    pub(crate) users: Gauge,
    pub(crate) events_sent: Counter,
    pub(crate) events_dropped: Counter,
    pub(crate) runs: Family<StatusLabel, Counter>,
    pub(crate) run_duration: Family<StatusLabel, Histogram>,
    pub(crate) queue_wait: Histogram,
    pub(crate) emit_to_socket: Histogram,
    pub(crate) upgrades_refused: Family<ReasonLabel, Counter>,
    pub(crate) limit_hits: Family<ReasonLabel, Counter>,
    /// Sockets closed by the server, by reason (`ping_timeout`, `token_expired`, `idle`,
    /// `protocol_error`, `message_too_big`, `shutdown`).
    pub(crate) closed: Family<ReasonLabel, Counter>,
    /// Model tokens of ended runs, by kind (`prompt`, `completion`).
    pub(crate) tokens: Family<KindLabel, Counter>,
    /// Webhook delivery attempts by result (`delivered`, `failed`, `gone`, `given_up`).
    pub(crate) webhooks: Family<ResultLabel, Counter>,
    factory: FactoryMirror,
    cluster: ClusterMirror,
    /// Connections currently open (also the gauge), for the JSON view.
    pub(crate) open_connections: AtomicU64,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl GatewayMetrics {
    pub(crate) fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("engine_gateway")),
            connections: Gauge::default(),
            users: Gauge::default(),
            events_sent: Counter::default(),
            events_dropped: Counter::default(),
            runs: Family::default(),
            run_duration: Family::new_with_constructor(seconds_histogram),
            queue_wait: seconds_histogram(),
            // 10 µs .. ~2.6 s.
            emit_to_socket: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
            upgrades_refused: Family::default(),
            limit_hits: Family::default(),
            closed: Family::default(),
            tokens: Family::default(),
            webhooks: Family::default(),
            factory: FactoryMirror::default(),
            cluster: ClusterMirror::default(),
            open_connections: AtomicU64::new(0),
        };
        {
            let mut r = crate::session::lock(&m.registry);
            r.register(
                "connections",
                "Open WebSocket connections",
                m.connections.clone(),
            );
            r.register(
                "users",
                "Users with a session (a connection, a run, or recent activity)",
                m.users.clone(),
            );
            r.register(
                "events_sent",
                "Event frames queued to connections",
                m.events_sent.clone(),
            );
            r.register(
                "events_dropped",
                "Event frames a full connection queue missed",
                m.events_dropped.clone(),
            );
            r.register("runs", "Runs ended, by status", m.runs.clone());
            r.register(
                "run_duration_seconds",
                "Time from acceptance to the terminal event, by status",
                m.run_duration.clone(),
            );
            r.register(
                "queue_wait_seconds",
                "Time a run waited for a slot (and for its thread)",
                m.queue_wait.clone(),
            );
            r.register(
                "emit_to_socket_seconds",
                "Time from an event's emission to its frame written to a socket",
                m.emit_to_socket.clone(),
            );
            r.register(
                "upgrades_refused",
                "WebSocket upgrades refused, by reason (unauthorized, too_many_connections, server_full, address_full, shutting_down)",
                m.upgrades_refused.clone(),
            );
            r.register(
                "limit_hits",
                "Messages refused by a limit, by reason",
                m.limit_hits.clone(),
            );
            r.register(
                "connections_closed",
                "WebSockets closed by the server, by reason (ping_timeout, token_expired, idle, protocol_error, message_too_big, shutdown)",
                m.closed.clone(),
            );
            r.register(
                "model_tokens",
                "Model tokens of ended runs, by kind (prompt, completion)",
                m.tokens.clone(),
            );
            r.register(
                "webhook_deliveries",
                "Webhook delivery attempts of ended runs, by result (delivered, failed and \
                 retried, gone: the receiver answered 410, given_up: retried past the limit)",
                m.webhooks.clone(),
            );
            let f = &m.factory;
            r.register(
                "engines_created",
                "Engines created by the factory",
                f.engines_created.clone(),
            );
            r.register(
                "engines_cleaned",
                "Engines closed, cleaned up, reaped or shut down",
                f.engines_cleaned.clone(),
            );
            r.register(
                "engine_limit_rejections",
                "Engine creations refused by the per-user limit",
                f.limit_rejections.clone(),
            );
            r.register(
                "hub_events_delivered",
                "Event copies the hub delivered to subscribers",
                f.hub_delivered.clone(),
            );
            r.register(
                "hub_events_dropped",
                "Event copies the hub dropped",
                f.hub_dropped.clone(),
            );
            r.register("engines_active", "Live engines", f.engines_active.clone());
            r.register(
                "subscribers",
                "Live hub subscriptions",
                f.subscribers.clone(),
            );
            let c = &m.cluster;
            let cluster: [(&str, &str, &Counter); 8] = [
                ("redis_events_published", "Cluster mode: events stored in users' Redis streams", &c.published),
                ("redis_publish_errors", "Cluster mode: events whose Redis publish failed (this node's connections still got them)", &c.publish_errors),
                ("redis_events_read", "Cluster mode: events read from Redis streams for this node's connections", &c.read),
                ("redis_read_errors", "Cluster mode: failed Redis stream reads (retried from the same position)", &c.read_errors),
                ("redis_reconnects", "Cluster mode: times Redis came back after being unreachable", &c.reconnects),
                ("redis_lease_renewals", "Cluster mode: engine leases renewed by the heartbeat", &c.lease_renewals),
                ("redis_leases_lost", "Cluster mode: leases expired during an outage and not restored (user at the limit)", &c.leases_lost),
                ("redis_control_forwarded", "Cluster mode: cancels and approvals forwarded to another node", &c.control_forwarded),
            ];
            for (name, help, counter) in cluster {
                r.register(name, help, counter.clone());
            }
            r.register(
                "redis_up",
                "Cluster mode: 1 while the last Redis operation succeeded (always 1 on a single node)",
                c.redis_up.clone(),
            );
        }
        m
    }

    /// Records how a run ended.
    pub(crate) fn run_ended(&self, outcome: &RunOutcome) {
        let label = StatusLabel {
            status: outcome.status().as_str(),
        };
        self.runs.get_or_create(&label).inc();
        let total = outcome.queue_wait + outcome.execution_time;
        self.run_duration
            .get_or_create(&label)
            .observe(total.as_secs_f64());
        self.queue_wait.observe(outcome.queue_wait.as_secs_f64());
        let usage = outcome.usage;
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ] {
            if n > 0 {
                self.tokens.get_or_create(&KindLabel { kind }).inc_by(n);
            }
        }
    }

    /// Adds the run store's metrics (up, buffered writes, batches, errors, events not stored,
    /// runs interrupted, batch commit latency), read from the store at each scrape.
    pub(crate) fn register_store(&self, store: SqlStore) {
        crate::session::lock(&self.registry).register_collector(Box::new(StoreCollector(store)));
    }

    /// Counts a refusal.
    pub(crate) fn refused(family: &Family<ReasonLabel, Counter>, reason: &'static str) {
        family.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The Prometheus text exposition, after mirroring the factory's counters and the users.
    pub(crate) fn render(
        &self,
        factory: &FactoryMetrics,
        users: usize,
        cluster: Option<&ClusterMetrics>,
    ) -> String {
        fn mirror(counter: &Counter, now: u64) {
            let seen = counter.get();
            if now > seen {
                counter.inc_by(now - seen);
            }
        }
        let f = &self.factory;
        mirror(&f.engines_created, factory.engines_created);
        mirror(&f.engines_cleaned, factory.engines_cleaned);
        mirror(&f.limit_rejections, factory.limit_rejections);
        mirror(&f.hub_delivered, factory.events_delivered);
        mirror(&f.hub_dropped, factory.events_dropped);
        f.engines_active
            .set(i64::try_from(factory.active_engines).unwrap_or(i64::MAX));
        f.subscribers
            .set(i64::try_from(factory.subscribers).unwrap_or(i64::MAX));
        self.users.set(i64::try_from(users).unwrap_or(i64::MAX));
        let c = &self.cluster;
        match cluster {
            Some(m) => {
                mirror(&c.published, m.events_published);
                mirror(&c.publish_errors, m.publish_errors);
                mirror(&c.read, m.events_read);
                mirror(&c.read_errors, m.read_errors);
                mirror(&c.reconnects, m.reconnects);
                mirror(&c.lease_renewals, m.lease_renewals);
                mirror(&c.leases_lost, m.leases_lost);
                mirror(&c.control_forwarded, m.control_forwarded);
                c.redis_up.set(i64::from(m.redis_up));
            }
            None => {
                c.redis_up.set(1);
            }
        }
        let mut text = String::new();
        let registry = crate::session::lock(&self.registry);
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.push_str("# encoding failed\n");
        }
        text
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub(crate) fn connection(&self, delta: i64) {
        self.connections.inc_by(delta);
        if delta > 0 {
            self.open_connections.fetch_add(1, Ordering::Relaxed);
        } else {
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The run store's metrics, read at each scrape (the store keeps its own counters).
#[derive(Debug)]
struct StoreCollector(SqlStore);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = self.0.health();
        let gauges: [(&str, &str, i64); 2] = [
            (
                "store_up",
                "Run store: 1 while the last write or heartbeat reached the database",
                i64::from(h.up),
            ),
            (
                "store_buffered_writes",
                "Run store: writes (run records, events) queued and not yet taken by the writer",
                i64::try_from(h.buffered).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let g = Gauge::<i64>::default();
            g.set(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 4] = [
            (
                "store_batches",
                "Run store: write batches committed (one transaction each)",
                h.batches,
            ),
            (
                "store_write_errors",
                "Run store: failed batch writes (each retried with backoff)",
                h.write_errors,
            ),
            (
                "store_events_not_stored",
                "Run store: events not stored (buffer full or refused); recorded as gaps",
                h.events_dropped,
            ),
            (
                "store_runs_interrupted",
                "Run store: runs of a stopped process or node marked interrupted by this node",
                h.runs_interrupted,
            ),
        ];
        for (name, help, value) in counters {
            let c = Counter::<u64>::default();
            c.inc_by(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let count = h.batch_latency.iter().map(|(_, n)| n).sum();
        let mut metric = encoder.encode_descriptor(
            "store_batch_seconds",
            "Run store: time to commit one write batch",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<NoLabelSet>(h.batch_latency_sum, count, &h.batch_latency, None)
    }
}
