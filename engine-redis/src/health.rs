//! Whether this node reaches Redis, and the counters `/metrics` shows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

/// A snapshot of a node's Redis counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterMetrics {
    /// Whether the last Redis operation succeeded.
    pub redis_up: bool,
    /// Events stored in users' streams.
    pub events_published: u64,
    /// Events of publish attempts that failed (retried; this node's own subscribers had them
    /// already).
    pub publish_errors: u64,
    /// Events never stored in their user's stream: the publish queue was full, or every retry
    /// failed. This node's subscribers had them; other nodes see a gap in the run's sequence.
    pub events_unstored: u64,
    /// Events read back that a feed had delivered already (a batch stored twice by a retry),
    /// skipped.
    pub duplicates_skipped: u64,
    /// Events read for a user whose subscribers on this node fell so far behind that the
    /// user's backlog was full: dropped for that user only, who sees a gap.
    pub feed_overflow: u64,
    /// Events read from the streams and handed to this node's subscribers.
    pub events_read: u64,
    /// Failed stream reads (the reader retries from its position).
    pub read_errors: u64,
    /// Times Redis came back after being unreachable.
    pub reconnects: u64,
    /// Engine leases renewed by the heartbeat.
    pub lease_renewals: u64,
    /// Leases the heartbeat found expired and could not restore (the user was at the limit).
    pub leases_lost: u64,
    /// Cancels and approvals forwarded to another node.
    pub control_forwarded: u64,
}

#[derive(Debug)]
pub(crate) struct Health {
    up: AtomicBool,
    tx: watch::Sender<bool>,
    pub(crate) published: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) unstored: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) overflow: AtomicU64,
    pub(crate) read: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    reconnects: AtomicU64,
    pub(crate) renewals: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    pub(crate) forwarded: AtomicU64,
}

impl Health {
    pub(crate) fn new() -> Self {
        Self {
            up: AtomicBool::new(true),
            tx: watch::Sender::new(true),
            published: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            unstored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            read: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            leases_lost: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        }
    }

    /// Records a successful Redis operation.
    pub(crate) fn ok(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            self.tx.send_replace(true);
            tracing::info!("redis reachable again");
        }
    }

    /// Records a failed Redis operation.
    pub(crate) fn failed(&self, what: &str, error: &redis::RedisError) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.tx.send_replace(false);
            tracing::warn!(operation = what, error = %error, "redis unreachable");
        }
    }

    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    pub(crate) fn snapshot(&self) -> ClusterMetrics {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClusterMetrics {
            redis_up: self.up.load(Ordering::Acquire),
            events_published: r(&self.published),
            publish_errors: r(&self.publish_errors),
            events_unstored: r(&self.unstored),
            duplicates_skipped: r(&self.duplicates),
            feed_overflow: r(&self.overflow),
            events_read: r(&self.read),
            read_errors: r(&self.read_errors),
            reconnects: r(&self.reconnects),
            lease_renewals: r(&self.renewals),
            leases_lost: r(&self.leases_lost),
            control_forwarded: r(&self.forwarded),
        }
    }
}
