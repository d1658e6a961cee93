//! [`RedisBus`]: one Redis Stream per user. A publisher task batches this node's events into
//! pipelines (`XADD ... MAXLEN ~`, each entry tagged with this process's origin), one reader
//! task follows every attached user's stream with a blocking `XREAD` and hands what other
//! nodes published to that user's [`FeedPipe`] on this node.
//!
//! The hub delivers this node's own events to its subscribers itself, at once: the reader
//! skips entries of its own origin, so a slow, paused or dead Redis never delays, repeats or
//! loses them locally. A batch Redis did not confirm is retried (a paused server may store it
//! twice: every feed passes a run's seq once), and given up only after several attempts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use engine_core::{Delivery, DeliveryError, EventEnvelope, RunId, UserId};
use engine_factory::{BoxFuture, BusError, EventBus, Replayed, UserFeed};
use redis::aio::ConnectionManager;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::feed::FeedPipe;
use crate::health::Health;
use crate::keys::Keys;

/// Events taken into one pipeline at most.
const BATCH: usize = 256;
/// Events accepted for publishing and not yet stored (or given up); past it an event is not
/// queued for the stream (this node's subscribers have it; the other nodes see a gap).
const QUEUE: u64 = 65_536;
/// How long one `XREAD` blocks; a newly attached user is picked up within it at worst.
const BLOCK: Duration = Duration::from_millis(1000);
/// Attempts to store one batch before giving it up.
const PUBLISH_ATTEMPTS: u32 = 8;
/// Stream entries one `XRANGE` of a replay reads.
const REPLAY_PAGE: usize = 512;

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
    pipe: Arc<FeedPipe>,
    key: String,
    pos: StreamPos,
}

#[derive(Default)]
struct Feeds {
    by_user: HashMap<UserId, Feed>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct BusInner {
    conn: ConnectionManager,
    client: Client,
    keys: Keys,
    node: String,
    /// Tags every entry this process stores (the node id and a random part, so a restarted
    /// node or a misconfigured twin never mistakes another's entries for its own).
    origin: String,
    maxlen: u64,
    retention_ms: u64,
    health: Arc<Health>,
    feeds: Mutex<Feeds>,
    /// Events handed to `publish` and not yet stored or given up (released by a guard).
    in_flight: AtomicU64,
    /// The last attempt to store a batch failed (cleared by the next that succeeds): `flush`
    /// does not wait for a store that does not answer.
    failing: AtomicBool,
    /// Woken when the publisher finishes or fails a batch.
    progress: Notify,
    /// Woken when a user is attached while nobody was.
    wake_reader: Notify,
    /// The reader connection's `CLIENT ID` (-1: none), to interrupt its `XREAD`.
    reader_client: AtomicI64,
}

/// The Redis event bus of one node.
pub(crate) struct RedisBus {
    inner: Arc<BusInner>,
    tx: mpsc::UnboundedSender<EventEnvelope>,
}

impl RedisBus {
    /// Users this node follows (attached feeds).
    pub(crate) fn tracked(&self) -> usize {
        lock(&self.inner.feeds).by_user.len()
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
        let (tx, rx) = mpsc::unbounded_channel();
        let short = uuid::Uuid::new_v4().simple().to_string();
        let inner = Arc::new(BusInner {
            conn,
            client,
            keys: settings.keys,
            origin: format!("{}/{}", settings.node, &short[..12]),
            node: settings.node,
            maxlen: settings.maxlen,
            retention_ms: u64::try_from(settings.retention.as_millis()).unwrap_or(u64::MAX),
            health,
            feeds: Mutex::new(Feeds::default()),
            in_flight: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            progress: Notify::new(),
            wake_reader: Notify::new(),
            reader_client: AtomicI64::new(-1),
        });
        tokio::spawn(publisher(Arc::clone(&inner), rx, stop.clone()));
        tokio::spawn(reader(Arc::clone(&inner), stop.clone()));
        Self { inner, tx }
    }
}

/// Releases a batch's share of `in_flight` however the batch ends, also when the publisher
/// is dropped mid-batch (its runtime shutting down), so `flush` never waits for events no
/// task will store.
struct InFlight<'a> {
    inner: &'a BusInner,
    events: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.inner
            .in_flight
            .fetch_sub(self.events, Ordering::AcqRel);
        self.inner.progress.notify_waiters();
    }
}

/// The wait before attempt `attempt + 1` of a batch: 100 ms doubling up to 2 s.
fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(5)).min(2_000))
}

/// Takes queued events in batches and stores each batch with one pipeline, retrying a batch
/// Redis did not confirm (in order: later batches wait behind it).
async fn publisher(
    inner: Arc<BusInner>,
    mut rx: mpsc::UnboundedReceiver<EventEnvelope>,
    stop: CancellationToken,
) {
    let mut batch: Vec<EventEnvelope> = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let _in_flight = InFlight {
            inner: &inner,
            events: batch.len() as u64,
        };
        let mut attempt = 0;
        loop {
            let Err(err) = publish_batch(&inner, &batch).await else {
                inner.failing.store(false, Ordering::Release);
                break;
            };
            attempt += 1;
            inner.failing.store(true, Ordering::Release);
            inner.progress.notify_waiters();
            inner
                .health
                .publish_errors
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            if attempt >= PUBLISH_ATTEMPTS || stop.is_cancelled() {
                inner
                    .health
                    .unstored
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::error!(
                    events = batch.len(),
                    attempts = attempt,
                    error = %err,
                    "events not stored in the cluster's streams; other nodes see a gap in their runs"
                );
                break;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(retry_backoff(attempt)) => {}
            }
        }
        batch.clear();
    }
}

async fn publish_batch(inner: &BusInner, batch: &[EventEnvelope]) -> redis::RedisResult<()> {
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
            .arg("o")
            .arg(&inner.origin)
            .arg("e")
            .arg(json)
            .ignore();
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
    match pipe.query_async::<()>(&mut conn).await {
        Ok(()) => {
            inner.health.ok();
            inner
                .health
                .published
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(())
        }
        Err(err) => {
            inner.health.failed("publish events", &err);
            Err(err)
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
        let (keys, ids, users): (Vec<String>, Vec<String>, HashMap<String, Arc<FeedPipe>>) = {
            let mut feeds = lock(&inner.feeds);
            feeds.by_user.retain(|_, f| f.pipe.feed.is_open());
            let mut keys = Vec::new();
            let mut ids = Vec::new();
            let mut users = HashMap::new();
            for f in feeds.by_user.values() {
                keys.push(f.key.clone());
                ids.push(f.pos.id());
                users.insert(f.key.clone(), Arc::clone(&f.pipe));
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
        feed_reply(inner, &users, reply);
    }
}

/// Hands what one `XREAD` returned to the feeds it was read for (`users`: each stream key's
/// pipe when the read was issued) and moves their positions on. Never waits on a subscriber:
/// each user's pipe buffers for that user alone.
fn feed_reply(inner: &BusInner, users: &HashMap<String, Arc<FeedPipe>>, reply: StreamReadReply) {
    for stream in reply.keys {
        let Some(pipe) = users.get(&stream.key) else {
            continue;
        };
        let user = pipe.feed.user_id();
        // The user's channel may have ended and a new one attached while this read waited
        // (the new feed starts at the stream's end as it was then, which may be before
        // these entries): they are the new feed's to read from its own position, not the
        // old feed's to drop.
        if !lock(&inner.feeds)
            .by_user
            .get(user)
            .is_some_and(|f| Arc::ptr_eq(&f.pipe, pipe))
        {
            continue;
        }
        let mut last = None;
        for entry in stream.ids {
            last = StreamPos::parse(&entry.id).or(last);
            if is_own(&entry.map, &inner.origin) {
                continue; // the hub gave it to this node's subscribers when it was published
            }
            let Some(event) = decode(&entry.map) else {
                tracing::warn!(user_id = %user, id = %entry.id, "unreadable stream entry skipped");
                continue;
            };
            if !inner.keys.is_events_key_of(&stream.key, &event.user_id) {
                // Never route an envelope by its label when the stream says otherwise.
                tracing::error!(user_id = %user, "stream entry of another user refused");
                continue;
            }
            pipe.offer(event, &inner.health);
        }
        if let Some(last) = last {
            let mut feeds = lock(&inner.feeds);
            // Only the feed these entries went to moves on; a feed attached meanwhile
            // reads them from its own position.
            if let Some(f) = feeds
                .by_user
                .get_mut(user)
                .filter(|f| Arc::ptr_eq(&f.pipe, pipe))
            {
                f.pos = f.pos.max(last);
            }
        }
    }
}

/// Whether a stream entry was stored by this process.
fn is_own(map: &HashMap<String, Value>, origin: &str) -> bool {
    match map.get("o") {
        Some(Value::BulkString(bytes)) => bytes == origin.as_bytes(),
        Some(Value::SimpleString(s)) => s == origin,
        _ => false,
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

    /// Whether every event handed to `publish` is stored or given up, or the store does not
    /// answer now (what `flush` waits for: this node's own subscribers had every event at
    /// once).
    fn caught_up(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 || self.failing.load(Ordering::Acquire)
    }
}

impl EventBus for RedisBus {
    fn publish(&self, event: EventEnvelope) -> Delivery<'_> {
        let inner = &self.inner;
        // Never waits: the hub gave this node's subscribers the event already, and a run
        // must not slow down (nor its events time out) because Redis does.
        if inner.in_flight.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            if inner
                .health
                .unstored
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
            {
                tracing::error!(
                    user_id = %event.user_id,
                    run_id = %event.run_id,
                    seq = event.seq,
                    "the cluster's event queue is full; events not stored, other nodes see a gap"
                );
            }
            return Delivery::ready(Err(DeliveryError::Failed(
                "the cluster's event queue is full (Redis slow or down)".into(),
            )));
        }
        match self.tx.send(event) {
            Ok(()) => Delivery::ready(Ok(())),
            Err(_) => {
                inner.in_flight.fetch_sub(1, Ordering::AcqRel);
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
            let pipe = FeedPipe::new(feed);
            lock(&inner.feeds)
                .by_user
                .insert(pipe.feed.user_id().clone(), Feed { pipe, key, pos });
            inner.interrupt_reader().await;
            Ok(())
        })
    }

    fn detach(&self, user: &UserId) {
        let mut feeds = lock(&self.inner.feeds);
        // A newer channel of the same user may already have attached: keep an open feed.
        if feeds
            .by_user
            .get(user)
            .is_some_and(|f| !f.pipe.feed.is_open())
        {
            feeds.by_user.remove(user);
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
            // Page by page from the oldest retained entry, up to the run's terminal event:
            // a replay holds one page of the user's stream at a time, never all of it.
            let key = inner.keys.events(user);
            let wanted = run.as_str();
            let mut events: Vec<EventEnvelope> = Vec::new();
            let mut start = "-".to_owned();
            let pages = inner.maxlen.saturating_mul(2) / REPLAY_PAGE as u64 + 2;
            'pages: for _ in 0..pages {
                let page: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(REPLAY_PAGE)
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                for entry in &page.ids {
                    if field_str(&entry.map, "r").as_deref() != Some(wanted) {
                        continue;
                    }
                    let seq: u64 = field_str(&entry.map, "s")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    // After the position asked for, and each seq once (a retried batch may
                    // be stored twice).
                    if seq <= events.last().map_or(after_seq, |e| e.seq) {
                        continue;
                    }
                    match decode(&entry.map) {
                        Some(e) if &e.user_id == user && &e.run_id == run => {
                            let terminal = e.event.is_terminal();
                            events.push(e);
                            if terminal {
                                break 'pages;
                            }
                        }
                        _ => {}
                    }
                }
                match page.ids.last() {
                    Some(last) if page.ids.len() == REPLAY_PAGE => {
                        start = format!("({}", last.id);
                    }
                    _ => break,
                }
            }
            inner.health.ok();
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
        let (old_pipe, key) = {
            let feeds = lock(&inner.feeds);
            let f = &feeds.by_user[&user];
            (Arc::clone(&f.pipe), f.key.clone())
        };
        drop(old);
        assert!(!old_pipe.feed.is_open(), "the user's first channel ended");
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
        let users = HashMap::from([(key, old_pipe)]);
        feed_reply(inner, &users, reply);

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
