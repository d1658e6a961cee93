//! [`ClusterConfig`]: where Redis is, what this node is called, and how long things live.

use std::time::Duration;

/// Why a [`ClusterConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterConfigError {
    /// A setting is out of range or malformed.
    #[error("invalid cluster setting `{field}`: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
}

/// Settings of one node of a Redis-backed cluster. Build it with [`ClusterConfig::new`] and the
/// `with_*` methods; [`RedisCluster::connect`](crate::RedisCluster::connect) validates it.
///
/// ```
/// use std::time::Duration;
/// use engine_redis::ClusterConfig;
/// let config = ClusterConfig::new("redis://127.0.0.1:6379")
///     .with_prefix("chat")
///     .with_node_id("node-a")
///     .with_lease_ttl(Duration::from_secs(10));
/// assert!(config.validate().is_ok());
/// assert_eq!(config.node_id(), "node-a");
/// ```
#[derive(Clone)]
pub struct ClusterConfig {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) node_id: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) stream_maxlen: u64,
    pub(crate) retention: Duration,
    pub(crate) control_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("node_id", &self.node_id)
            .field("lease_ttl", &self.lease_ttl)
            .field("stream_maxlen", &self.stream_maxlen)
            .field("retention", &self.retention)
            .field("control_timeout", &self.control_timeout)
            .finish_non_exhaustive()
    }
}

/// The URL with any password replaced by `***`, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            if creds.contains(':') {
                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
            } else {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
        }
        _ => url.to_owned(),
    }
}

impl ClusterConfig {
    /// Defaults for the Redis at `url` (`redis://host:port[/db]`, credentials allowed): prefix
    /// `engine`, a random node id, leases of 30 s, streams trimmed to about 10,000 events per
    /// user and kept 24 h after the user's last event, control requests answered within 2 s.
    pub fn new(url: impl Into<String>) -> Self {
        let short = uuid::Uuid::new_v4().simple().to_string();
        Self {
            url: url.into(),
            prefix: "engine".into(),
            node_id: format!("node-{}", &short[..8]),
            lease_ttl: Duration::from_secs(30),
            stream_maxlen: 10_000,
            retention: Duration::from_secs(24 * 3600),
            control_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
        }
    }
    /// Prefix of every key and channel (letters, digits, `._-:`; no braces).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// This node's name (unique in the cluster).
    #[must_use]
    pub fn with_node_id(mut self, node: impl Into<String>) -> Self {
        self.node_id = node.into();
        self
    }
    /// How long a crashed node's engine slots outlive it (renewed every third of it).
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }
    /// About how many events each user's stream keeps (`XADD MAXLEN ~`).
    #[must_use]
    pub fn with_stream_maxlen(mut self, events: u64) -> Self {
        self.stream_maxlen = events;
        self
    }
    /// How long a user's stream and run records live after their last event.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }
    /// How long a cancel or approval waits for the node that runs the run.
    #[must_use]
    pub fn with_control_timeout(mut self, timeout: Duration) -> Self {
        self.control_timeout = timeout;
        self
    }
    /// How long connecting to Redis may take at start.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// The Redis URL with any password hidden.
    pub fn url_redacted(&self) -> String {
        redact(&self.url)
    }
    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`ClusterConfigError::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        let bad = |field, reason: &str| {
            Err(ClusterConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            return bad("url", "must start with redis:// or rediss://");
        }
        let prefix_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        };
        if !prefix_ok(&self.prefix) {
            return bad(
                "prefix",
                "1-64 characters of letters, digits, '.', '_', '-', ':'",
            );
        }
        if self.node_id.is_empty() || self.node_id.len() > 64 || self.node_id.contains(' ') {
            return bad("node_id", "1-64 characters without spaces");
        }
        if self.lease_ttl < Duration::from_millis(300) || self.lease_ttl > Duration::from_secs(3600)
        {
            return bad("lease_ttl", "between 300 ms and 1 h");
        }
        if !(100..=10_000_000).contains(&self.stream_maxlen) {
            return bad("stream_maxlen", "between 100 and 10,000,000 events");
        }
        if self.retention < Duration::from_secs(1) {
            return bad("retention", "at least 1 s");
        }
        if self.control_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("control_timeout", "timeouts must be above zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_output() {
        let c = ClusterConfig::new("redis://app:s3cret@10.0.0.1:6379/0");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://app:***@10.0.0.1:6379/0"), "{shown}");
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn bad_settings_name_the_field() {
        let e = ClusterConfig::new("http://x").validate().unwrap_err();
        assert!(e.to_string().contains("`url`"));
        let e = ClusterConfig::new("redis://x")
            .with_prefix("a{b}")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("`prefix`"));
        let e = ClusterConfig::new("redis://x")
            .with_lease_ttl(Duration::from_millis(1))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("`lease_ttl`"));
    }
}
