//! [`RedisBus`]: one Redis Stream per user. A publisher task batches this node's events into
//! pipelines (`XADD ... MAXLEN ~`), one reader task follows every attached user's stream with a
//! blocking `XREAD` and feeds what it reads into that user's hub channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use engine_core::{Delivery, DeliveryError, EventEnvelope, RunId, UserId};
use engine_factory::{BoxFuture, BusError, EventBus, Replayed, UserFeed};
use redis::aio::ConnectionManager;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::keys::Keys;

/// Events taken into one pipeline at most.
const BATCH: usize = 256;
/// Events queued for publishing before `publish` waits.
const QUEUE: usize = 16_384;
/// How long one `XREAD` blocks; a newly attached user is picked up within it at worst.
const BLOCK: Duration = Duration::from_millis(1000);

/// A stream entry id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamPos(u64, u64);

impl StreamPos {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
    fn id(self) -> String {
        format!("{}-{}", self.0, self.1)
    }
}

struct Feed {
    feed: UserFeed,
    key: String,
    pos: StreamPos,
}

#[derive(Default)]
struct Feeds {
    by_user: HashMap<UserId, Feed>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct BusInner {
    conn: ConnectionManager,
    client: Client,
    keys: Keys,
    node: String,
    maxlen: u64,
    retention_ms: u64,
    health: Arc<Health>,
    feeds: Mutex<Feeds>,
    /// Last id this node published per user, for `flush`.
    published: Mutex<HashMap<UserId, StreamPos>>,
    /// Events handed to `publish` and not yet through a pipeline.
    in_flight: AtomicU64,
    /// Woken when the reader advances or the publisher finishes a batch.
    progress: Notify,
    /// Woken when a user is attached while nobody was.
    wake_reader: Notify,
    /// The reader connection's `CLIENT ID` (-1: none), to interrupt its `XREAD`.
    reader_client: AtomicI64,
}

/// The Redis event bus of one node.
pub(crate) struct RedisBus {
    inner: Arc<BusInner>,
    tx: mpsc::Sender<EventEnvelope>,
}

impl RedisBus {
    /// See [`BusInner::tracked`].
    pub(crate) fn tracked(&self) -> (usize, usize) {
        self.inner.tracked()
    }
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// The settings a bus needs.
pub(crate) struct BusSettings {
    pub(crate) keys: Keys,
    pub(crate) node: String,
    pub(crate) maxlen: u64,
    pub(crate) retention: Duration,
}

impl RedisBus {
    /// Starts the publisher and the reader; both stop with `stop`.
    pub(crate) fn start(
        conn: ConnectionManager,
        client: Client,
        settings: BusSettings,
        health: Arc<Health>,
        stop: &CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(BusInner {
            conn,
            client,
            keys: settings.keys,
            node: settings.node,
            maxlen: settings.maxlen,
            retention_ms: u64::try_from(settings.retention.as_millis()).unwrap_or(u64::MAX),
            health,
            feeds: Mutex::new(Feeds::default()),
            published: Mutex::new(HashMap::new()),
            in_flight: AtomicU64::new(0),
            progress: Notify::new(),
            wake_reader: Notify::new(),
            reader_client: AtomicI64::new(-1),
        });
        tokio::spawn(publisher(Arc::clone(&inner), rx));
        tokio::spawn(reader(Arc::clone(&inner), stop.clone()));
        Self { inner, tx }
    }
}

/// Takes queued events in batches and stores each batch with one pipeline.
async fn publisher(inner: Arc<BusInner>, mut rx: mpsc::Receiver<EventEnvelope>) {
    let mut batch: Vec<EventEnvelope> = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        publish_batch(&inner, &batch).await;
        inner
            .in_flight
            .fetch_sub(batch.len() as u64, Ordering::AcqRel);
        inner.progress.notify_waiters();
        batch.clear();
    }
}

async fn publish_batch(inner: &BusInner, batch: &[EventEnvelope]) {
    let mut pipe = redis::pipe();
    let mut users: Vec<&UserId> = Vec::new();
    let mut last_of_run: HashMap<(&UserId, &RunId), u64> = HashMap::new();
    for e in batch {
        let json = match serde_json::to_string(e) {
            Ok(j) => j,
            Err(err) => {
                tracing::error!(user_id = %e.user_id, run_id = %e.run_id, error = %err, "event not serializable; not published");
                continue;
            }
        };
        pipe.cmd("XADD")
            .arg(inner.keys.events(&e.user_id))
            .arg("MAXLEN")
            .arg("~")
            .arg(inner.maxlen)
            .arg("*")
            .arg("r")
            .arg(e.run_id.as_str())
            .arg("s")
            .arg(e.seq)
            .arg("e")
            .arg(json);
        if !users.contains(&&e.user_id) {
            users.push(&e.user_id);
        }
        last_of_run.insert((&e.user_id, &e.run_id), e.seq);
    }
    for u in &users {
        pipe.cmd("PEXPIRE")
            .arg(inner.keys.events(u))
            .arg(inner.retention_ms)
            .ignore();
    }
    for ((u, r), seq) in &last_of_run {
        pipe.cmd("SET")
            .arg(inner.keys.run(u, r))
            .arg(format!("{} {seq}", inner.node))
            .arg("PX")
            .arg(inner.retention_ms)
            .ignore();
    }
    let mut conn = inner.conn.clone();
    match pipe.query_async::<Vec<String>>(&mut conn).await {
        Ok(ids) => {
            inner.health.ok();
            inner
                .health
                .published
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            // Only attached users are waited for by `flush`: track no one else, so the map
            // stays as small as the node's subscribed users (lock order: published, feeds).
            let mut published = lock(&inner.published);
            let feeds = lock(&inner.feeds);
            for (e, id) in batch.iter().zip(&ids) {
                if !feeds.by_user.contains_key(&e.user_id) {
                    continue;
                }
                if let Some(pos) = StreamPos::parse(id) {
                    published.insert(e.user_id.clone(), pos);
                }
            }
        }
        Err(err) => {
            inner.health.failed("publish events", &err);
            inner
                .health
                .publish_errors
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // Not stored: this node's own subscribers still get them, directly.
            let feeds: Vec<(UserFeed, EventEnvelope)> = {
                let feeds = lock(&inner.feeds);
                batch
                    .iter()
                    .filter_map(|e| {
                        feeds
                            .by_user
                            .get(&e.user_id)
                            .map(|f| (f.feed.clone(), e.clone()))
                    })
                    .collect()
            };
            for (feed, e) in feeds {
                let _ = feed.deliver(e).await;
            }
        }
    }
}

/// Follows the streams of every attached user and feeds their events to the hub.
async fn reader(inner: Arc<BusInner>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    while !stop.is_cancelled() {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
        let conn = inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                inner.health.failed("connect stream reader", &e);
                inner.health.read_errors.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        match redis::cmd("CLIENT")
            .arg("ID")
            .query_async::<i64>(&mut conn)
            .await
        {
            Ok(id) => inner.reader_client.store(id, Ordering::Release),
            Err(e) => {
                inner.health.failed("stream reader id", &e);
                continue;
            }
        }
        backoff = Duration::from_millis(50);
        tokio::select! {
            () = stop.cancelled() => break,
            result = read_loop(&inner, &mut conn) => {
                inner.reader_client.store(-1, Ordering::Release);
                if let Err(e) = result {
                    inner.health.failed("read events", &e);
                    inner.health.read_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }
}

async fn read_loop(
    inner: &BusInner,
    conn: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<()> {
    loop {
        let (keys, ids, users): (Vec<String>, Vec<String>, HashMap<String, UserFeed>) = {
            let mut feeds = lock(&inner.feeds);
            feeds.by_user.retain(|_, f| f.feed.is_open());
            let mut keys = Vec::new();
            let mut ids = Vec::new();
            let mut users = HashMap::new();
            for f in feeds.by_user.values() {
                keys.push(f.key.clone());
                ids.push(f.pos.id());
                users.insert(f.key.clone(), f.feed.clone());
            }
            (keys, ids, users)
        };
        if keys.is_empty() {
            let _ = tokio::time::timeout(BLOCK, inner.wake_reader.notified()).await;
            continue;
        }
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(1000))
            .arg("STREAMS")
            .arg(&keys)
            .arg(&ids)
            .query_async(conn)
            .await?;
        inner.health.ok();
        let Some(reply) = reply else { continue };
        feed_reply(inner, &users, reply).await;
        inner.progress.notify_waiters();
    }
}

/// Hands what one `XREAD` returned to the feeds it was read for (`users`: each stream key's
/// feed when the read was issued) and moves their positions on.
async fn feed_reply(inner: &BusInner, users: &HashMap<String, UserFeed>, reply: StreamReadReply) {
    for stream in reply.keys {
        let Some(feed) = users.get(&stream.key) else {
            continue;
        };
        // The user's channel may have ended and a new one attached while this read waited
        // (the new feed starts at the stream's end as it was then, which may be before
        // these entries): they are the new feed's to read from its own position, not the
        // old feed's to drop.
        if !lock(&inner.feeds)
            .by_user
            .get(feed.user_id())
            .is_some_and(|f| f.feed.same_channel(feed))
        {
            continue;
        }
        let mut last = None;
        for entry in stream.ids {
            last = StreamPos::parse(&entry.id).or(last);
            let Some(event) = decode(&entry.map) else {
                tracing::warn!(user_id = %feed.user_id(), id = %entry.id, "unreadable stream entry skipped");
                continue;
            };
            if !inner.keys.is_events_key_of(&stream.key, &event.user_id) {
                // Never route an envelope by its label when the stream says otherwise.
                tracing::error!(user_id = %feed.user_id(), "stream entry of another user refused");
                continue;
            }
            inner.health.read.fetch_add(1, Ordering::Relaxed);
            let _ = feed.deliver(event).await;
        }
        if let Some(last) = last {
            let mut feeds = lock(&inner.feeds);
            // Only the feed these entries went to moves on; a feed attached meanwhile
            // reads them from its own position.
            if let Some(f) = feeds
                .by_user
                .get_mut(feed.user_id())
                .filter(|f| f.feed.same_channel(feed))
            {
                f.pos = f.pos.max(last);
            }
        }
    }
}

fn decode(map: &HashMap<String, Value>) -> Option<EventEnvelope> {
    match map.get("e")? {
        Value::BulkString(bytes) => serde_json::from_slice(bytes).ok(),
        Value::SimpleString(s) => serde_json::from_str(s).ok(),
        _ => None,
    }
}

fn field_str(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl BusInner {
    /// Users this node follows (attached feeds) and users it tracks publish positions of.
    pub(crate) fn tracked(&self) -> (usize, usize) {
        let published = lock(&self.published).len();
        let feeds = lock(&self.feeds).by_user.len();
        (feeds, published)
    }

    /// Interrupts the reader's blocking read so it picks up a new user now.
    async fn interrupt_reader(&self) {
        self.wake_reader.notify_one();
        let id = self.reader_client.load(Ordering::Acquire);
        if id >= 0 {
            let mut conn = self.conn.clone();
            let _ = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async::<i64>(&mut conn)
                .await;
        }
    }

    /// Whether every event this node published has been read back for attached users.
    fn caught_up(&self) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let published = lock(&self.published);
        let feeds = lock(&self.feeds);
        feeds
            .by_user
            .iter()
            .all(|(user, f)| !f.feed.is_open() || published.get(user).is_none_or(|p| f.pos >= *p))
    }
}

impl EventBus for RedisBus {
    fn publish(&self, event: EventEnvelope) -> Delivery<'_> {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(event) {
            Ok(()) => Delivery::ready(Ok(())),
            Err(mpsc::error::TrySendError::Full(event)) => Delivery::pending(async move {
                self.tx.send(event).await.map_err(|_| {
                    self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
                    DeliveryError::Closed
                })
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
                Delivery::ready(Err(DeliveryError::Closed))
            }
        }
    }

    fn attach(&self, feed: UserFeed) -> BoxFuture<'static, Result<(), BusError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let key = inner.keys.events(feed.user_id());
            let mut conn = inner.conn.clone();
            // The position is the stream's last entry now: everything after it is fed.
            let last: StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(|e| {
                    inner.health.failed("attach user", &e);
                    BusError::Unavailable(e.to_string())
                })?;
            inner.health.ok();
            let pos = last
                .ids
                .first()
                .and_then(|e| StreamPos::parse(&e.id))
                .unwrap_or_default();
            lock(&inner.feeds)
                .by_user
                .insert(feed.user_id().clone(), Feed { feed, key, pos });
            inner.interrupt_reader().await;
            Ok(())
        })
    }

    fn detach(&self, user: &UserId) {
        let removed = {
            let mut feeds = lock(&self.inner.feeds);
            // A newer channel of the same user may already have attached: keep an open feed.
            let gone = feeds.by_user.get(user).is_some_and(|f| !f.feed.is_open());
            if gone {
                feeds.by_user.remove(user);
            }
            gone
        };
        if removed {
            lock(&self.inner.published).remove(user);
        }
    }

    fn replay<'a>(
        &'a self,
        user: &'a UserId,
        run: &'a RunId,
        after_seq: u64,
    ) -> BoxFuture<'a, Result<Option<Replayed>, BusError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut conn = inner.conn.clone();
            let failed = |e: redis::RedisError| {
                inner.health.failed("replay", &e);
                BusError::Unavailable(e.to_string())
            };
            let record: Option<String> = redis::cmd("GET")
                .arg(inner.keys.run(user, run))
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            let Some(record) = record else {
                return Ok(None);
            };
            let last_seq: u64 = record
                .rsplit(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let range: StreamRangeReply = redis::cmd("XRANGE")
                .arg(inner.keys.events(user))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(inner.maxlen.saturating_mul(2))
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            inner.health.ok();
            let wanted = run.as_str();
            let mut events = Vec::new();
            for entry in &range.ids {
                if field_str(&entry.map, "r").as_deref() != Some(wanted) {
                    continue;
                }
                let seq: u64 = field_str(&entry.map, "s")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if seq <= after_seq {
                    continue;
                }
                match decode(&entry.map) {
                    Some(e) if &e.user_id == user && &e.run_id == run => events.push(e),
                    _ => {}
                }
            }
            let first = events.first().map_or(last_seq + 1, |e| e.seq);
            let gap = (first > after_seq + 1).then(|| (after_seq + 1, first - 1));
            Ok(Some(Replayed::new(gap, events)))
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let progressed = self.inner.progress.notified();
                if self.inner.caught_up() {
                    return;
                }
                // Bounded by the caller's deadline; the timer only re-checks.
                let _ = tokio::time::timeout(Duration::from_millis(50), progressed).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use engine_core::{AgentEvent, AgentRegistry, RequestId, RunId, ThreadId};
    use engine_factory::{ExecutionEngineFactory, FactoryConfig};
    use redis::streams::{StreamId, StreamKey};

    use super::*;
    use crate::testing::RedisServer;
    use crate::{ClusterConfig, RedisCluster};

    /// The race the node's reader must survive: it issued its `XREAD` with a user's feed, the
    /// user's channel ended and a new one attached (at the stream's end as it was then), and
    /// the read returns entries written after that. They are the new feed's to read from its
    /// own position: handed to the old feed they would be dropped, and moving the new feed
    /// past them would lose them for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_read_for_an_ended_channel_stay_for_the_feed_attached_since() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let cluster = RedisCluster::connect(
            ClusterConfig::new(redis.url())
                .with_prefix("t")
                .with_node_id("n"),
        )
        .await
        .unwrap();
        let factory = ExecutionEngineFactory::with_seams(
            FactoryConfig::default(),
            AgentRegistry::builder().build().unwrap(),
            cluster.seams(),
        )
        .unwrap();
        let inner = &cluster.bus.inner;
        let user = UserId::new("reloader").unwrap();

        let old = factory.subscribe(&user);
        old.ready().await.unwrap();
        let (old_feed, key) = {
            let feeds = lock(&inner.feeds);
            let f = &feeds.by_user[&user];
            (f.feed.clone(), f.key.clone())
        };
        drop(old);
        assert!(!old_feed.is_open(), "the user's first channel ended");
        let mut new = factory.subscribe(&user);
        new.ready().await.unwrap();
        let attached_at = lock(&inner.feeds).by_user[&user].pos;

        let envelope = EventEnvelope {
            user_id: user.clone(),
            thread_id: ThreadId::new("t").unwrap(),
            run_id: RunId::new("r").unwrap(),
            request_id: RequestId::new("q").unwrap(),
            seq: 1,
            timestamp_us: 1,
            event: AgentEvent::AgentThinking {
                reasoning: "hi".into(),
            },
        };
        let entry = StreamId {
            id: "99999999999999-0".into(),
            map: HashMap::from([(
                "e".to_owned(),
                Value::BulkString(serde_json::to_vec(&envelope).unwrap()),
            )]),
            ..StreamId::default()
        };
        let reply = StreamReadReply {
            keys: vec![StreamKey {
                key: key.clone(),
                ids: vec![entry],
            }],
        };
        // What the reader read with the feeds as they were when it issued the read.
        let users = HashMap::from([(key, old_feed)]);
        feed_reply(inner, &users, reply).await;

        assert_eq!(
            lock(&inner.feeds).by_user[&user].pos,
            attached_at,
            "the new feed still reads from where it attached"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            new.try_recv().is_none(),
            "nothing went to the new feed twice"
        );
    }
}
