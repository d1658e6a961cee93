//! Thread history: the earlier turns of one user's thread, sent with each run. Stores are keyed
//! by user and thread, and the agent only ever asks with its run's own user and thread.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use engine_core::{ThreadId, UserId};
use engine_factory::{Role, RunStore};
use serde::{Deserialize, Serialize};

/// A boxed future, as the store trait returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One exchange of a thread: the user's message and the model's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Turn {
    /// What the user sent.
    pub user: String,
    /// What the model answered.
    pub assistant: String,
}

impl Turn {
    /// A turn.
    pub fn new(user: impl Into<String>, assistant: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            assistant: assistant.into(),
        }
    }
}

/// Why the history could not be read or written (the run goes on without it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The store failed.
    #[error("thread history unavailable: {0}")]
    Unavailable(String),
}

/// Where thread history lives. Every call names the user and the thread: an implementation
/// must keep users apart (the agent passes its run's own ids, never an id from the input).
pub trait HistoryStore: Send + Sync + std::fmt::Debug + 'static {
    /// The last `turns` turns of `user`'s `thread`, oldest first.
    fn load<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
        turns: usize,
    ) -> BoxFuture<'a, Result<Vec<Turn>, HistoryError>>;

    /// Appends one turn to `user`'s `thread`.
    fn append<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
        turn: Turn,
    ) -> BoxFuture<'a, Result<(), HistoryError>>;
}

/// History in this process: per user, per thread, the last `keep` turns of at most
/// `max_threads` threads (the thread used longest ago is dropped first), for at most
/// `max_users` users and `max_bytes` bytes of text in all (the user whose history was used
/// longest ago is forgotten first).
#[derive(Debug)]
pub struct InMemoryHistory {
    keep: usize,
    max_threads: usize,
    max_users: usize,
    max_bytes: usize,
    state: Mutex<Users>,
}

#[derive(Debug, Default)]
struct Users {
    users: HashMap<UserId, UserThreads>,
    /// Bytes of text held, over all users.
    bytes: usize,
    /// Ticks of use, for the least recently used user.
    clock: u64,
}

#[derive(Debug, Default)]
struct UserThreads {
    /// Threads, most recently used last.
    order: VecDeque<ThreadId>,
    turns: HashMap<ThreadId, VecDeque<Turn>>,
    /// Bytes of text held for this user.
    bytes: usize,
    /// The clock at this user's last append.
    used: u64,
}

fn turn_bytes(turn: &Turn) -> usize {
    turn.user.len() + turn.assistant.len()
}

impl Default for InMemoryHistory {
    fn default() -> Self {
        Self::new(100, 100)
    }
}

impl InMemoryHistory {
    /// Keeps `keep` turns per thread and `max_threads` threads per user, for at most 10,000
    /// users and 256 MiB of text (see [`with_bounds`](Self::with_bounds)).
    pub fn new(keep: usize, max_threads: usize) -> Self {
        Self {
            keep: keep.max(1),
            max_threads: max_threads.max(1),
            max_users: 10_000,
            max_bytes: 256 << 20,
            state: Mutex::new(Users::default()),
        }
    }

    /// At most `max_users` users and `max_bytes` bytes of text: past either, the users whose
    /// history was used longest ago are forgotten.
    #[must_use]
    pub fn with_bounds(mut self, max_users: usize, max_bytes: usize) -> Self {
        self.max_users = max_users.max(1);
        self.max_bytes = max_bytes;
        self
    }

    /// Users and bytes of text held now.
    pub fn footprint(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.users.len(), state.bytes)
    }
}

impl Users {
    /// Forgets least recently used users (never `keep`) until within the bounds.
    fn evict(&mut self, max_users: usize, max_bytes: usize, keep: &UserId) {
        while self.users.len() > max_users || self.bytes > max_bytes {
            let oldest = self
                .users
                .iter()
                .filter(|(u, _)| *u != keep)
                .min_by_key(|(_, t)| t.used)
                .map(|(u, _)| u.clone());
            let Some(oldest) = oldest else { return };
            if let Some(gone) = self.users.remove(&oldest) {
                self.bytes -= gone.bytes;
            }
        }
    }
}

impl HistoryStore for InMemoryHistory {
    fn load<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
        turns: usize,
    ) -> BoxFuture<'a, Result<Vec<Turn>, HistoryError>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let found = state
            .users
            .get(user)
            .and_then(|u| u.turns.get(thread))
            .map(|t| {
                t.iter()
                    .skip(t.len().saturating_sub(turns))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn append<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
        turn: Turn,
    ) -> BoxFuture<'a, Result<(), HistoryError>> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        state.clock += 1;
        let mine = state.users.entry(user.clone()).or_default();
        mine.used = state.clock;
        let before = mine.bytes;
        mine.order.retain(|t| t != thread);
        mine.order.push_back(thread.clone());
        while mine.order.len() > self.max_threads {
            if let Some(old) = mine.order.pop_front() {
                if let Some(dropped) = mine.turns.remove(&old) {
                    mine.bytes -= dropped.iter().map(turn_bytes).sum::<usize>();
                }
            }
        }
        let turns = mine.turns.entry(thread.clone()).or_default();
        mine.bytes += turn_bytes(&turn);
        turns.push_back(turn);
        while turns.len() > self.keep {
            if let Some(old) = turns.pop_front() {
                mine.bytes -= turn_bytes(&old);
            }
        }
        let after = mine.bytes;
        state.bytes = state.bytes + after - before;
        state.evict(self.max_users, self.max_bytes, user);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Longest [`StoreHistory`] waits for the store before the run goes on without the history.
const STORE_HISTORY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// History read from the run store's thread messages (`engine_store::SqlStore` or any
/// [`RunStore`]): the store records each run's input and answer itself, so a model remembers a
/// thread across restarts and on every node sharing the database. [`append`](HistoryStore::append)
/// has nothing to do.
#[derive(Debug, Clone)]
pub struct StoreHistory {
    store: std::sync::Arc<dyn RunStore>,
}

impl StoreHistory {
    /// History from `store` (the factory's run store).
    pub fn new(store: std::sync::Arc<dyn RunStore>) -> Self {
        Self { store }
    }
}

impl HistoryStore for StoreHistory {
    fn load<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
        turns: usize,
    ) -> BoxFuture<'a, Result<Vec<Turn>, HistoryError>> {
        Box::pin(async move {
            if turns == 0 {
                return Ok(Vec::new());
            }
            // Bounded: a model run answers without the history rather than wait on a database
            // that does not answer.
            let read =
                self.store
                    .thread_messages(user, thread, turns.saturating_mul(2).saturating_add(1));
            let messages = tokio::time::timeout(STORE_HISTORY_TIMEOUT, read)
                .await
                .map_err(|_| {
                    HistoryError::Unavailable(format!(
                        "the run store did not answer within {STORE_HISTORY_TIMEOUT:?}"
                    ))
                })?
                .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
            // A turn is a run's input followed by its answer; a run without an answer (still
            // going, as the one asking now, or failed) is not a turn.
            let mut found: Vec<Turn> = messages
                .windows(2)
                .filter(|w| {
                    w[0].role == Role::User
                        && w[1].role == Role::Assistant
                        && w[0].run_id == w[1].run_id
                })
                .map(|w| Turn::new(w[0].content.clone(), w[1].content.clone()))
                .collect();
            let extra = found.len().saturating_sub(turns);
            found.drain(..extra);
            Ok(found)
        })
    }

    fn append<'a>(
        &'a self,
        _user: &'a UserId,
        _thread: &'a ThreadId,
        _turn: Turn,
    ) -> BoxFuture<'a, Result<(), HistoryError>> {
        // The store records the run's input and answer as the run is accepted and ends.
        Box::pin(std::future::ready(Ok(())))
    }
}

/// History on the cluster's Redis: one list per user and thread under the user's keys
/// (`{prefix}:{u:<user>}:thread:<thread>`), trimmed to `keep` turns and expiring `retention`
/// after its last turn.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct RedisHistory {
    conn: redis::aio::ConnectionManager,
    keys: engine_redis::KeyBuilder,
    keep: usize,
    retention_ms: u64,
}

#[cfg(feature = "redis")]
impl RedisHistory {
    /// History on `cluster`'s Redis, keeping `keep` turns per thread for `retention`.
    pub fn new(
        cluster: &engine_redis::RedisCluster,
        keep: usize,
        retention: std::time::Duration,
    ) -> Self {
        Self {
            conn: cluster.connection(),
            keys: cluster.key_builder(),
            keep: keep.max(1),
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn key(&self, user: &UserId, thread: &ThreadId) -> String {
        self.keys.user_key(user, &["thread", thread.as_str()])
    }
}

#[cfg(feature = "redis")]
impl HistoryStore for RedisHistory {
    fn load<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
        turns: usize,
    ) -> BoxFuture<'a, Result<Vec<Turn>, HistoryError>> {
        Box::pin(async move {
            if turns == 0 {
                return Ok(Vec::new());
            }
            let mut conn = self.conn.clone();
            let raw: Vec<String> = redis::cmd("LRANGE")
                .arg(self.key(user, thread))
                .arg(-i64::try_from(turns).unwrap_or(i64::MAX))
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
            Ok(raw
                .iter()
                .filter_map(|t| serde_json::from_str(t).ok())
                .collect())
        })
    }

    fn append<'a>(
        &'a self,
        user: &'a UserId,
        thread: &'a ThreadId,
        turn: Turn,
    ) -> BoxFuture<'a, Result<(), HistoryError>> {
        Box::pin(async move {
            let key = self.key(user, thread);
            let json = serde_json::to_string(&turn)
                .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
            let mut conn = self.conn.clone();
            redis::pipe()
                .cmd("RPUSH")
                .arg(&key)
                .arg(json)
                .ignore()
                .cmd("LTRIM")
                .arg(&key)
                .arg(-i64::try_from(self.keep).unwrap_or(i64::MAX))
                .arg(-1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(self.retention_ms)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| HistoryError::Unavailable(e.to_string()))
        })
    }
}
