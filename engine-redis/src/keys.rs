//! Redis key names: every key of a user lives under `{prefix}:{u:<user>}:...`, with the user id
//! encoded so that no id can spell another user's keys (or a Redis Cluster hash tag).

use engine_core::{RunId, UserId};

/// Builds key and channel names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// Percent-encodes every byte outside `[A-Za-z0-9._@-]` (`%` included), which makes the
/// encoding injective and keeps `:`, `{`, `}`, `*`, spaces and non-ASCII out of key names.
pub(crate) fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `{prefix}:{u:<user>}`: the hash tag keeps all of a user's keys on one cluster slot.
    fn user(&self, user: &UserId) -> String {
        format!("{}:{{u:{}}}", self.prefix, encode(user.as_str()))
    }

    /// The sorted set of the user's engine leases (member = node + engine, score = expiry ms).
    pub(crate) fn leases(&self, user: &UserId) -> String {
        format!("{}:leases", self.user(user))
    }

    /// The set of the user's lease members released lately (tombstones, so that a renewal
    /// sent before a release cannot bring its lease back; expires twice the lease TTL after
    /// the last release). Same hash slot as the leases.
    pub(crate) fn released(&self, user: &UserId) -> String {
        format!("{}:released", self.user(user))
    }

    /// The user's event stream.
    pub(crate) fn events(&self, user: &UserId) -> String {
        format!("{}:events", self.user(user))
    }

    /// Which node runs the user's run, and the last sequence number it published.
    pub(crate) fn run(&self, user: &UserId, run: &RunId) -> String {
        format!("{}:run:{}", self.user(user), encode(run.as_str()))
    }

    /// The pub/sub channel a node receives control requests and replies on.
    pub(crate) fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{}", self.prefix, encode(node))
    }

    /// A key under `user`'s namespace for another crate's data: `{prefix}:{u:<user>}:` and the
    /// `parts`, each encoded like the user id and joined with `:`.
    pub(crate) fn user_key(&self, user: &UserId, parts: &[&str]) -> String {
        let mut key = self.user(user);
        for p in parts {
            key.push(':');
            key.push_str(&encode(p));
        }
        key
    }

    /// The user a key of [`events`](Self::events) belongs to, if it is one.
    pub(crate) fn is_events_key_of(&self, key: &str, user: &UserId) -> bool {
        key == self.events(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tricky_ids_never_share_or_escape_a_namespace() {
        let keys = Keys::new("eng");
        let ids = [
            "alice",
            "alice:events",
            "alice}:events",
            "{alice}",
            "a*",
            "*",
            "a b",
            "a%3Ab",
            "a:b",
            "ålice",
            "アリス",
            "bob}:{u:alice",
        ];
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let user = UserId::new(id).unwrap();
            let k = keys.events(&user);
            assert!(seen.insert(k.clone()), "two users share {k}");
            let inner = &k["eng:{u:".len()..k.len() - "}:events".len()];
            assert!(
                !inner.contains([':', '{', '}', '*', ' ']) && inner.is_ascii(),
                "{id} leaks structure into {k}"
            );
            for other in keys_of_all(&keys, &seen, &k) {
                assert!(!other.starts_with(&format!("{}:", &k[..k.len() - ":events".len()])));
            }
        }
    }

    fn keys_of_all<'a>(
        _keys: &Keys,
        seen: &'a std::collections::HashSet<String>,
        me: &'a str,
    ) -> impl Iterator<Item = &'a String> + 'a {
        seen.iter().filter(move |k| k.as_str() != me)
    }

    #[test]
    fn encoding_is_injective_on_percent() {
        assert_ne!(encode("a%3Ab"), encode("a:b"));
        assert_eq!(encode("a:b"), "a%3Ab");
    }
}
