//! The two seams that let several factories (several gateway nodes) share state: per-user
//! [`Admission`] and the per-user [`EventBus`]. Each defaults to the factory's in-memory
//! behaviour; `engine-redis` implements both on Redis. [`Seams`] also carries the third seam,
//! the [`RunStore`](crate::RunStore) (`engine-store`).
//!
//! The hub stays the one path events take on a node: with a bus, an engine's sink hands each
//! event to its user's subscribers on this node and publishes it to the bus, and the bus feeds
//! what other nodes published into the hub through a [`UserFeed`], which delivers to one
//! user's subscribers only. So a node's own runs reach its own subscribers whatever the
//! shared store does.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use engine_core::{Delivery, DeliveryError, EventEnvelope, RunId, UserId};

use crate::hub::UserChannel;
use crate::store::RunStore;

/// A boxed future, as the seams return them (object-safe traits without `async_trait`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a cluster-wide admission failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The user already holds `held` engines across the cluster.
    #[error("the user holds {held} engines across the cluster")]
    LimitReached {
        /// Engines (leases) the user holds on all nodes.
        held: usize,
    },
    /// The shared store could not be reached or answered with an error.
    #[error("cluster admission unavailable: {0}")]
    Unavailable(String),
}

/// Reserves and releases a user's engine slots across every node that shares the store.
///
/// `reserve` must be atomic across nodes: however many nodes race, a user never holds more
/// than `limit` reservations. A node that dies keeps its reservations only until they expire
/// (the implementation's lease TTL). The factory calls `reserve` after its own (per-node)
/// checks and `release` whenever an engine leaves it (closed, dropped, cleaned up, reaped or
/// shut down); `release` must be idempotent.
pub trait Admission: Send + Sync + std::fmt::Debug + 'static {
    /// Reserves one of `user`'s slots for the engine `engine_id` of this node.
    ///
    /// # Errors
    /// [`AdmissionError::LimitReached`] when `user` already holds `limit` slots,
    /// [`AdmissionError::Unavailable`] when the store fails.
    fn reserve<'a>(
        &'a self,
        user: &'a UserId,
        engine_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<(), AdmissionError>>;

    /// Releases the slot of `engine_id`. Releasing an unknown or expired slot is not an error.
    fn release<'a>(
        &'a self,
        user: &'a UserId,
        engine_id: &'a str,
    ) -> BoxFuture<'a, Result<(), AdmissionError>>;
}

/// Why the event bus failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The shared store could not be reached or answered with an error.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

/// What [`EventBus::replay`] found of one run.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Replayed {
    /// Events of the run after the requested position that are no longer retained
    /// (`from_seq..=to_seq`), if any.
    pub gap: Option<(u64, u64)>,
    /// The retained events of the run after the requested position, in order.
    pub events: Vec<EventEnvelope>,
}

impl Replayed {
    /// What a bus found: the missing range, if any, and the retained events after it.
    pub fn new(gap: Option<(u64, u64)>, events: Vec<EventEnvelope>) -> Self {
        Self { gap, events }
    }
}

/// Carries every user's events between the nodes of a cluster.
///
/// * [`publish`](Self::publish) stores one envelope in its user's log (the engine's sink calls
///   it for every event of a run on this node);
/// * [`attach`](Self::attach) starts feeding a user's events, from now on, into that user's hub
///   channel on this node (the factory calls it when the user's first subscriber appears) and
///   [`detach`](Self::detach) stops it;
/// * [`replay`](Self::replay) reads a run's retained events after a sequence number (resume on
///   any node).
///
/// A bus must keep the order of each run's events, and must only ever hand a feed the events of
/// that feed's user ([`UserFeed::deliver`] refuses others).
pub trait EventBus: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes one envelope of a run on this node to its user's log, for the other nodes.
    /// The hub hands the same envelope to this node's subscribers itself, so a bus must never
    /// feed this node's own envelopes back into its feeds (they would arrive twice), and should
    /// not make the run wait on the shared store: a store that is slow or down must cost the
    /// other nodes' copies (a gap they can see in the sequence), never this node's.
    fn publish(&self, event: EventEnvelope) -> Delivery<'_>;

    /// Starts feeding `feed`'s user's events, published from now on, into `feed`. The returned
    /// future completes once the position is fixed: every event published afterwards is fed.
    fn attach(&self, feed: UserFeed) -> BoxFuture<'static, Result<(), BusError>>;

    /// Stops feeding `user`'s events (the user's last subscriber on this node is gone).
    fn detach(&self, user: &UserId);

    /// The retained events of `user`'s run `run` after `after_seq`; `None` when the run is not
    /// one of `user`'s runs in the retained log.
    fn replay<'a>(
        &'a self,
        user: &'a UserId,
        run: &'a RunId,
        after_seq: u64,
    ) -> BoxFuture<'a, Result<Option<Replayed>, BusError>>;

    /// Waits until every event published so far has reached this node's feeds (or could not
    /// be stored). The factory's shutdown calls it, within its deadline, before it ends the
    /// subscriptions, so that terminal events are not cut off. Default: nothing to wait for.
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Where a bus hands one user's events on this node: that user's hub channel, and nothing else.
#[derive(Clone)]
pub struct UserFeed {
    pub(crate) user: UserId,
    /// Weak: a feed never keeps a channel alive, so the channel's end detaches the bus.
    pub(crate) channel: Weak<UserChannel>,
}

impl std::fmt::Debug for UserFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserFeed")
            .field("user", self.user_id())
            .finish()
    }
}

impl UserFeed {
    /// The user whose events this feed accepts.
    pub fn user_id(&self) -> &UserId {
        &self.user
    }

    /// Whether the user still has a channel on this node (a subscriber or an engine).
    pub fn is_open(&self) -> bool {
        self.channel.strong_count() > 0
    }

    /// Whether both feeds lead to the same channel (a user whose channel ended and was made
    /// again has a new feed, attached at its own position).
    pub fn same_channel(&self, other: &UserFeed) -> bool {
        Weak::ptr_eq(&self.channel, &other.channel)
    }

    /// Hands one envelope to this user's subscribers on this node. An envelope of another
    /// user is refused (counted as dropped), never routed.
    pub async fn deliver(&self, event: EventEnvelope) -> Result<(), DeliveryError> {
        self.offer(event).await
    }

    /// As [`deliver`](Self::deliver), but decided at once when every subscriber has room
    /// (`Delivery::Ready`); otherwise the returned delivery waits on the full ones (up to the
    /// backpressure deadline) without borrowing the feed, so a bus can hand it to a task of
    /// its own and go on with other users.
    pub fn offer(&self, event: EventEnvelope) -> Delivery<'static> {
        match self.channel.upgrade() {
            Some(channel) => channel.deliver(event),
            None => Delivery::ready(Err(DeliveryError::Closed)),
        }
    }
}

/// The cluster seams a factory uses; both default to in-memory (one node).
///
/// ```
/// use engine_factory::Seams;
/// let seams = Seams::default();
/// assert!(!seams.is_clustered());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Seams {
    pub(crate) admission: Option<Arc<dyn Admission>>,
    pub(crate) bus: Option<Arc<dyn EventBus>>,
    pub(crate) store: Option<Arc<dyn RunStore>>,
}

impl Seams {
    /// Admission across nodes (default: the factory's own per-node count).
    #[must_use]
    pub fn admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }
    /// An event bus across nodes (default: the in-process hub alone).
    #[must_use]
    pub fn event_bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.bus = Some(bus);
        self
    }
    /// A store that keeps runs, events and threads beyond the process (default: none, as
    /// before: a run's record lives in its engine's history only).
    #[must_use]
    pub fn run_store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// Whether admission or events go beyond this process (a store alone does not make a
    /// cluster).
    pub fn is_clustered(&self) -> bool {
        self.admission.is_some() || self.bus.is_some()
    }
}
