//! [`FeedPipe`]: the hand-off between the node's one stream reader and one user's hub channel.
//! The reader never waits on a user's subscribers: an event their queues take at once is
//! delivered at once, otherwise it joins the user's own backlog, which a task of that user
//! drains at the subscribers' pace. Each run's events pass at most once and never with a seq
//! below one already passed (a batch a retry stored twice is skipped the second time).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use engine_core::{Delivery, EventEnvelope, RunId};
use engine_factory::UserFeed;

use crate::bus::lock;
use crate::health::Health;

/// Events held for one user past their subscribers' own queues; beyond it the user (only
/// that user) loses events and sees a gap.
pub(crate) const FEED_BACKLOG: usize = 4_096;
/// Runs per user whose last passed seq is remembered (the oldest is forgotten first): a run's
/// duplicates come within one retry of a batch, so a few recent runs suffice.
const RUNS_REMEMBERED: usize = 256;

/// One user's hand-off on this node.
pub(crate) struct FeedPipe {
    pub(crate) feed: UserFeed,
    state: Mutex<PipeState>,
}

#[derive(Default)]
struct PipeState {
    backlog: VecDeque<EventEnvelope>,
    /// A task is delivering (a delivery waits on a full subscriber, or the backlog is not
    /// empty): new events join the backlog, behind it.
    draining: bool,
    /// The last seq passed per run, and the runs in the order they were first seen.
    last_seq: HashMap<RunId, u64>,
    runs: VecDeque<RunId>,
}

impl PipeState {
    /// Whether `event` is new for its run (and remembers it if so).
    fn admit(&mut self, event: &EventEnvelope) -> bool {
        match self.last_seq.get_mut(&event.run_id) {
            Some(last) if event.seq <= *last => false,
            Some(last) => {
                *last = event.seq;
                true
            }
            None => {
                if self.runs.len() >= RUNS_REMEMBERED {
                    if let Some(old) = self.runs.pop_front() {
                        self.last_seq.remove(&old);
                    }
                }
                self.runs.push_back(event.run_id.clone());
                self.last_seq.insert(event.run_id.clone(), event.seq);
                true
            }
        }
    }
}

impl FeedPipe {
    pub(crate) fn new(feed: UserFeed) -> Arc<Self> {
        Arc::new(Self {
            feed,
            state: Mutex::new(PipeState::default()),
        })
    }

    /// Hands `event` on without waiting: delivered now when every subscriber has room, or
    /// queued behind this user's own backlog.
    pub(crate) fn offer(self: &Arc<Self>, event: EventEnvelope, health: &Arc<Health>) {
        let mut state = lock(&self.state);
        if !state.admit(&event) {
            health.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        health.read.fetch_add(1, Ordering::Relaxed);
        if state.draining {
            if state.backlog.len() >= FEED_BACKLOG {
                health.overflow.fetch_add(1, Ordering::Relaxed);
            } else {
                state.backlog.push_back(event);
            }
            return;
        }
        // Under the lock, so that a drain ending now cannot pass this event.
        if let Delivery::Pending(waiting) = self.feed.offer(event) {
            state.draining = true;
            drop(state);
            let pipe = Arc::clone(self);
            tokio::spawn(async move {
                let guard = Draining {
                    pipe: &pipe,
                    done: false,
                };
                let _ = waiting.await;
                guard.drain().await;
            });
        }
    }
}

/// The draining task's hold on a pipe: gives the pipe back on every path, also when the task
/// is dropped mid-way (the runtime shutting down), so new events are never stuck behind it.
struct Draining<'a> {
    pipe: &'a Arc<FeedPipe>,
    /// The backlog was found empty and the pipe given back under the same lock.
    done: bool,
}

impl Draining<'_> {
    /// Delivers the backlog in order, waiting on full subscribers (each wait bounded by the
    /// hub's backpressure deadline), until it is empty.
    async fn drain(mut self) {
        loop {
            let next = {
                let mut state = lock(&self.pipe.state);
                let next = state.backlog.pop_front();
                if next.is_none() {
                    // Given back under the lock that saw the backlog empty: the reader's next
                    // event is delivered directly, after everything before it.
                    state.draining = false;
                    self.done = true;
                }
                next
            };
            let Some(event) = next else {
                return;
            };
            if let Delivery::Pending(waiting) = self.pipe.feed.offer(event) {
                let _ = waiting.await;
            }
        }
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Dropped mid-way: what is left cannot be delivered in order any more.
            let mut state = lock(&self.pipe.state);
            state.backlog.clear();
            state.draining = false;
        }
    }
}
