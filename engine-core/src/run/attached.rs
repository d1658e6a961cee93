//! [`Attached`]: a run awaited by the caller that started it
//! ([`UserExecutionEngine::execute`](crate::UserExecutionEngine::execute)).
//!
//! The run is polled in the caller's task instead of a task of its own: no task to allocate,
//! schedule and join, no outcome handed across a join handle. The caller's guarantee stays
//! that of a spawned run: if the caller stops waiting (its future is dropped, a `select!`
//! takes another branch, a timeout fires), the run is moved, as it is, into a task of its
//! own and still finishes and emits its terminal event. That move is why the run's future is
//! boxed: a pinned future can only change hands behind a pointer.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{panic_message, EngineError};
use crate::ids::RunId;
use crate::outcome::RunOutcome;

/// A run's future, polled by its caller until it ends or the caller stops waiting.
pub(crate) struct Attached<F>
where
    F: Future<Output = RunOutcome> + Send + 'static,
{
    /// `None` once the run has ended here (or was handed to a task).
    run: Option<Pin<Box<F>>>,
    /// Where the run goes on if the caller stops waiting.
    runtime: tokio::runtime::Handle,
    run_id: RunId,
}

impl<F> Attached<F>
where
    F: Future<Output = RunOutcome> + Send + 'static,
{
    pub(crate) fn new(runtime: tokio::runtime::Handle, run_id: RunId, run: F) -> Self {
        Self {
            run: Some(Box::pin(run)),
            runtime,
            run_id,
        }
    }

    fn aborted(&self, reason: String) -> EngineError {
        EngineError::RunAborted {
            run_id: self.run_id.clone(),
            reason,
        }
    }
}

impl<F> Future for Attached<F>
where
    F: Future<Output = RunOutcome> + Send + 'static,
{
    type Output = Result<RunOutcome, EngineError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(run) = this.run.as_mut() else {
            return Poll::Ready(Err(this.aborted("the run was already awaited".into())));
        };
        // A unit of the caller's task budget per poll, as tokio's own resources take: a caller
        // awaiting run after run that each end without waiting still yields to its runtime's
        // other tasks (a subscriber reading the events, say) every so often.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        coop.made_progress();
        // As a runtime does for a task: a panic of the run's own machinery (the agent's panics
        // are caught inside the run) ends this run, not the caller.
        match std::panic::catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(outcome)) => {
                this.run = None;
                Poll::Ready(Ok(outcome))
            }
            Err(panic) => {
                let reason = format!("the run panicked: {}", panic_message(&*panic));
                let run = this.run.take();
                // Its drop marks the run done; a second panic there is not the caller's.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(run)));
                Poll::Ready(Err(this.aborted(reason)))
            }
        }
    }
}

impl<F> Drop for Attached<F>
where
    F: Future<Output = RunOutcome> + Send + 'static,
{
    /// The caller stopped waiting before the run ended: the run goes on in a task of its own
    /// (dropped at once, and marked done, if the runtime is shutting down).
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            drop(self.runtime.spawn(run));
        }
    }
}
