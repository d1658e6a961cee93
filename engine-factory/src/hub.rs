//! The in-process event hub: routes each user's events to that user's subscribers only.
//!
//! The hub keeps one [`UserChannel`] per user that currently has an engine or a subscriber,
//! keyed by [`UserId`]. Engines get a sink that holds *their* user's channel directly, so an
//! engine has no way to name another user's channel; the channel is dropped (and its map entry
//! removed) as soon as the last engine and subscriber of that user are gone.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use engine_core::{Delivery, DeliveryError, EventEnvelope, EventSink, UserId};
use smallvec::SmallVec;
use tokio::sync::watch;

use crate::cluster::{BusError, EventBus, UserFeed};
use crate::queue::{PushError, Queue, WaitError};
use crate::store::{RunStore, StoreSink};
use crate::sync::{lock, read, write};
use crate::users::{UserHash, UserHasher, UserMap};

/// Counters of the hub, over all users (no per-user data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HubStats {
    /// Users with a live channel (an engine or a subscriber).
    pub users: usize,
    /// Live subscriptions.
    pub subscribers: usize,
    /// Event copies handed to subscribers.
    pub delivered: u64,
    /// Event copies a subscriber missed (buffer full past the deadline, or no subscriber).
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
}

pub(crate) struct HubInner {
    /// Each user's channel, sharded by user; hashed like the factory's engines, so an
    /// admission hashes its user once for both.
    users: UserMap<Weak<UserChannel>>,
    buffer: usize,
    deadline: Duration,
    closed: AtomicBool,
    counters: Counters,
    /// Subscription ids, unique within the hub.
    next_subscription: AtomicU64,
    /// The cluster's event bus, if any: engines publish to it and it feeds subscribers.
    bus: Option<Arc<dyn EventBus>>,
    /// The run store, if any: every engine's sink records its runs and events in it.
    store: Option<Arc<dyn RunStore>>,
}

/// Whether the bus feeds a user's channel yet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attach {
    /// Not asked (no bus, or no subscriber yet).
    Idle,
    /// Asked; the position is not fixed yet.
    Pending,
    /// Every event published from now on reaches the channel.
    Ready,
    /// The bus could not attach.
    Failed(BusError),
}

/// One user's subscription queues by subscription id; usually one (a tab), held inline.
type Subscribers = SmallVec<[(u64, Arc<Queue>); 1]>;

/// One user's subscribers.
pub(crate) struct UserChannel {
    user: UserId,
    /// `user`'s hash in the hub's map, for the removal.
    hash: UserHash,
    /// The hub's settings and counters (the hub holds only a `Weak` back: no cycle).
    hub: Arc<HubInner>,
    /// Usually one (a tab), held inline.
    subscribers: RwLock<Subscribers>,
    /// Whether the bus feeds this channel; only with a bus (a watch channel weighs ~400 bytes,
    /// and a single-node hub holds one channel per user).
    attach: Option<watch::Sender<Attach>>,
}

impl Drop for UserChannel {
    fn drop(&mut self) {
        let hub = &self.hub;
        let attached = self
            .attach
            .as_ref()
            .is_some_and(|a| *a.borrow() != Attach::Idle);
        if let (true, Some(bus)) = (attached, &hub.bus) {
            bus.detach(&self.user);
        }
        // Only remove the entry if it is still this (dead) channel, not a newer one.
        hub.users
            .lock(self.hash)
            .remove_if(self.hash, &self.user, |w| w.strong_count() == 0);
    }
}

impl UserChannel {
    /// Hands `event` to every subscriber of this user; refuses another user's envelope. The
    /// delivery borrows nothing of the channel (a waiting one holds the hub), so a bus can
    /// keep it while the channel goes.
    pub(crate) fn deliver(&self, event: EventEnvelope) -> Delivery<'static> {
        let counters = &self.hub.counters;
        if event.user_id != self.user {
            // Unreachable through the engine (it stamps its own user); refuse rather than route.
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Delivery::ready(Err(DeliveryError::Failed(format!(
                "envelope for user {} refused by the sink of user {}",
                event.user_id, self.user
            ))));
        }
        // Fast path: every subscriber has room; no waiting. Each subscriber but the last gets a
        // copy and the last the envelope itself, so the usual single subscriber (a gateway's
        // pump, a tab) costs no copy and no allocation.
        let mut waiting: Vec<(Arc<Queue>, EventEnvelope)> = Vec::new();
        let mut delivered = 0u64;
        let subscribers = {
            let subs = read(&self.subscribers);
            if let Some(((_, last), others)) = subs.split_last() {
                for (_, queue) in others {
                    offer(queue, event.clone(), &mut delivered, &mut waiting);
                }
                offer(last, event, &mut delivered, &mut waiting);
            }
            subs.len()
        };
        counters.delivered.fetch_add(delivered, Ordering::Relaxed);
        if subscribers == 0 {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Delivery::ready(Err(DeliveryError::NoSubscriber(self.user.clone())));
        }
        if waiting.is_empty() {
            return Delivery::ready(Ok(()));
        }
        // Backpressure: wait on the full subscribers, all at once, up to the deadline.
        let deadline = self.hub.deadline;
        let hub = Arc::clone(&self.hub);
        Delivery::pending(async move {
            let counters = &hub.counters;
            let sends = waiting
                .into_iter()
                .map(|(queue, event)| async move { queue.push_within(event, deadline).await });
            let results = futures_util::future::join_all(sends).await;
            // A subscriber that went away while we waited does not count as a drop.
            let dropped = results
                .iter()
                .filter(|r| matches!(r, Err(WaitError::TimedOut)))
                .count();
            let sent = results.iter().filter(|r| r.is_ok()).count() as u64;
            counters.delivered.fetch_add(sent, Ordering::Relaxed);
            counters
                .dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
            if dropped > 0 {
                Err(DeliveryError::Backpressure {
                    dropped,
                    subscribers,
                })
            } else {
                Ok(())
            }
        })
    }
}

/// The wait before the next attach attempt: 100 ms doubling up to 5 s, with up to half of it
/// random (nodes that lost the store together do not come back in step).
fn attach_backoff(attempt: u32) -> Duration {
    use std::hash::BuildHasher;
    let base = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    let jitter = std::collections::hash_map::RandomState::new().hash_one(attempt) % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// Offers `event` to one subscriber's queue: buffered, or kept for a waiting send when full.
#[inline]
fn offer(
    queue: &Arc<Queue>,
    event: EventEnvelope,
    delivered: &mut u64,
    waiting: &mut Vec<(Arc<Queue>, EventEnvelope)>,
) {
    match queue.try_push(event) {
        Ok(()) => *delivered += 1,
        Err(PushError::Full(event)) => waiting.push((Arc::clone(queue), event)),
        // The subscriber is being dropped; its Drop removes the entry.
        Err(PushError::Closed) => {}
    }
}

/// Routes events to subscribers, per user. Cheap to clone; owned by the factory.
#[derive(Clone)]
pub(crate) struct EventHub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("stats", &self.stats())
            .finish()
    }
}

impl EventHub {
    /// A hub whose subscribers buffer `buffer` events each, waiting up to `deadline` on a
    /// full subscriber before dropping the event for it.
    /// Users are hashed with `hasher` (the factory's, so that one hash serves both maps).
    pub(crate) fn new(
        buffer: usize,
        deadline: Duration,
        bus: Option<Arc<dyn EventBus>>,
        store: Option<Arc<dyn RunStore>>,
        hasher: UserHasher,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                users: UserMap::new(hasher),
                buffer,
                deadline,
                closed: AtomicBool::new(false),
                counters: Counters::default(),
                next_subscription: AtomicU64::new(0),
                bus,
                store,
            }),
        }
    }

    /// `user`'s channel (`hash` is `user`'s), made if there is none.
    fn channel(&self, user: &UserId, hash: UserHash) -> Arc<UserChannel> {
        let mut users = self.inner.users.lock(hash);
        if let Some(existing) = users.get(hash, user).and_then(Weak::upgrade) {
            return existing;
        }
        let channel = Arc::new(UserChannel {
            user: user.clone(),
            hash,
            hub: Arc::clone(&self.inner),
            subscribers: RwLock::new(SmallVec::new()),
            attach: self
                .inner
                .bus
                .as_ref()
                .map(|_| watch::Sender::new(Attach::Idle)),
        });
        users.insert(hash, user, Arc::downgrade(&channel));
        channel
    }

    /// A subscription to `user`'s events: it yields only envelopes whose `user_id` is `user`.
    /// Several subscriptions per user are allowed; each receives every event. After the hub is
    /// closed, a new subscription ends immediately.
    pub(crate) fn subscribe(&self, user: &UserId) -> Subscription {
        let channel = self.channel(user, self.inner.users.hash(user));
        let queue = Arc::new(Queue::new(self.inner.buffer));
        let id = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
        let added = {
            // Checked under the channel's lock, which `close` takes after setting the flag: a
            // subscription is either drained by `close` or sees the flag.
            let mut subscribers = write(&channel.subscribers);
            let open = !self.inner.closed.load(Ordering::Acquire);
            if open {
                subscribers.push((id, Arc::clone(&queue)));
            }
            open
        };
        if !added {
            queue.close();
        } else if let Some(bus) = &self.inner.bus {
            Self::attach(bus, &channel);
        }
        Subscription { queue, id, channel }
    }

    /// Asks the bus, once per channel, to feed this user's events into it; a failed attach
    /// (the cluster's store unreachable) is retried with backoff and jitter for as long as
    /// the channel lives, so a user who first subscribed during an outage gets events once it
    /// is over, without reconnecting.
    fn attach(bus: &Arc<dyn EventBus>, channel: &Arc<UserChannel>) {
        let Some(attach) = &channel.attach else {
            return; // a channel made before the bus: never (the bus is fixed at creation)
        };
        let first = attach.send_if_modified(|a| {
            let idle = *a == Attach::Idle;
            if idle {
                *a = Attach::Pending;
            }
            idle
        });
        if !first {
            return;
        }
        let state = attach.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            state.send_replace(Attach::Failed(BusError::Unavailable(
                "subscribing through the event bus needs a tokio runtime".into(),
            )));
            return;
        };
        let bus = Arc::clone(bus);
        let weak = Arc::downgrade(channel);
        let user = channel.user.clone();
        rt.spawn(async move {
            let mut attempt: u32 = 0;
            loop {
                // Only while the channel lives (a subscriber or an engine of the user).
                if weak.strong_count() == 0 {
                    return;
                }
                let attaching = bus.attach(UserFeed {
                    user: user.clone(),
                    channel: weak.clone(),
                });
                // `send_replace`: `send` would drop the value while nobody waits yet.
                match attaching.await {
                    Ok(()) => {
                        if attempt > 0 {
                            tracing::info!(user_id = %user, attempts = attempt + 1, "event bus feed attached after an outage");
                        }
                        state.send_replace(Attach::Ready);
                        return;
                    }
                    Err(e) => {
                        if attempt == 0 {
                            tracing::warn!(user_id = %user, error = %e, "event bus feed not attached; retrying with backoff");
                        }
                        state.send_replace(Attach::Failed(e));
                    }
                }
                tokio::time::sleep(attach_backoff(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        });
    }

    /// The sink an engine of `user` delivers through. Crate-private: only the factory hands
    /// sinks out, each bound to the engine's own user. `hash` is `user`'s under the hub's
    /// hasher.
    pub(crate) fn sink_for(&self, user: &UserId, hash: UserHash) -> Arc<dyn EventSink> {
        let channel = self.channel(user, hash);
        let sink: Arc<dyn EventSink> = match &self.inner.bus {
            None => channel,
            Some(bus) => Arc::new(BusSink {
                channel,
                bus: Arc::clone(bus),
            }),
        };
        match &self.inner.store {
            None => sink,
            Some(store) => Arc::new(StoreSink {
                inner: sink,
                store: Arc::clone(store),
            }),
        }
    }

    /// Counters over all users.
    pub(crate) fn stats(&self) -> HubStats {
        let live: Vec<Arc<UserChannel>> = self.live_channels();
        HubStats {
            users: live.len(),
            subscribers: live.iter().map(|c| read(&c.subscribers).len()).sum(),
            delivered: self.inner.counters.delivered.load(Ordering::Relaxed),
            dropped: self.inner.counters.dropped.load(Ordering::Relaxed),
        }
    }

    /// Number of live subscriptions of `user`.
    pub(crate) fn subscriber_count(&self, user: &UserId) -> usize {
        let hash = self.inner.users.hash(user);
        let channel = self
            .inner
            .users
            .lock(hash)
            .get(hash, user)
            .and_then(Weak::upgrade);
        channel.map_or(0, |c| read(&c.subscribers).len())
    }

    /// Every live channel (shard by shard, never two locks at once).
    fn live_channels(&self) -> Vec<Arc<UserChannel>> {
        let mut live = Vec::new();
        for shard in self.inner.users.shards() {
            live.extend(lock(shard).values().filter_map(Weak::upgrade));
        }
        live
    }

    /// Ends every subscription (after buffered events are read) and refuses new ones.
    pub(crate) fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for channel in self.live_channels() {
            let subscribers = std::mem::take(&mut *write(&channel.subscribers));
            for (_, queue) in subscribers {
                queue.close();
            }
        }
    }
}

/// On a single node an engine's sink is its user's channel itself: it holds that channel and
/// nothing else.
impl EventSink for UserChannel {
    fn user_id(&self) -> &UserId {
        &self.user
    }

    fn deliver(&self, event: EventEnvelope) -> Delivery<'_> {
        UserChannel::deliver(self, event)
    }
}

/// The sink of one engine in a cluster: hands its user's events to this node's subscribers at
/// once, whatever the shared store does, and publishes them to the bus, which feeds them to
/// the subscribers of every other node (a bus never feeds a node its own events back: each
/// reaches each subscriber once).
struct BusSink {
    /// Keeps the user's channel (and so the bus feed) alive while the engine lives.
    channel: Arc<UserChannel>,
    bus: Arc<dyn EventBus>,
}

impl EventSink for BusSink {
    fn user_id(&self) -> &UserId {
        &self.channel.user
    }

    fn deliver(&self, event: EventEnvelope) -> Delivery<'_> {
        if event.user_id != self.channel.user {
            self.channel
                .hub
                .counters
                .dropped
                .fetch_add(1, Ordering::Relaxed);
            return Delivery::ready(Err(DeliveryError::Failed(format!(
                "envelope for user {} refused by the sink of user {}",
                event.user_id, self.channel.user
            ))));
        }
        // No subscriber of the user on this node (they are on others): nothing to hand over
        // here, and nothing missed.
        if read(&self.channel.subscribers).is_empty() {
            return self.bus.publish(event);
        }
        let published = self.bus.publish(event.clone());
        let local = self.channel.deliver(event);
        // What this node's subscribers got decides, unless there are none here: then whether
        // the bus took the event for the other nodes.
        match (local, published) {
            (Delivery::Ready(Some(Err(DeliveryError::NoSubscriber(_)))), published) => published,
            (Delivery::Ready(local), Delivery::Ready(_)) => Delivery::Ready(local),
            (local, published) => Delivery::pending(async move {
                let (local, published) = futures_util::join!(local, published);
                match local {
                    Err(DeliveryError::NoSubscriber(_)) => published,
                    local => local,
                }
            }),
        }
    }
}

/// A stream of one user's events, from [`ExecutionEngineFactory::subscribe`](crate::ExecutionEngineFactory::subscribe).
///
/// Read it with [`recv`](Self::recv) or as a [`futures_core::Stream`](https://docs.rs/futures-core/0.3/futures_core/stream/trait.Stream.html). It ends (`None`) when
/// the factory shuts down. Dropping it unsubscribes.
///
/// Envelopes arrive owned: a user's only subscription receives each envelope the engine built
/// (no copy, no allocation); when a user has several (two tabs), each further one receives a
/// copy. Wrap an envelope in an `Arc` yourself to share it further (the gateway does, between
/// its replay buffer and the frame it sends). The buffer holds up to
/// [`FactoryConfig::subscriber_buffer`](crate::FactoryConfig::subscriber_buffer) envelopes and
/// takes memory only while it holds some.
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<Queue>,
    id: u64,
    /// The user's channel (its `user` is the subscription's).
    channel: Arc<UserChannel>,
}

impl std::fmt::Debug for UserChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserChannel")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The user whose events this yields.
    pub fn user_id(&self) -> &UserId {
        &self.channel.user
    }
    /// The next event, or `None` once the factory has shut down and the buffer is drained.
    #[inline]
    pub async fn recv(&mut self) -> Option<EventEnvelope> {
        std::future::poll_fn(|cx| self.queue.poll_pop(cx)).await
    }
    /// The next buffered event without waiting, if any.
    pub fn try_recv(&mut self) -> Option<EventEnvelope> {
        self.queue.pop()
    }
    /// Events buffered and not yet read.
    pub fn buffered(&self) -> usize {
        self.queue.len()
    }
    /// Waits until the subscription receives every event published from now on. Immediate on
    /// a single node; with a cluster event bus, until the bus has fixed this user's position.
    ///
    /// # Errors
    /// [`BusError`] when the bus could not start feeding this user (the subscription then only
    /// ends at shutdown).
    pub async fn ready(&self) -> Result<(), BusError> {
        let Some(attach) = &self.channel.attach else {
            return Ok(()); // no bus: every event reaches the channel directly
        };
        let mut state = attach.subscribe();
        let seen = state
            .wait_for(|a| !matches!(a, Attach::Pending))
            .await
            .map(|a| a.clone());
        match seen {
            Ok(Attach::Failed(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = EventEnvelope;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.queue.poll_pop(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        write(&self.channel.subscribers).retain(|(id, _)| *id != self.id);
        self.queue.receiver_dropped();
    }
}
