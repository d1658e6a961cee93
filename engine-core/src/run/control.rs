//! [`RunControl`]: what the engine and the run's task share about one live run — its
//! cancellation, its thread, the signal that it ended, and its tool calls waiting for the
//! user's approval.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ids::ThreadId;
use crate::multitask::ApprovalDecision;
use crate::sync::lock;

/// Shared by the engine's run table and the run's task; dropped with both.
#[derive(Debug)]
pub(crate) struct RunControl {
    pub(crate) cancel: CancellationToken,
    pub(crate) thread_id: ThreadId,
    /// Cancelled when the run's task has emitted its terminal event and released the run (or
    /// was dropped): later runs of the thread wait on it.
    pub(crate) done: CancellationToken,
    approvals: Mutex<Approvals>,
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
            cancel: CancellationToken::new(),
            thread_id,
            done: CancellationToken::new(),
            approvals: Mutex::default(),
        }
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
