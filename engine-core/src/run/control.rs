//! [`RunControl`]: what the engine, the run's task and every agent of the run share about one
//! live run — its cancellation, its thread, the signal that it ended, its tool calls waiting for
//! the user's approval, the tool calls and sub-agents in progress (to close them if the run is
//! cut short), the call-id counter, cleanup actions, and a pipeline's step outcomes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::agent::BoxError;
use crate::ids::{RequestId, ThreadId};
use crate::multitask::ApprovalDecision;
use crate::outcome::StepOutcome;
use crate::run::checks::Trip;
use crate::sync::lock;

/// A one-way flag that can be awaited: set once, never reset. Lives inside [`RunControl`], so
/// a run's cancellation and its end cost no allocation of their own.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Signal {
    /// Sets the flag and wakes every waiter (once: later calls do nothing).
    pub(crate) fn set(&self) {
        if !self.set.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Whether the flag is set.
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the flag is set.
    pub(crate) async fn wait(&self) {
        loop {
            // Created before the check: `notify_waiters` reaches a `Notified` from its
            // creation on, so a `set` in between is not missed.
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Shared by the engine's run table and the run's task; dropped with both.
#[derive(Debug)]
pub(crate) struct RunControl {
    /// Set to cancel the run (by the user, the engine's shutdown or an interrupting run).
    pub(crate) cancel: Signal,
    pub(crate) thread_id: ThreadId,
    /// Set when the run's task has emitted its terminal event and released the run (or was
    /// dropped): later runs of the thread wait on it ([`ended`](Self::ended)).
    done: Signal,
    approvals: Mutex<Approvals>,
    next_call_id: AtomicU32,
    /// Started tool calls and sub-agents not yet ended; inline for the usual one at a time, so
    /// a run's first tool call does not allocate.
    open: Mutex<smallvec::SmallVec<[Open; 1]>>,
    cleanups: Mutex<Vec<Cleanup>>,
    pub(crate) steps: Mutex<Vec<StepOutcome>>,
    /// Model tokens reported by the run's agents: prompt, completion.
    pub(crate) usage: [std::sync::atomic::AtomicU64; 2],
    /// The guardrail trip that ends the run, once one did (the first wins).
    trip: std::sync::OnceLock<Box<Trip>>,
}

/// A cleanup action registered with `RunContext::on_cleanup`.
pub(crate) type CleanupFn =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send>;

pub(crate) struct Cleanup {
    pub(crate) name: String,
    pub(crate) action: CleanupFn,
}

impl std::fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleanup").field("name", &self.name).finish()
    }
}

/// A tool call or sub-agent that has announced its start but not yet its end.
#[derive(Debug, Clone)]
pub(crate) struct Open {
    /// The agent that emitted the start (and must emit the end).
    pub(crate) owner: RequestId,
    pub(crate) started: Instant,
    pub(crate) item: OpenItem,
}

#[derive(Debug, Clone)]
pub(crate) enum OpenItem {
    Tool {
        call_id: u32,
        tool_name: Arc<str>,
    },
    SubAgent {
        agent_name: Arc<str>,
        request_id: RequestId,
    },
}

#[derive(Debug, Default)]
struct Approvals {
    pending: Vec<(u32, oneshot::Sender<ApprovalDecision>)>,
    /// Time spent waiting for the user, which the run timeout does not count.
    waited: Duration,
    waiting_since: Option<Instant>,
}

impl RunControl {
    pub(crate) fn new(thread_id: ThreadId) -> Self {
        Self {
            cancel: Signal::default(),
            thread_id,
            done: Signal::default(),
            approvals: Mutex::default(),
            next_call_id: AtomicU32::new(0),
            open: Mutex::default(),
            cleanups: Mutex::default(),
            steps: Mutex::default(),
            usage: Default::default(),
            trip: std::sync::OnceLock::new(),
        }
    }

    /// A guardrail tripped and ends the run: recorded (the first trip wins) and the run is
    /// cancelled, so that every agent, tool and sub-agent of the run stops and no tool call
    /// passes its checks any more. The run's end is then the trip, not a cancellation.
    pub(crate) fn record_trip(&self, trip: Trip) {
        let _ = self.trip.set(Box::new(trip));
        self.cancel.set();
    }

    /// The trip that ends the run, if one did.
    pub(crate) fn trip(&self) -> Option<&Trip> {
        self.trip.get().map(|t| &**t)
    }

    /// Adds reported model tokens.
    pub(crate) fn add_usage(&self, usage: crate::outcome::TokenUsage) {
        self.usage[0].fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        self.usage[1].fetch_add(usage.completion_tokens, Ordering::Relaxed);
    }

    /// The model tokens reported so far.
    pub(crate) fn usage(&self) -> crate::outcome::TokenUsage {
        crate::outcome::TokenUsage::new(
            self.usage[0].load(Ordering::Relaxed),
            self.usage[1].load(Ordering::Relaxed),
        )
    }

    /// Marks the run ended and wakes the runs waiting for it.
    pub(crate) fn mark_done(&self) {
        self.done.set();
    }

    /// Resolves once the run has ended.
    pub(crate) async fn ended(&self) {
        self.done.wait().await;
    }

    /// The next tool call id of the run (unique across all its agents, from 1).
    pub(crate) fn next_call_id(&self) -> u32 {
        self.next_call_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records a started tool call or sub-agent.
    pub(crate) fn opened(&self, owner: &RequestId, item: OpenItem) {
        lock(&self.open).push(Open {
            owner: owner.clone(),
            started: Instant::now(),
            item,
        });
    }

    /// Forgets an ended tool call (by call id) or sub-agent (by request id); returns it.
    pub(crate) fn closed_call(&self, call_id: u32) -> Option<Open> {
        let mut open = lock(&self.open);
        let i = open
            .iter()
            .rposition(|o| matches!(&o.item, OpenItem::Tool { call_id: c, .. } if *c == call_id))?;
        Some(open.remove(i))
    }

    /// Forgets an ended sub-agent.
    pub(crate) fn closed_sub_agent(&self, request_id: &RequestId) -> Option<Open> {
        let mut open = lock(&self.open);
        let i = open.iter().rposition(
            |o| matches!(&o.item, OpenItem::SubAgent { request_id: r, .. } if r == request_id),
        )?;
        Some(open.remove(i))
    }

    /// Takes what the agents of `owners` (and, transitively, the sub-agents they started) left
    /// open, newest first: what a cut-short agent never closed.
    pub(crate) fn take_open_of(&self, owners: Option<&RequestId>) -> Vec<Open> {
        let mut open = lock(&self.open);
        let Some(root) = owners else {
            let mut all = std::mem::take(&mut *open).into_vec();
            all.reverse();
            return all;
        };
        let mut owners = vec![root.clone()];
        let mut changed = true;
        while changed {
            changed = false;
            for o in open.iter() {
                if let OpenItem::SubAgent { request_id, .. } = &o.item {
                    if owners.contains(&o.owner) && !owners.contains(request_id) {
                        owners.push(request_id.clone());
                        changed = true;
                    }
                }
            }
        }
        let mut taken = Vec::new();
        open.retain(|o| {
            let mine = owners.contains(&o.owner);
            if mine {
                taken.push(o.clone());
            }
            !mine
        });
        taken.reverse();
        taken
    }

    /// Takes the tool calls `owner` itself started and never ended (an agent that returned
    /// leaves only calls whose futures it dropped), newest first.
    pub(crate) fn take_open_calls_of(&self, owner: &RequestId) -> Vec<Open> {
        let mut open = lock(&self.open);
        let mut taken = Vec::new();
        open.retain(|o| {
            let mine = o.owner == *owner && matches!(o.item, OpenItem::Tool { .. });
            if mine {
                taken.push(o.clone());
            }
            !mine
        });
        taken.reverse();
        taken
    }

    /// Registers a cleanup action.
    pub(crate) fn on_cleanup(&self, cleanup: Cleanup) {
        lock(&self.cleanups).push(cleanup);
    }

    /// The cleanup actions, newest first.
    pub(crate) fn take_cleanups(&self) -> Vec<Cleanup> {
        let mut all = std::mem::take(&mut *lock(&self.cleanups));
        all.reverse();
        all
    }

    /// Registers tool call `call_id` as waiting for the user; its decision arrives on the
    /// receiver.
    pub(crate) fn await_approval(&self, call_id: u32) -> oneshot::Receiver<ApprovalDecision> {
        let (tx, rx) = oneshot::channel();
        let mut a = lock(&self.approvals);
        a.pending.push((call_id, tx));
        a.waiting_since.get_or_insert_with(Instant::now);
        rx
    }

    /// Ends the wait of `call_id` (decided, timed out or cancelled) and books the time waited.
    pub(crate) fn end_approval(&self, call_id: u32) {
        let mut a = lock(&self.approvals);
        a.pending.retain(|(id, _)| *id != call_id);
        if a.pending.is_empty() {
            if let Some(since) = a.waiting_since.take() {
                a.waited += since.elapsed();
            }
        }
    }

    /// Delivers the user's decision; `false` if `call_id` is not waiting.
    pub(crate) fn decide(&self, call_id: u32, decision: ApprovalDecision) -> bool {
        let mut a = lock(&self.approvals);
        let Some(i) = a.pending.iter().position(|(id, _)| *id == call_id) else {
            return false;
        };
        let (_, tx) = a.pending.swap_remove(i);
        tx.send(decision).is_ok()
    }

    /// Tool calls of this run waiting for the user.
    pub(crate) fn pending_approvals(&self) -> Vec<u32> {
        lock(&self.approvals)
            .pending
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Time spent waiting for approvals so far, the current wait included.
    pub(crate) fn approval_wait(&self) -> Duration {
        let a = lock(&self.approvals);
        a.waited + a.waiting_since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}
