//! Per-user gateway state: the user's engine, connections, replay buffer and rate window.
//! Everything here is keyed by the authenticated user; no structure is shared across users.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use engine_core::{EventEnvelope, RunId, UserId};
use engine_factory::EngineHandle;
use tokio::sync::mpsc;

use crate::protocol::ServerFrame;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A frame queued to one connection, with the emission time of the event it carries (for the
/// emit-to-socket lag; 0 for other frames and replays).
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) text: Arc<str>,
    pub(crate) emitted_us: u64,
}

impl Outgoing {
    /// A frame that is not a live event.
    pub(crate) fn plain(text: impl Into<Arc<str>>) -> Self {
        Self {
            text: text.into(),
            emitted_us: 0,
        }
    }
}

/// What the replay buffer knows of one run.
#[derive(Debug, Clone, Copy, Default)]
struct RunInfo {
    /// Highest sequence number evicted from the buffer (0: none).
    evicted_through: u64,
    /// The sequence number of the run's terminal event, once seen.
    terminal_seq: Option<u64>,
}

/// A bounded per-user replay buffer.
#[derive(Debug)]
pub(crate) struct Replay {
    capacity: usize,
    events: VecDeque<Arc<EventEnvelope>>,
    runs: HashMap<RunId, RunInfo>,
    run_order: VecDeque<RunId>,
}

impl Replay {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            events: VecDeque::new(),
            runs: HashMap::new(),
            run_order: VecDeque::new(),
        }
    }

    /// Forgets a run registered for a run the engine then refused.
    pub(crate) fn forget(&mut self, run: &RunId) {
        if self.runs.remove(run).is_some() {
            self.run_order.retain(|r| r != run);
        }
    }

    /// Remembers a run as the user's (before its first event arrives).
    pub(crate) fn register(&mut self, run: &RunId) {
        if !self.runs.contains_key(run) {
            self.runs.insert(run.clone(), RunInfo::default());
            self.run_order.push_back(run.clone());
            // Remember at most 4x capacity runs; older ones answer `unknown_run`.
            while self.run_order.len() > self.capacity.max(1) * 4 {
                if let Some(old) = self.run_order.pop_front() {
                    self.runs.remove(&old);
                }
            }
        }
    }

    pub(crate) fn push(&mut self, e: Arc<EventEnvelope>) {
        self.register(&e.run_id);
        if e.event.is_terminal() {
            if let Some(info) = self.runs.get_mut(&e.run_id) {
                info.terminal_seq = Some(e.seq);
            }
        }
        self.events.push_back(e);
        while self.events.len() > self.capacity {
            if let Some(old) = self.events.pop_front() {
                if let Some(info) = self.runs.get_mut(&old.run_id) {
                    info.evicted_through = info.evicted_through.max(old.seq);
                }
            }
        }
    }

    /// The sequence number of `run`'s terminal event, if this buffer saw it.
    pub(crate) fn terminal_seq(&self, run: &RunId) -> Option<u64> {
        self.runs.get(run).and_then(|i| i.terminal_seq)
    }

    /// The frames that bring a client from `after_seq` up to date on `run`, or `None` if the
    /// run is not one of this user's known runs.
    pub(crate) fn resume(&self, run: &RunId, after_seq: u64) -> Option<Vec<ServerFrame>> {
        let info = self.runs.get(run)?;
        let mut frames = Vec::new();
        if info.evicted_through > after_seq {
            frames.push(ServerFrame::Gap {
                run_id: run.clone(),
                from_seq: after_seq + 1,
                to_seq: info.evicted_through,
            });
        }
        frames.extend(
            self.events
                .iter()
                .filter(|e| &e.run_id == run && e.seq > after_seq)
                .map(|e| ServerFrame::Event {
                    envelope: Arc::clone(e),
                }),
        );
        Some(frames)
    }
}

/// The user's connections, locked: see [`UserSession::hold_delivery`].
pub(crate) struct DeliveryHold<'a>(MutexGuard<'a, Vec<(u64, mpsc::Sender<Outgoing>)>>);

impl DeliveryHold<'_> {
    /// Sends one frame to one connection; `false` if it is gone or its queue is full.
    pub(crate) fn send_to(&self, id: u64, frame: Outgoing) -> bool {
        self.0
            .iter()
            .find(|(c, _)| *c == id)
            .is_some_and(|(_, tx)| tx.try_send(frame).is_ok())
    }
}

/// Why a connection could not attach to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttachRefused {
    /// The user already has the most connections allowed.
    Full,
    /// The session was swept meanwhile: take the user's session again.
    Swept,
}

/// One user's live state in the gateway.
pub(crate) struct UserSession {
    pub user: UserId,
    pub engine: tokio::sync::Mutex<Option<EngineHandle>>,
    pub replay: Mutex<Replay>,
    connections: Mutex<Vec<(u64, mpsc::Sender<Outgoing>)>>,
    next_conn: AtomicU64,
    rate: Mutex<VecDeque<Instant>>,
    /// `resume` frames of the last minute.
    resumes: Mutex<VecDeque<Instant>>,
    /// Set (under the connections lock) when the idle sweep removed the session: its pump is
    /// stopping, so no connection may attach to it any more.
    swept: AtomicBool,
    last_seen: Mutex<Instant>,
    /// Stops this user's event pump when the session is swept.
    pub pump_stop: tokio_util::sync::CancellationToken,
    /// Set once the pump receives every event published from then on (at once on one node;
    /// in cluster mode once the Redis stream position is fixed).
    live: tokio::sync::watch::Sender<bool>,
    /// Streams of one run each (the HTTP API's Server-Sent Events), fed by the pump.
    watchers: Mutex<Vec<Watcher>>,
}

/// One stream's interest in one of the user's runs.
struct Watcher {
    id: u64,
    run: RunId,
    tx: mpsc::Sender<Arc<EventEnvelope>>,
}

/// Live events of one of the user's runs, as the pump receives them; unregistered when
/// dropped. An event that finds the queue full is not queued: the reader sees the jump in
/// sequence numbers and reads the missing events back.
pub(crate) struct RunWatch {
    session: Arc<UserSession>,
    id: u64,
    pub(crate) rx: mpsc::Receiver<Arc<EventEnvelope>>,
}

impl Drop for RunWatch {
    fn drop(&mut self) {
        lock(&self.session.watchers).retain(|w| w.id != self.id);
        self.session.touch();
    }
}

/// Events queued per run stream before it reads the rest back.
const WATCH_QUEUE: usize = 256;

impl UserSession {
    pub(crate) fn new(user: UserId, replay_capacity: usize) -> Self {
        Self {
            user,
            engine: tokio::sync::Mutex::new(None),
            replay: Mutex::new(Replay::new(replay_capacity)),
            connections: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            rate: Mutex::new(VecDeque::new()),
            resumes: Mutex::new(VecDeque::new()),
            swept: AtomicBool::new(false),
            last_seen: Mutex::new(Instant::now()),
            pump_stop: tokio_util::sync::CancellationToken::new(),
            live: tokio::sync::watch::Sender::new(false),
            watchers: Mutex::new(Vec::new()),
        }
    }

    /// Starts receiving the live events of `run` (one of this user's runs: the pump only
    /// carries this user's events).
    pub(crate) fn watch(self: &Arc<Self>, run: &RunId) -> RunWatch {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        lock(&self.watchers).push(Watcher {
            id,
            run: run.clone(),
            tx,
        });
        self.touch();
        RunWatch {
            session: Arc::clone(self),
            id,
            rx,
        }
    }

    /// Hands `event` to the streams watching its run (never waits: a full stream misses it).
    pub(crate) fn notify_watchers(&self, event: &Arc<EventEnvelope>) {
        let watchers = lock(&self.watchers);
        for w in watchers.iter().filter(|w| w.run == event.run_id) {
            let _ = w.tx.try_send(Arc::clone(event));
        }
    }

    /// Called by the pump once its subscription is live.
    pub(crate) fn mark_live(&self) {
        self.live.send_replace(true);
    }

    /// Waits (at most 5 s) until the pump's subscription is live, so that a connection is
    /// welcomed, and a run started, only once every later event will reach it.
    pub(crate) async fn wait_live(&self) {
        let mut live = self.live.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), live.wait_for(|l| *l)).await;
    }

    /// Marks activity (a connection, a message, a disconnect).
    pub(crate) fn touch(&self) {
        *lock(&self.last_seen) = Instant::now();
    }

    /// Whether the session has no connection, no run in flight, and no activity for `idle`.
    pub(crate) fn is_idle(&self, idle: Duration) -> bool {
        let busy = self.engine.try_lock().map_or(true, |e| {
            e.as_ref().is_some_and(|e| e.active_run_count() > 0)
        });
        lock(&self.connections).is_empty()
            && lock(&self.watchers).is_empty()
            && !busy
            && lock(&self.last_seen).elapsed() >= idle
    }

    /// Adds a connection unless the user already has `max` or the session was swept; returns
    /// its id.
    pub(crate) fn try_attach(
        &self,
        max: usize,
        tx: mpsc::Sender<Outgoing>,
    ) -> Result<u64, AttachRefused> {
        let mut conns = lock(&self.connections);
        // Read under the connections lock, which the sweep takes to set it.
        if self.swept.load(Ordering::Acquire) {
            return Err(AttachRefused::Swept);
        }
        if conns.len() >= max {
            return Err(AttachRefused::Full);
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        conns.push((id, tx));
        self.touch();
        Ok(id)
    }

    /// Marks the session swept if it has no connection (checked and set under the connections
    /// lock, so a connection attaching at the same time either lands before, and the session
    /// stays, or sees the mark and takes a new session). `true` if it was marked.
    pub(crate) fn sweep_if_unattached(&self) -> bool {
        let conns = lock(&self.connections);
        if !conns.is_empty() {
            return false;
        }
        self.swept.store(true, Ordering::Release);
        true
    }

    pub(crate) fn detach(&self, id: u64) {
        lock(&self.connections).retain(|(c, _)| *c != id);
        self.touch();
    }

    /// Sends one frame to one connection; `false` if it is gone or its queue is full.
    pub(crate) fn send_to(&self, id: u64, frame: Outgoing) -> bool {
        self.hold_delivery().send_to(id, frame)
    }

    /// Holds event delivery to this user's connections (the event pump waits) until dropped:
    /// while a run is started, so that `run_accepted` reaches the connection that asked before
    /// any event of that run. Hold it only across synchronous work.
    pub(crate) fn hold_delivery(&self) -> DeliveryHold<'_> {
        DeliveryHold(lock(&self.connections))
    }

    /// Sends a frame to every connection of this user; a connection whose queue is full misses
    /// it (the client can `resume`). Returns (sent, dropped).
    pub(crate) fn broadcast(&self, frame: &Outgoing) -> (u64, u64) {
        let conns = lock(&self.connections);
        let (mut sent, mut dropped) = (0, 0);
        for (_, tx) in conns.iter() {
            match tx.try_send(frame.clone()) {
                Ok(()) => sent += 1,
                Err(_) => dropped += 1,
            }
        }
        (sent, dropped)
    }

    /// Records one message; `false` if the user exceeded `per_minute`.
    pub(crate) fn allow_message(&self, per_minute: usize) -> bool {
        let allowed = allow(&self.rate, per_minute);
        if allowed {
            self.touch();
        }
        allowed
    }

    /// Records one `resume`; `false` if the user exceeded `per_minute`.
    pub(crate) fn allow_resume(&self, per_minute: usize) -> bool {
        allow(&self.resumes, per_minute)
    }

    /// Room left in connection `id`'s queue (0 for an unknown connection).
    pub(crate) fn room(&self, id: u64) -> usize {
        lock(&self.connections)
            .iter()
            .find(|(c, _)| *c == id)
            .map_or(0, |(_, tx)| tx.capacity())
    }
}

/// Records one use in a sliding one-minute `window`; `false` (nothing recorded) when it already
/// holds `per_minute`.
fn allow(window: &Mutex<VecDeque<Instant>>, per_minute: usize) -> bool {
    let mut window = lock(window);
    let now = Instant::now();
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        window.pop_front();
    }
    if window.len() >= per_minute {
        return false;
    }
    window.push_back(now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::{AgentEvent, ThreadId};

    fn ev(run: &str, seq: u64) -> Arc<EventEnvelope> {
        Arc::new(EventEnvelope {
            user_id: UserId::new("alice").unwrap(),
            thread_id: ThreadId::new("t").unwrap(),
            run_id: RunId::new(run).unwrap(),
            request_id: engine_core::RequestId::new("q").unwrap(),
            seq,
            timestamp_us: seq,
            event: AgentEvent::AgentThinking {
                reasoning: "x".into(),
            },
        })
    }

    #[test]
    fn a_swept_session_refuses_new_connections_and_an_attached_one_is_not_swept() {
        let s = UserSession::new(UserId::new("alice").unwrap(), 10);
        let (tx, _rx) = mpsc::channel(1);
        let id = s.try_attach(5, tx.clone()).unwrap();
        assert!(
            !s.sweep_if_unattached(),
            "a session with a connection stays"
        );
        s.detach(id);
        assert!(s.sweep_if_unattached());
        assert_eq!(s.try_attach(5, tx), Err(AttachRefused::Swept));
    }

    #[test]
    fn replay_resumes_and_reports_evicted_ranges() {
        let mut r = Replay::new(3);
        for seq in 1..=5 {
            r.push(ev("run-a", seq));
        }
        let run = RunId::new("run-a").unwrap();
        let frames = r.resume(&run, 0).unwrap();
        assert!(matches!(
            frames[0],
            ServerFrame::Gap {
                from_seq: 1,
                to_seq: 2,
                ..
            }
        ));
        assert_eq!(frames.len(), 4);
        let frames = r.resume(&run, 4).unwrap();
        assert_eq!(frames.len(), 1, "nothing evicted after 4: only seq 5");
        assert!(r.resume(&RunId::new("run-b").unwrap(), 0).is_none());
    }

    #[test]
    fn rate_window_limits_per_minute() {
        let s = UserSession::new(UserId::new("alice").unwrap(), 10);
        assert!((0..3).all(|_| s.allow_message(3)));
        assert!(!s.allow_message(3));
    }
}
