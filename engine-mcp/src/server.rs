//! One configured server: its sessions (one shared, or one per user), started on demand,
//! restarted with backoff when they die, closed when idle; its tool list, cached.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use engine_core::{SourcedTool, UserId};
use tokio::sync::Notify;

use crate::config::ServerConfig;
use crate::error::McpError;
use crate::session::{connect, Session};
use crate::tool::McpTool;

/// The longest wait between two starts of a failing server.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before the next start after `failures` failed ones in a row: 250 ms doubling up
/// to 30 s, with up to a quarter more of jitter so that many users' sessions do not retry in
/// step.
pub(crate) fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(250)
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(MAX_BACKOFF);
    base + base.mul_f64(fastrand::f64() / 4.0)
}

/// One session's place: at most one start at a time (the async lock), the backoff state.
#[derive(Debug, Default)]
struct Slot {
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    session: Option<Arc<Session>>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// What the tools of a server share: its configuration and its sessions.
#[derive(Debug)]
pub(crate) struct ServerCore {
    pub(crate) config: ServerConfig,
    /// The one session of a shared server.
    shared: Arc<Slot>,
    /// A per-user server's sessions, keyed by user.
    slots: Mutex<HashMap<UserId, Arc<Slot>>>,
    pub(crate) list_changed: Arc<Notify>,
}

impl ServerCore {
    fn new(config: ServerConfig) -> Self {
        Self {
            config,
            shared: Arc::default(),
            slots: Mutex::new(HashMap::new()),
            list_changed: Arc::new(Notify::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session for `user` (per-user server) or the shared one, started when there is none
    /// or the last one died, unless the last start failed less than its backoff ago.
    pub(crate) async fn session(&self, user: &UserId) -> Result<Arc<Session>, McpError> {
        let key = self.config.per_user.then(|| user.clone());
        // Taken under the map's lock, so the sweep (which removes only slots nobody holds)
        // never removes a slot a caller is about to use.
        let slot = match &key {
            Some(user) => Arc::clone(self.slots().entry(user.clone()).or_default()),
            None => Arc::clone(&self.shared),
        };
        let mut state = slot.state.lock().await;
        if let Some(s) = &state.session {
            if !s.is_closed() {
                return Ok(Arc::clone(s));
            }
            tracing::warn!(server = %self.config.name, "MCP session ended; starting it again");
            state.session = None;
        }
        let now = Instant::now();
        if let Some(at) = state.retry_at.filter(|at| *at > now) {
            return Err(McpError::Restarting {
                server: self.config.name.clone(),
                retry_in: at - now,
            });
        }
        match self.start(key.as_ref().map(UserId::as_str)).await {
            Ok(s) => {
                let s = Arc::new(s);
                *state = SlotState {
                    session: Some(Arc::clone(&s)),
                    failures: 0,
                    retry_at: None,
                };
                Ok(s)
            }
            Err(message) => {
                state.failures += 1;
                let retry_in = backoff(state.failures);
                state.retry_at = Some(Instant::now() + retry_in);
                tracing::warn!(
                    server = %self.config.name,
                    failures = state.failures,
                    retry_in_ms = retry_in.as_millis() as u64,
                    error = %message,
                    "cannot start MCP server"
                );
                Err(McpError::Connect {
                    server: self.config.name.clone(),
                    message,
                    retry_in,
                })
            }
        }
    }

    /// Starts a session under the connect timeout.
    async fn start(&self, user: Option<&str>) -> Result<Session, String> {
        let limit = self.config.connect_timeout;
        match tokio::time::timeout(
            limit,
            connect(&self.config, user, Arc::clone(&self.list_changed)),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {} ms (connectTimeoutMs)",
                limit.as_millis()
            )),
        }
    }

    /// Closes sessions idle past the idle timeout or dead, and forgets slots nobody uses.
    pub(crate) fn sweep(&self) {
        let idle = self.config.idle_timeout;
        let now = Instant::now();
        let mut closed = Vec::new();
        if let Ok(mut state) = self.shared.state.try_lock() {
            if state
                .session
                .as_ref()
                .is_some_and(|s| s.is_closed() || s.is_idle(idle))
            {
                closed.extend(state.session.take());
            }
        }
        self.slots().retain(|_, slot| {
            let Ok(mut state) = slot.state.try_lock() else {
                return true; // a start or a look-up is under way
            };
            if state
                .session
                .as_ref()
                .is_some_and(|s| s.is_closed() || s.is_idle(idle))
            {
                closed.extend(state.session.take());
            }
            let settled = state.retry_at.is_none_or(|at| at <= now);
            state.session.is_some() || !settled || Arc::strong_count(slot) > 1
        });
        if !closed.is_empty() {
            tracing::debug!(server = %self.config.name, sessions = closed.len(), "closing idle MCP sessions");
        }
        // Dropping a session ends its service (and kills its child process), outside the lock.
        drop(closed);
    }

    /// Closes the user's session of a per-user server (the user's last engine closed).
    pub(crate) fn close_user(&self, user: &UserId) {
        if !self.config.per_user {
            return;
        }
        let slot = self.slots().remove(user);
        if let Some(slot) = slot {
            if let Ok(mut state) = slot.state.try_lock() {
                drop(state.session.take());
            }
        }
    }

    /// Live sessions.
    pub(crate) fn sessions(&self) -> usize {
        self.slots()
            .values()
            .filter(|s| {
                s.state.try_lock().map_or(true, |st| {
                    st.session.as_ref().is_some_and(|s| !s.is_closed())
                })
            })
            .count()
    }

    /// Lists the server's tools: through the shared session, or for a per-user server through
    /// a session started for the `listUser` identity and closed at once.
    async fn list(&self) -> Result<Vec<rmcp::model::Tool>, McpError> {
        let connect_error = |message: String| McpError::Connect {
            server: self.config.name.clone(),
            message,
            retry_in: Duration::ZERO,
        };
        let protocol = |source| McpError::Protocol {
            server: self.config.name.clone(),
            tool: "tools/list".into(),
            source,
        };
        if self.config.per_user {
            let session = self
                .start(Some(&self.config.list_user))
                .await
                .map_err(connect_error)?;
            session.peer().list_all_tools().await.map_err(protocol)
        } else {
            let user = UserId::new("_shared").map_err(|e| connect_error(e.to_string()))?;
            let session = self.session(&user).await?;
            let _busy = session.busy();
            session.peer().list_all_tools().await.map_err(protocol)
        }
    }
}

/// A server and its cached tool list.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) core: Arc<ServerCore>,
    /// The server's tool list: the same for every user, a read-only snapshot swapped whole.
    // ssot-allow: shared-state one list per server, read-only, identical for all users
    tools: RwLock<Arc<BTreeMap<Arc<str>, SourcedTool>>>,
    listed: Mutex<Listed>,
}

/// When the tool list was last listed, or how listing fails.
#[derive(Debug, Default)]
struct Listed {
    at: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Server {
    pub(crate) fn new(config: ServerConfig) -> Self {
        Self {
            core: Arc::new(ServerCore::new(config)),
            tools: RwLock::default(),
            listed: Mutex::default(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.core.config.name
    }

    pub(crate) fn tools(&self) -> Arc<BTreeMap<Arc<str>, SourcedTool>> {
        Arc::clone(&self.tools.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether the list was never listed and the backoff has passed, or is older than its TTL.
    pub(crate) fn due(&self) -> bool {
        let listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match listed.at {
            Some(at) => now.duration_since(at) >= self.core.config.tools_ttl,
            None => listed.retry_at.is_none_or(|r| r <= now),
        }
    }

    pub(crate) fn is_listed(&self) -> bool {
        self.listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .at
            .is_some()
    }

    /// Lists the tools again and swaps the cached list; on failure the old list stays.
    pub(crate) async fn refresh(&self) -> Result<usize, McpError> {
        let listed = self.core.list().await;
        let mut state = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        let listed = match listed {
            Ok(l) => l,
            Err(e) => {
                state.failures += 1;
                state.retry_at = Some(Instant::now() + backoff(state.failures));
                return Err(e);
            }
        };
        *state = Listed {
            at: Some(Instant::now()),
            failures: 0,
            retry_at: None,
        };
        drop(state);
        let config = &self.core.config;
        let map: BTreeMap<Arc<str>, SourcedTool> = listed
            .into_iter()
            .filter(|t| config.offers(&t.name))
            .map(|t| {
                let name: Arc<str> = Arc::from(format!("{}{}", config.prefix, t.name));
                let approval = config.requires_approval(&t.name);
                let tool = McpTool::new(Arc::clone(&self.core), t);
                (
                    Arc::clone(&name),
                    SourcedTool::new(name, Arc::new(tool)).requiring_approval(approval),
                )
            })
            .collect();
        let n = map.len();
        *self.tools.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
        tracing::info!(server = %config.name, tools = n, "MCP tool list cached");
        Ok(n)
    }
}
