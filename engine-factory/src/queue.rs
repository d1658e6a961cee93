//! One subscription's buffer: a bounded queue of envelopes, owned, from the hub to one
//! subscriber.
//!
//! Why not a `tokio::sync::mpsc` channel: its buffer is a list of 32-slot blocks allocated up
//! front, so a channel of owned envelopes (~180 bytes each) would hold ~6 KB per idle
//! subscriber, and a channel of `Arc`s costs an allocation per event. This queue holds envelopes
//! by value in a `VecDeque` that grows with use and is released when a burst drains (a drained
//! buffer of up to [`KEEP_SLOTS`] envelopes is kept, ~1.4 KB), so a subscriber that never
//! received anything has no buffer at all, and the common case (one subscriber per user) moves
//! each envelope from the engine to the subscriber without an allocation. The next burst's
//! buffer is allocated at the last burst's size at once ([`Buffer`]): growing one by doubling
//! copies every buffered envelope at each step, again for every burst.
//!
//! Ordering: every push and pop takes the queue's lock, so events leave in the order they
//! arrived. Wake-ups: the subscriber registers its waker and looks again before it sleeps
//! ([`AtomicWaker`]); a sender waiting for room (backpressure) enables its `Notify` before it
//! looks, and the subscriber notifies only when a sender says it waits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use engine_core::EventEnvelope;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

/// A drained buffer that grew past this many slots is released (a burst's memory goes back);
/// a smaller one is kept, so steady small runs do not allocate per burst.
const KEEP_SLOTS: usize = 8;

/// Why a push did not happen.
pub(crate) enum PushError {
    /// The buffer is full; the envelope comes back.
    Full(EventEnvelope),
    /// The subscriber is gone, or the queue is closed; the envelope is dropped.
    Closed,
}

/// Why a waiting push did not happen.
pub(crate) enum WaitError {
    /// The buffer stayed full past the deadline.
    TimedOut,
    /// The subscriber went away, or the queue was closed.
    Closed,
}

/// The buffer between the hub and one subscriber.
pub(crate) struct Queue {
    items: Mutex<Buffer>,
    capacity: usize,
    /// No more pushes: the hub closed (the subscriber drains what is buffered, then ends).
    closed: AtomicBool,
    /// The subscriber is gone: pushes fail at once.
    receiver_gone: AtomicBool,
    /// The subscriber's waker.
    receiver: AtomicWaker,
    /// Senders waiting for room, and how they are woken.
    senders_waiting: AtomicUsize,
    room: Notify,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("buffered", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// An empty queue of `capacity` envelopes (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(Buffer {
                items: VecDeque::new(),
                peak: 0,
                last_burst: 0,
            }),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            receiver_gone: AtomicBool::new(false),
            receiver: AtomicWaker::new(),
            senders_waiting: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }

    /// The buffer, locked (a std mutex also under `model-check`: the queue is not part of the
    /// admission model). No critical section here panics; a poisoned lock is recovered.
    #[inline]
    fn items(&self) -> MutexGuard<'_, Buffer> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Buffers `event` if there is room, without waiting.
    #[inline]
    #[expect(
        clippy::result_large_err,
        reason = "a full queue hands the envelope back to be waited with, as tokio's try_send does"
    )]
    pub(crate) fn try_push(&self, event: EventEnvelope) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) || self.receiver_gone.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        {
            let mut buffer = self.items();
            if buffer.items.len() >= self.capacity {
                return Err(PushError::Full(event));
            }
            buffer.push(event, self.capacity);
        }
        self.receiver.wake();
        Ok(())
    }

    /// Buffers `event`, waiting up to `deadline` for room.
    pub(crate) async fn push_within(
        &self,
        event: EventEnvelope,
        deadline: Duration,
    ) -> Result<(), WaitError> {
        let waiting = async {
            let mut event = event;
            loop {
                let freed = self.room.notified();
                tokio::pin!(freed);
                // Say we wait and enable the wake-up before looking, so room made between the
                // look and the wait is not missed.
                let _waiting = Waiting::start(&self.senders_waiting);
                freed.as_mut().enable();
                match self.try_push(event) {
                    Ok(()) => return Ok(()),
                    Err(PushError::Closed) => return Err(WaitError::Closed),
                    Err(PushError::Full(back)) => event = back,
                }
                freed.await;
            }
        };
        tokio::time::timeout(deadline, waiting)
            .await
            .unwrap_or(Err(WaitError::TimedOut))
    }

    /// The next envelope, without waiting.
    #[inline]
    pub(crate) fn pop(&self) -> Option<EventEnvelope> {
        let event = self.items().pop();
        if event.is_some() && self.senders_waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
        event
    }

    /// The next envelope; `None` once the queue is closed and drained.
    #[inline]
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<EventEnvelope>> {
        if let Some(event) = self.pop() {
            return Poll::Ready(Some(event));
        }
        self.receiver.register(cx.waker());
        // Look again after registering: a push in between has woken the new waker or is seen.
        if let Some(event) = self.pop() {
            return Poll::Ready(Some(event));
        }
        if self.closed.load(Ordering::Acquire) {
            return Poll::Ready(self.pop());
        }
        Poll::Pending
    }

    /// Envelopes buffered and not yet read.
    pub(crate) fn len(&self) -> usize {
        self.items().items.len()
    }

    /// Ends the queue for the subscriber once it has read what is buffered.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.receiver.wake();
        self.room.notify_waiters();
    }

    /// The subscriber is gone: pushes fail, waiting senders stop waiting.
    pub(crate) fn receiver_dropped(&self) {
        self.receiver_gone.store(true, Ordering::Release);
        self.room.notify_waiters();
    }
}

/// A queue's envelopes, and the size of the last burst they came in.
struct Buffer {
    items: VecDeque<EventEnvelope>,
    /// Most envelopes buffered at once since the buffer was last empty and released.
    peak: usize,
    /// `peak` of the last burst: room made at once for the next one.
    last_burst: usize,
}

impl Buffer {
    #[inline]
    fn push(&mut self, event: EventEnvelope, capacity: usize) {
        if self.items.capacity() == 0 && self.last_burst > KEEP_SLOTS {
            self.items.reserve_exact(self.last_burst.min(capacity));
        }
        self.items.push_back(event);
        self.peak = self.peak.max(self.items.len());
    }

    /// The first envelope. A burst's buffer is released once drained (its peak is kept for
    /// the next); a small one stays, so steady small runs do not allocate per burst.
    #[inline]
    fn pop(&mut self) -> Option<EventEnvelope> {
        let event = self.items.pop_front();
        if self.items.is_empty() && self.items.capacity() > KEEP_SLOTS {
            self.items = VecDeque::new();
            self.last_burst = std::mem::take(&mut self.peak);
        }
        event
    }
}

/// One sender waiting for room, counted while it lives (also when its future is dropped
/// half-way, say its run was cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use engine_core::{AgentEvent, RequestId, RunId, ThreadId, UserId};

    use super::*;

    fn ev(seq: u64) -> EventEnvelope {
        EventEnvelope {
            user_id: UserId::new("alice").unwrap(),
            thread_id: ThreadId::new("t").unwrap(),
            run_id: RunId::new("r").unwrap(),
            request_id: RequestId::new("q").unwrap(),
            seq,
            timestamp_us: seq,
            event: AgentEvent::AgentThinking {
                reasoning: "x".into(),
            },
        }
    }

    fn capacity_of(q: &Queue) -> usize {
        q.items().items.capacity()
    }

    #[test]
    fn keeps_order_refuses_when_full_and_releases_a_drained_burst() {
        let q = Queue::new(100);
        for seq in 1..=100 {
            assert!(q.try_push(ev(seq)).is_ok());
        }
        assert!(matches!(q.try_push(ev(101)), Err(PushError::Full(e)) if e.seq == 101));
        assert_eq!(q.len(), 100);
        assert!(capacity_of(&q) >= 100);
        let seqs: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        assert_eq!(capacity_of(&q), 0, "a drained burst gives its memory back");
        // The next burst gets the last one's room at once (no growth, no copies), and gives
        // it back when drained.
        assert!(q.try_push(ev(1)).is_ok());
        assert!(capacity_of(&q) >= 100, "{}", capacity_of(&q));
        assert!(q.pop().is_some());
        assert_eq!(capacity_of(&q), 0);
        // A small burst in between sets the size for the next one.
        for seq in 1..=20 {
            assert!(q.try_push(ev(seq)).is_ok());
        }
        while q.pop().is_some() {}
        assert!(q.try_push(ev(1)).is_ok());
        assert!((1..100).contains(&capacity_of(&q)), "{}", capacity_of(&q));
        assert!(q.pop().is_some());
        // A small steady buffer is kept (no allocation per event).
        for seq in 1..=4 {
            assert!(q.try_push(ev(seq)).is_ok());
            assert!(q.pop().is_some());
        }
        assert!(capacity_of(&q) > 0 && capacity_of(&q) <= KEEP_SLOTS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_push_gets_in_when_room_is_made_or_times_out() {
        let q = Arc::new(Queue::new(1));
        assert!(q.try_push(ev(1)).is_ok());
        // Nobody reads: the wait ends at its deadline.
        let r = q.push_within(ev(2), Duration::from_millis(50)).await;
        assert!(matches!(r, Err(WaitError::TimedOut)));
        assert_eq!(q.senders_waiting.load(Ordering::SeqCst), 0);
        // A reader makes room: the waiting push gets in.
        let reader = {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                q.pop().map(|e| e.seq)
            })
        };
        let r = q.push_within(ev(3), Duration::from_secs(10)).await;
        assert!(r.is_ok());
        assert_eq!(reader.await.unwrap(), Some(1));
        assert_eq!(q.pop().map(|e| e.seq), Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gone_subscriber_releases_waiting_senders_at_once() {
        let q = Arc::new(Queue::new(1));
        assert!(q.try_push(ev(1)).is_ok());
        let waiting = {
            let q = Arc::clone(&q);
            tokio::spawn(async move { q.push_within(ev(2), Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.receiver_dropped();
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released before its 30 s deadline")
            .unwrap();
        assert!(matches!(r, Err(WaitError::Closed)));
        assert!(matches!(q.try_push(ev(3)), Err(PushError::Closed)));
    }

    #[tokio::test]
    async fn a_closed_queue_is_drained_then_ends() {
        let q = Queue::new(8);
        assert!(q.try_push(ev(1)).is_ok());
        assert!(q.try_push(ev(2)).is_ok());
        q.close();
        assert!(matches!(q.try_push(ev(3)), Err(PushError::Closed)));
        let mut seqs = Vec::new();
        while let Some(e) = std::future::poll_fn(|cx| q.poll_pop(cx)).await {
            seqs.push(e.seq);
        }
        assert_eq!(seqs, [1, 2]);
    }

    /// One event pushed while the reader is going to sleep on an empty queue, over and over on
    /// two workers: the reader must always wake (a push between its look and its waker
    /// registration would otherwise be slept through; bounded by a timeout, not a hang).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_racing_the_readers_sleep_always_wakes_it() {
        for i in 0..20_000 {
            let q = Arc::new(Queue::new(4));
            let reader = {
                let q = Arc::clone(&q);
                tokio::spawn(async move { std::future::poll_fn(|cx| q.poll_pop(cx)).await })
            };
            let sender = {
                let q = Arc::clone(&q);
                tokio::spawn(async move { q.try_push(ev(i)).is_ok() })
            };
            assert!(sender.await.unwrap());
            let got = tokio::time::timeout(Duration::from_secs(5), reader)
                .await
                .unwrap_or_else(|_| panic!("round {i}: the reader slept through the push"))
                .unwrap();
            assert_eq!(got.map(|e| e.seq), Some(i));
        }
    }

    /// Four senders on two workers against one reader, with a buffer far smaller than the
    /// traffic: every event arrives once, each sender's in order, and nobody sleeps through a
    /// wake-up (the test would hang; it is bounded instead).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_one_reader_lose_nothing_and_keep_order() {
        const SENDERS: u64 = 4;
        const EACH: u64 = 5_000;
        let q = Arc::new(Queue::new(8));
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    for i in 0..EACH {
                        let e = ev(s * EACH + i);
                        match q.try_push(e) {
                            Ok(()) => {}
                            Err(PushError::Full(e)) => {
                                if q.push_within(e, Duration::from_secs(30)).await.is_err() {
                                    return false;
                                }
                            }
                            Err(PushError::Closed) => return false,
                        }
                    }
                    true
                })
            })
            .collect();
        let reader = {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                let mut last = vec![None::<u64>; SENDERS as usize];
                let mut n = 0;
                while n < SENDERS * EACH {
                    let e = std::future::poll_fn(|cx| q.poll_pop(cx)).await.unwrap();
                    let s = (e.seq / EACH) as usize;
                    assert!(last[s].is_none_or(|l| l < e.seq), "sender {s} out of order");
                    last[s] = Some(e.seq);
                    n += 1;
                }
                n
            })
        };
        let got = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("no lost wake-up")
            .unwrap();
        assert_eq!(got, SENDERS * EACH);
        for s in senders {
            assert!(s.await.unwrap());
        }
        assert_eq!(q.len(), 0);
    }
}
