//! [`ExecutionEngineFactory`]: admission, tracking, reaping and shutdown of engines.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use engine_core::factory_only::{EngineKit, FactoryKey, KeyTaken};
use engine_core::{
    AgentRegistry, ApprovalDecision, EngineError, RunId, UserExecutionContext, UserExecutionEngine,
    UserId,
};
use futures_util::FutureExt;
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Admission, AdmissionError, EventBus, Seams};
use crate::config::FactoryConfig;
use crate::hub::{EventHub, Subscription};
use crate::privileged;
use crate::store::RunStore;
use crate::sync::lock;
use crate::users::{UserHash, UserHasher, UserMap};

/// Why the factory refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[doc(alias("ExecutionEngineFactoryError"))]
pub enum FactoryError {
    /// Code outside engine-factory took the engine construction key before the first factory
    /// was created, so no factory can build engines in this process.
    #[error("cannot create the engine factory: {0}")]
    KeyTaken(#[from] KeyTaken),
    /// The user already holds `limit` live engines.
    #[error("user {user} has reached the engine limit ({limit}/{limit} engines, max_engines_per_user = {limit}); close an engine or let the reaper remove idle ones")]
    UserLimitReached {
        /// The user.
        user: UserId,
        /// The per-user limit.
        limit: usize,
    },
    /// An engine for this (user, run) pair is already live.
    #[error("an engine for user {user} and run {run_id} already exists; use a new run id or the existing engine")]
    DuplicateRun {
        /// The user.
        user: UserId,
        /// The run.
        run_id: RunId,
    },
    /// The factory was shut down; it creates no more engines.
    #[error("the engine factory has shut down and creates no more engines")]
    ShutDown,
    /// This factory admits engines across a cluster, which takes a round trip: call
    /// `ExecutionEngineFactory::create` (async) instead of `create_for_user`.
    #[error("this factory admits engines across a cluster; use the async `create` instead of `create_for_user`")]
    NeedsAsyncCreate,
    /// The cluster's admission store failed; nothing was created.
    #[error("engine admission failed: {0}; check the cluster store (Redis) and retry")]
    Admission(String),
    /// The engine could not be assembled.
    #[error("engine creation failed: {0}")]
    Engine(#[from] EngineError),
}

/// A snapshot of the factory's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FactoryMetrics {
    /// Engines created since start.
    pub engines_created: u64,
    /// Engines live now.
    pub active_engines: usize,
    /// Engines removed (closed, dropped, cleaned up, reaped or shut down).
    pub engines_cleaned: u64,
    /// Creations refused by the per-user limit.
    pub limit_rejections: u64,
    /// Creations that failed for any other reason (duplicate run, assembly error, shut down).
    pub creation_errors: u64,
    /// Engines whose shutdown did not finish within the shutdown deadline.
    pub cleanup_errors: u64,
    /// Engines removed by the reaper for exceeding the TTL.
    pub timeout_cleanups: u64,
    /// Live engines per user (users with none are absent).
    pub active_engines_per_user: BTreeMap<UserId, usize>,
    /// Event copies delivered to subscribers.
    pub events_delivered: u64,
    /// Event copies dropped (no subscriber, or a subscriber full past the deadline).
    pub events_dropped: u64,
    /// Live subscriptions.
    pub subscribers: usize,
    /// Users with a live hub channel.
    pub hub_users: usize,
}

/// What [`ExecutionEngineFactory::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Engines shut down.
    pub engines_closed: usize,
    /// Whether some runs were still ending when the deadline passed.
    pub deadline_exceeded: bool,
}

#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    cleaned: AtomicU64,
    limit_rejections: AtomicU64,
    creation_errors: AtomicU64,
    cleanup_errors: AtomicU64,
    timeout_cleanups: AtomicU64,
}

/// A live engine (its run id, checked for duplicates, is its context's).
struct Slot {
    id: u64,
    engine: UserExecutionEngine,
}

/// One user's live engines: most users hold one, inline; a second spills to the heap.
type Slots = SmallVec<[Slot; 1]>;

struct FactoryInner {
    key: &'static FactoryKey,
    config: FactoryConfig,
    registry: AgentRegistry,
    /// The configuration and agents every engine shares (one allocation per factory).
    kit: EngineKit,
    hub: EventHub,
    admission: Option<Arc<dyn Admission>>,
    bus: Option<Arc<dyn EventBus>>,
    store: Option<Arc<dyn RunStore>>,
    /// Set once by `shutdown`; admission reads it under the user's shard lock.
    shut_down: AtomicBool,
    next_slot: AtomicU64,
    /// Live engines, sharded by user: admissions of different users take different locks. A
    /// user's entry is removed with its last engine, so the map never holds users without
    /// engines. Hashed like the hub's channels: an admission hashes its user once.
    engines: UserMap<Slots>,
    counters: Counters,
    reaper_started: AtomicBool,
    reaper_stop: CancellationToken,
}

impl FactoryInner {
    /// Removes one slot; `None` if it was already removed (closed, reaped, cleaned up). The
    /// caller gives the cluster lease back.
    fn release(&self, user: &UserId, hash: UserHash, slot: u64) -> Option<UserExecutionEngine> {
        let mut shard = self.engines.lock(hash);
        let mut removed = None;
        shard.remove_if(hash, user, |slots| {
            if let Some(at) = slots.iter().position(|s| s.id == slot) {
                removed = Some(slots.swap_remove(at).engine);
            }
            slots.is_empty()
        });
        removed
    }

    /// A copy of `user`'s live engines.
    fn user_engines(&self, user: &UserId) -> Vec<UserExecutionEngine> {
        let hash = self.engines.hash(user);
        self.engines
            .lock(hash)
            .get(hash, user)
            .map(|slots| slots.iter().map(|s| s.engine.clone()).collect())
            .unwrap_or_default()
    }

    /// Gives the cluster-wide slots of `engines` back, in the background (a lease the release
    /// cannot reach expires by its TTL).
    fn release_leases(&self, engines: &[UserExecutionEngine]) {
        let Some(admission) = &self.admission else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for e in engines {
            let admission = Arc::clone(admission);
            let user = e.user_id().clone();
            let id = e.engine_id().to_owned();
            rt.spawn(async move {
                if let Err(err) = admission.release(&user, &id).await {
                    tracing::warn!(user_id = %user, engine_id = %id, error = %err, "engine lease not released; it expires by its TTL");
                }
            });
        }
    }
}

/// The only way to obtain a [`UserExecutionEngine`].
///
/// It validates and admits contexts under per-user limits, hands each engine a sink bound to its
/// own user, routes events to per-user subscribers, reaps idle and expired engines, and shuts
/// everything down gracefully. Cheap to clone: clones share one factory.
///
/// ```
/// use engine_core::{async_trait, Agent, AgentRegistry, BoxError, RunContext, UserExecutionContext};
/// use engine_factory::{ExecutionEngineFactory, FactoryConfig};
///
/// struct Hello;
/// #[async_trait]
/// impl Agent for Hello {
///     async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
///         ctx.think("greeting").await;
///         Ok(format!("hello, {input}"))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = AgentRegistry::builder().agent("hello", || Hello).build()?;
/// let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry)?;
/// let ctx = UserExecutionContext::new("alice", "thread-1", "run-1")?;
/// let mut events = factory.subscribe(ctx.user_id());
/// let engine = factory.create_for_user(&ctx)?;
/// let outcome = engine.execute(&ctx, "hello", "world").await?;
/// assert_eq!(outcome.result(), Some("hello, world"));
/// let first = events.recv().await.unwrap();
/// assert_eq!(first.event.kind(), "agent_started");
/// engine.close().await;
/// factory.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[doc(alias(
    "UnifiedExecutionEngineFactory",
    "UserExecutionEngineFactory",
    "UserScopedEngineFactory"
))]
pub struct ExecutionEngineFactory {
    inner: Arc<FactoryInner>,
}

impl std::fmt::Debug for ExecutionEngineFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionEngineFactory")
            .field("config", &self.inner.config)
            .field("registry", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

impl ExecutionEngineFactory {
    /// A factory with `config` (validated by its builder) and the agents of `registry`. The
    /// background reaper starts with the first engine. Any number of factories may exist; they
    /// share the process's one engine construction key.
    ///
    /// # Errors
    /// [`FactoryError::KeyTaken`] when other code took the key first (see
    /// [`engine_core::factory_only`]); the message names where.
    pub fn new(config: FactoryConfig, registry: AgentRegistry) -> Result<Self, FactoryError> {
        Self::with_seams(config, registry, Seams::default())
    }

    /// A factory whose admission and event routing go through `seams` (for example Redis, so
    /// that several nodes share per-user limits and event streams). With a cluster
    /// [`Admission`], engines are created with the async [`create`](Self::create).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_seams(
        config: FactoryConfig,
        registry: AgentRegistry,
        seams: Seams,
    ) -> Result<Self, FactoryError> {
        let key = privileged::key()?;
        let hasher = UserHasher::new();
        let hub = EventHub::new(
            config.subscriber_buffer(),
            config.backpressure_deadline(),
            seams.bus.clone(),
            seams.store.clone(),
            hasher.clone(),
        );
        Ok(Self {
            inner: Arc::new(FactoryInner {
                key,
                kit: privileged::kit(key, config.engine().clone(), registry.clone()),
                config,
                registry,
                hub,
                admission: seams.admission,
                bus: seams.bus,
                store: seams.store,
                shut_down: AtomicBool::new(false),
                next_slot: AtomicU64::new(0),
                engines: UserMap::new(hasher),
                counters: Counters::default(),
                reaper_started: AtomicBool::new(false),
                reaper_stop: CancellationToken::new(),
            }),
        })
    }

    /// The factory's configuration.
    pub fn config(&self) -> &FactoryConfig {
        &self.inner.config
    }
    /// The agent registry shared by all engines.
    pub fn registry(&self) -> &AgentRegistry {
        &self.inner.registry
    }

    /// Creates an engine for `context`'s user.
    ///
    /// Admission is atomic per factory: with `max_engines_per_user = 2`, 100 concurrent calls
    /// for one user yield exactly 2 engines. Limits are per user: one user at its limit never
    /// blocks another. The background reaper starts with the first engine created inside a
    /// tokio runtime (engines themselves need a runtime to run).
    ///
    /// # Errors
    /// [`FactoryError::UserLimitReached`], [`FactoryError::DuplicateRun`],
    /// [`FactoryError::ShutDown`]; [`FactoryError::NeedsAsyncCreate`] on a factory with a
    /// cluster admission (use [`create`](Self::create)).
    pub fn create_for_user(
        &self,
        context: &UserExecutionContext,
    ) -> Result<EngineHandle, FactoryError> {
        if self.inner.admission.is_some() {
            return Err(FactoryError::NeedsAsyncCreate);
        }
        self.create_local(context)
    }

    /// Creates an engine for `context`'s user, admitting it across the cluster when the factory
    /// has a cluster [`Admission`] (with `max_engines_per_user = 2`, 100 concurrent calls for
    /// one user spread over any number of nodes yield exactly 2 engines). Without one, the same
    /// as [`create_for_user`](Self::create_for_user).
    ///
    /// # Errors
    /// As [`create_for_user`](Self::create_for_user), and [`FactoryError::Admission`] when the
    /// cluster store fails.
    pub async fn create(
        &self,
        context: &UserExecutionContext,
    ) -> Result<EngineHandle, FactoryError> {
        let handle = self.create_local(context)?;
        let Some(admission) = &self.inner.admission else {
            return Ok(handle);
        };
        let limit = self.inner.config.max_engines_per_user();
        let reserved = admission
            .reserve(handle.user_id(), handle.engine_id(), limit)
            .await;
        let counters = &self.inner.counters;
        match reserved {
            Ok(()) => Ok(handle),
            Err(e) => {
                // Undo the local admission; the engine never ran anything.
                handle.close().await;
                counters.created.fetch_sub(1, Ordering::Relaxed);
                counters.cleaned.fetch_sub(1, Ordering::Relaxed);
                match e {
                    AdmissionError::LimitReached { .. } => {
                        counters.limit_rejections.fetch_add(1, Ordering::Relaxed);
                        Err(FactoryError::UserLimitReached {
                            user: context.user_id().clone(),
                            limit,
                        })
                    }
                    other => {
                        counters.creation_errors.fetch_add(1, Ordering::Relaxed);
                        Err(FactoryError::Admission(other.to_string()))
                    }
                }
            }
        }
    }

    fn create_local(&self, context: &UserExecutionContext) -> Result<EngineHandle, FactoryError> {
        let inner = &self.inner;
        let user = context.user_id();
        let admitted = Self::admit(inner, context);
        match &admitted {
            Ok(_) => {
                inner.counters.created.fetch_add(1, Ordering::Relaxed);
                self.start_reaper();
            }
            Err(FactoryError::UserLimitReached { .. }) => {
                inner
                    .counters
                    .limit_rejections
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                inner
                    .counters
                    .creation_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let (slot, hash, engine) = admitted?;
        tracing::debug!(user_id = %user, run_id = %context.run_id(), engine_id = engine.engine_id(), "engine created");
        Ok(EngineHandle {
            engine,
            factory: Arc::clone(inner),
            slot,
            hash,
            released: false,
        })
    }

    /// The engine is assembled before any lock is taken; the limit and duplicate checks and
    /// the insert then happen in one critical section on the user's shard, so the limit is
    /// exact however many threads race (tests/model.rs explores the interleavings). An engine
    /// refused there never ran anything and is dropped.
    fn admit(
        inner: &FactoryInner,
        context: &UserExecutionContext,
    ) -> Result<(u64, UserHash, UserExecutionEngine), FactoryError> {
        if inner.shut_down.load(Ordering::Acquire) {
            return Err(FactoryError::ShutDown);
        }
        let user = context.user_id();
        let hash = inner.engines.hash(user);
        let engine = privileged::assemble(
            inner.key,
            context.clone(),
            &inner.kit,
            inner.hub.sink_for(user, hash),
        )?;
        let limit = inner.config.max_engines_per_user();
        let id = inner.next_slot.fetch_add(1, Ordering::Relaxed) + 1;
        let mut shard = inner.engines.lock(hash);
        // Read under the shard lock: `shutdown` sets the flag before it drains the shards, so
        // an engine inserted here is either refused or drained.
        if inner.shut_down.load(Ordering::Acquire) {
            return Err(FactoryError::ShutDown);
        }
        let slots = shard.get_or_insert_with(hash, user, Slots::new);
        // Only the factory stops engines, and it removes their slots first: every slot here is
        // a live engine.
        let refused = if slots
            .iter()
            .any(|s| s.engine.context().run_id() == context.run_id())
        {
            Some(FactoryError::DuplicateRun {
                user: user.clone(),
                run_id: context.run_id().clone(),
            })
        } else if slots.len() >= limit {
            Some(FactoryError::UserLimitReached {
                user: user.clone(),
                limit,
            })
        } else {
            None
        };
        let Some(e) = refused else {
            slots.push(Slot {
                id,
                engine: engine.clone(),
            });
            return Ok((id, hash, engine));
        };
        shard.remove_if(hash, user, |slots| slots.is_empty());
        Err(e)
    }

    /// Runs `f` with a fresh engine for `context` and always closes the engine afterwards —
    /// after success, error or panic (the panic is resumed after cleanup).
    ///
    /// # Errors
    /// The [`create_for_user`](Self::create_for_user) errors; `f`'s own result is returned
    /// inside `Ok`.
    pub async fn scope<F, Fut, T>(
        &self,
        context: &UserExecutionContext,
        f: F,
    ) -> Result<T, FactoryError>
    where
        F: FnOnce(UserExecutionEngine) -> Fut,
        Fut: Future<Output = T>,
    {
        let handle = self.create_for_user(context)?;
        let engine = handle.engine().clone();
        let result = AssertUnwindSafe(async move { f(engine).await })
            .catch_unwind()
            .await;
        handle.close().await;
        match result {
            Ok(value) => Ok(value),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// A stream of `user`'s events, and only theirs. Subscribe before running to see every
    /// event; several subscriptions per user are allowed.
    pub fn subscribe(&self, user: &UserId) -> Subscription {
        self.inner.hub.subscribe(user)
    }

    /// The cluster event bus, if the factory has one (to [`replay`](EventBus::replay) a run on
    /// any node).
    pub fn event_bus(&self) -> Option<&Arc<dyn EventBus>> {
        self.inner.bus.as_ref()
    }

    /// The run store, if the factory has one (to read a user's threads, runs and stored
    /// events).
    pub fn run_store(&self) -> Option<&Arc<dyn RunStore>> {
        self.inner.store.as_ref()
    }

    /// Whether the factory admits or routes through a cluster.
    pub fn is_clustered(&self) -> bool {
        self.inner.admission.is_some() || self.inner.bus.is_some()
    }

    /// Cancels `user`'s run `run` on whichever of `user`'s engines runs it (only `user`'s
    /// engines are searched).
    ///
    /// # Errors
    /// [`EngineError::UnknownRun`] when no engine of `user` on this factory runs `run`.
    pub fn cancel_run(&self, user: &UserId, run: &RunId) -> Result<(), EngineError> {
        self.user_engines(user)
            .iter()
            .find_map(|e| e.cancel(run).ok())
            .ok_or_else(|| EngineError::UnknownRun {
                run_id: run.clone(),
            })
    }

    /// Decides the tool call `call_id` of `user`'s run `run` waiting for approval, on whichever
    /// of `user`'s engines runs it.
    ///
    /// # Errors
    /// [`EngineError::UnknownRun`] when no engine of `user` runs `run`,
    /// [`EngineError::UnknownApproval`] when the run has no such call waiting.
    pub fn approve_run(
        &self,
        user: &UserId,
        run: &RunId,
        call_id: u32,
        decision: ApprovalDecision,
    ) -> Result<(), EngineError> {
        let mut last = EngineError::UnknownRun {
            run_id: run.clone(),
        };
        for e in self.user_engines(user) {
            match e.approve(run, call_id, decision) {
                Ok(()) => return Ok(()),
                Err(EngineError::UnknownRun { .. }) => {}
                Err(other) => last = other,
            }
        }
        Err(last)
    }

    fn user_engines(&self, user: &UserId) -> Vec<UserExecutionEngine> {
        self.inner.user_engines(user)
    }

    /// Live subscriptions of `user`.
    pub fn subscriber_count(&self, user: &UserId) -> usize {
        self.inner.hub.subscriber_count(user)
    }

    /// Live engines of `user`.
    pub fn active_engines(&self, user: &UserId) -> usize {
        let hash = self.inner.engines.hash(user);
        self.inner
            .engines
            .lock(hash)
            .get(hash, user)
            .map_or(0, SmallVec::len)
    }

    /// Shuts down and removes every engine of `user` (and no other). Returns how many.
    pub async fn cleanup_user(&self, user: &UserId) -> usize {
        let hash = self.inner.engines.hash(user);
        let removed: Vec<UserExecutionEngine> = self
            .inner
            .engines
            .lock(hash)
            .remove(hash, user)
            .map(|slots| slots.into_iter().map(|s| s.engine).collect())
            .unwrap_or_default();
        let n = removed.len();
        self.inner.release_leases(&removed);
        self.close_engines(removed).await;
        n
    }

    /// Removes engines older than the TTL that have no run in flight (one with runs in flight
    /// is left until they end). Returns how many were removed. The background
    /// reaper calls this every `reaper_interval`.
    pub fn reap_now(&self) -> usize {
        reap(&self.inner)
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> FactoryMetrics {
        let c = &self.inner.counters;
        let mut per_user: BTreeMap<UserId, usize> = BTreeMap::new();
        for shard in self.inner.engines.shards() {
            let shard = lock(shard);
            per_user.extend(shard.iter().map(|(u, slots)| (u.clone(), slots.len())));
        }
        let hub = self.inner.hub.stats();
        FactoryMetrics {
            engines_created: c.created.load(Ordering::Relaxed),
            active_engines: per_user.values().sum(),
            engines_cleaned: c.cleaned.load(Ordering::Relaxed),
            limit_rejections: c.limit_rejections.load(Ordering::Relaxed),
            creation_errors: c.creation_errors.load(Ordering::Relaxed),
            cleanup_errors: c.cleanup_errors.load(Ordering::Relaxed),
            timeout_cleanups: c.timeout_cleanups.load(Ordering::Relaxed),
            active_engines_per_user: per_user,
            events_delivered: hub.delivered,
            events_dropped: hub.dropped,
            subscribers: hub.subscribers,
            hub_users: hub.users,
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shut_down.load(Ordering::Acquire)
    }

    /// Graceful shutdown: refuses new engines, stops the reaper, cancels every run (each still
    /// emits its terminal event), waits up to `shutdown_deadline` for them, then ends every
    /// subscription. Idempotent.
    pub async fn shutdown(&self) -> ShutdownReport {
        // The flag first, then each shard: an admission either sees the flag under its shard
        // lock or inserted before this drains that shard.
        self.inner.shut_down.store(true, Ordering::Release);
        let mut engines: Vec<UserExecutionEngine> = Vec::new();
        for shard in self.inner.engines.shards() {
            let mut shard = lock(shard);
            engines.extend(
                shard
                    .drain()
                    .flat_map(|slots| slots.into_iter().map(|s| s.engine)),
            );
        }
        self.inner.reaper_stop.cancel();
        self.inner.release_leases(&engines);
        let engines_closed = engines.len();
        let deadline_exceeded = !self.close_engines(engines).await;
        if let Some(bus) = &self.inner.bus {
            let flushed = tokio::time::timeout(self.inner.config.shutdown_deadline(), bus.flush());
            if flushed.await.is_err() {
                tracing::warn!("events still on the bus at the shutdown deadline");
            }
        }
        // Without a runtime there are no timers and no writer to wait for.
        if let (Some(store), Ok(_)) = (&self.inner.store, tokio::runtime::Handle::try_current()) {
            let flushed =
                tokio::time::timeout(self.inner.config.shutdown_deadline(), store.flush());
            if flushed.await.is_err() {
                tracing::warn!("run store writes still buffered at the shutdown deadline");
            }
        }
        self.inner.hub.close();
        tracing::info!(
            engines_closed,
            deadline_exceeded,
            "engine factory shut down"
        );
        ShutdownReport {
            engines_closed,
            deadline_exceeded,
        }
    }

    /// Shuts engines down concurrently within the deadline; `false` if it passed.
    async fn close_engines(&self, engines: Vec<UserExecutionEngine>) -> bool {
        if engines.is_empty() {
            return true;
        }
        let key = self.inner.key;
        for e in &engines {
            privileged::begin_shutdown(key, e);
        }
        let n = engines.len() as u64;
        self.inner.counters.cleaned.fetch_add(n, Ordering::Relaxed);
        let all =
            futures_util::future::join_all(engines.iter().map(|e| privileged::shutdown(key, e)));
        // Without a tokio runtime there are no timers (and no runs to wait for): just await.
        let within_deadline = if tokio::runtime::Handle::try_current().is_ok() {
            tokio::time::timeout(self.inner.config.shutdown_deadline(), all)
                .await
                .is_ok()
        } else {
            all.await;
            true
        };
        if !within_deadline {
            let stuck = engines.iter().filter(|e| e.active_run_count() > 0).count() as u64;
            self.inner
                .counters
                .cleanup_errors
                .fetch_add(stuck, Ordering::Relaxed);
            tracing::warn!(
                stuck,
                "engines still had runs ending at the shutdown deadline"
            );
        }
        within_deadline
    }

    fn start_reaper(&self) {
        // Outside a tokio runtime there is nothing to run the reaper on; `reap_now` still works
        // and the next create inside a runtime starts it.
        if self.inner.reaper_started.load(Ordering::Acquire)
            || tokio::runtime::Handle::try_current().is_err()
            || self.inner.reaper_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak: Weak<FactoryInner> = Arc::downgrade(&self.inner);
        let stop = self.inner.reaper_stop.clone();
        let period = self.inner.config.reaper_interval();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { break };
                let reaped = reap(&inner);
                if reaped > 0 {
                    tracing::debug!(reaped, "reaper removed engines");
                }
            }
        });
    }
}

fn reap(inner: &FactoryInner) -> usize {
    let ttl = inner.config.engine_ttl();
    let mut expired: Vec<UserExecutionEngine> = Vec::new();
    for shard in inner.engines.shards() {
        lock(shard).retain(|slots| {
            slots.retain(|slot| {
                let e = &slot.engine;
                let keep = e.age() <= ttl || e.active_run_count() > 0;
                if !keep {
                    expired.push(e.clone());
                }
                keep
            });
            !slots.is_empty()
        });
    }
    for e in &expired {
        privileged::begin_shutdown(inner.key, e);
    }
    inner.release_leases(&expired);
    let n = expired.len() as u64;
    let c = &inner.counters;
    c.cleaned.fetch_add(n, Ordering::Relaxed);
    c.timeout_cleanups.fetch_add(n, Ordering::Relaxed);
    expired.len()
}

/// An engine on loan from the factory. Dereferences to [`UserExecutionEngine`].
///
/// Dropping it, or calling [`close`](Self::close), shuts the engine down (active runs are
/// cancelled and still emit their terminal events) and frees the user's slot.
#[derive(Debug)]
#[must_use = "dropping the handle closes the engine"]
pub struct EngineHandle {
    engine: UserExecutionEngine,
    factory: Arc<FactoryInner>,
    slot: u64,
    /// The user's hash in the factory's map, for the release.
    hash: UserHash,
    released: bool,
}

impl std::fmt::Debug for FactoryInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FactoryInner")
    }
}

impl EngineHandle {
    /// The engine.
    pub fn engine(&self) -> &UserExecutionEngine {
        &self.engine
    }

    /// Shuts the engine down, gives its slot back (across the cluster too, before this
    /// returns, so a `create` right after is admitted), and waits for its runs to emit their
    /// terminal events.
    pub async fn close(mut self) {
        if self.release_slot() {
            if let Some(admission) = &self.factory.admission {
                let (user, id) = (self.engine.user_id(), self.engine.engine_id());
                if let Err(err) = admission.release(user, id).await {
                    tracing::warn!(user_id = %user, engine_id = %id, error = %err, "engine lease not released; it expires by its TTL");
                }
            }
        }
        privileged::shutdown(self.factory.key, &self.engine).await;
    }

    /// Frees the slot once (counting the cleanup unless the reaper or `cleanup_user` already
    /// removed it) and stops the engine from accepting runs. `true` when this call removed
    /// the slot (its cluster lease is then the caller's to give back).
    fn release_slot(&mut self) -> bool {
        if std::mem::replace(&mut self.released, true) {
            return false;
        }
        let removed = self
            .factory
            .release(self.engine.user_id(), self.hash, self.slot)
            .is_some();
        if removed {
            self.factory
                .counters
                .cleaned
                .fetch_add(1, Ordering::Relaxed);
        }
        privileged::begin_shutdown(self.factory.key, &self.engine);
        removed
    }
}

impl std::ops::Deref for EngineHandle {
    type Target = UserExecutionEngine;
    fn deref(&self) -> &UserExecutionEngine {
        &self.engine
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if self.release_slot() {
            // No await in a drop: the cluster lease goes back in the background.
            self.factory
                .release_leases(std::slice::from_ref(&self.engine));
        }
    }
}
