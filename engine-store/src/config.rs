//! [`StoreConfig`]: where the store keeps its data and how it writes.

use std::time::Duration;

use engine_factory::Durability;

/// How to open a [`SqlStore`](crate::SqlStore).
///
/// ```
/// use engine_store::StoreConfig;
/// let config = StoreConfig::new("sqlite:///var/lib/gateway/gateway.db").with_batch_size(256);
/// assert_eq!(config.url_redacted(), "sqlite:///var/lib/gateway/gateway.db");
/// let pg = StoreConfig::new("postgres://app:secret@db:5432/engine");
/// assert_eq!(pg.url_redacted(), "postgres://app:***@db:5432/engine");
/// ```
#[derive(Clone)]
pub struct StoreConfig {
    pub(crate) url: String,
    pub(crate) node_id: String,
    pub(crate) durability: Durability,
    pub(crate) buffer: usize,
    pub(crate) batch_size: usize,
    pub(crate) commit_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) node_lease: Duration,
    pub(crate) max_connections: u32,
    pub(crate) webhooks: bool,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url_redacted())
            .field("node_id", &self.node_id)
            .field("durability", &self.durability)
            .field("buffer", &self.buffer)
            .field("batch_size", &self.batch_size)
            .field("commit_timeout", &self.commit_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("node_lease", &self.node_lease)
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

impl StoreConfig {
    /// A store at `url`: `sqlite://<path>` (the file is created if missing) or
    /// `postgres://user:password@host:port/database`. The node id is random; the rest are the
    /// defaults of the `with_` methods.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node_id: format!("node-{}", uuid::Uuid::new_v4().simple()),
            durability: Durability::Batch,
            buffer: 65_536,
            batch_size: 512,
            commit_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(2),
            node_lease: Duration::from_secs(10),
            max_connections: 4,
            webhooks: false,
        }
    }

    /// This process's node id (the gateway's `--node-id`); runs are recorded with it, and
    /// another node interrupts them once this node's heartbeat has expired.
    #[must_use]
    pub fn with_node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = node_id.into();
        self
    }
    /// When terminal records are committed (default [`Durability::Batch`]).
    #[must_use]
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }
    /// Events buffered for writing at most (default 65,536); beyond it an event is not stored
    /// and its sequence number is recorded as a gap. Run records are never dropped.
    #[must_use]
    pub fn with_buffer(mut self, events: usize) -> Self {
        self.buffer = events.max(1);
        self
    }
    /// Writes per transaction at most (default 512).
    #[must_use]
    pub fn with_batch_size(mut self, writes: usize) -> Self {
        self.batch_size = writes.clamp(1, 4096);
        self
    }
    /// Longest a run's end waits for its terminal record's commit (default 5 s); after it the
    /// run ends anyway and the record is written when the database answers.
    #[must_use]
    pub fn with_commit_timeout(mut self, timeout: Duration) -> Self {
        self.commit_timeout = timeout;
        self
    }
    /// Heartbeat period of this node (default 2 s) and how long after its last heartbeat a
    /// node counts as dead (default 10 s): its running runs are then marked `interrupted` by
    /// whichever node sweeps first.
    #[must_use]
    pub fn with_node_lease(mut self, heartbeat: Duration, lease: Duration) -> Self {
        self.heartbeat = heartbeat.max(Duration::from_millis(10));
        self.node_lease = lease.max(self.heartbeat * 2);
        self
    }

    /// Whether each run's end enqueues a webhook delivery (default off), in the transaction
    /// that records the end (also for runs a sweep marks `interrupted`): the deliveries wait in
    /// the store, across restarts, until [`RunStore::claim_webhooks`] takes them and
    /// [`RunStore::settle_webhook`] removes them.
    ///
    /// [`RunStore::claim_webhooks`]: engine_factory::RunStore::claim_webhooks
    /// [`RunStore::settle_webhook`]: engine_factory::RunStore::settle_webhook
    #[must_use]
    pub fn with_webhooks(mut self, on: bool) -> Self {
        self.webhooks = on;
        self
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The URL with any password replaced by `***` (for logs and errors).
    pub fn url_redacted(&self) -> String {
        redact(&self.url)
    }
}

/// `url` with the password of its authority and a `password=` query parameter, if any,
/// replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let url = redact_query(url);
    let Some(scheme_end) = url.find("://") else {
        return url;
    };
    let rest = &url[scheme_end + 3..];
    // The authority ends at the last `@` before the path when there are credentials (a
    // password may hold `/` or `?`), else at the first `/` or `?`.
    let authority_end = match rest.rfind('@') {
        Some(at) => at + rest[at..].find(['/', '?']).unwrap_or(rest.len() - at),
        None => rest.find(['/', '?']).unwrap_or(rest.len()),
    };
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url;
    };
    let credentials = &authority[..at];
    let Some(colon) = credentials.find(':') else {
        return url;
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &credentials[..colon],
        &rest[at..]
    )
}

/// `url` with the value of a `password=` query parameter replaced by `***`.
fn redact_query(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let (head, query) = url.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{head}{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_a_log() {
        assert_eq!(redact("postgres://u:p@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("postgres://u:p@ss@h:1/db?x=1"),
            "postgres://u:***@h:1/db?x=1"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
        assert_eq!(redact("memory"), "memory");
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&password=secret"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
        assert_eq!(redact("postgres://u:pa/ss?x@h/db"), "postgres://u:***@h/db");
    }
}
