//! [`guarded`]: an agent or a tool call under its time limit and the run's cancellation.
//!
//! Most agents and tools of a quick run end in their first poll; a timer and a cancellation
//! waiter are needed only by one that waits. So the first poll is made bare, and only a
//! future that is not ready gets the timer and the waiter, boxed together (one small
//! allocation for a call that waits anyway). Keeping them out of line keeps the run's task
//! small: the runtime copies a task's future when it moves it, and a run's future holds its
//! agent call, which holds its tool calls.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::run::control::Signal;

/// How a guarded future ended.
pub(crate) enum Guarded<T> {
    /// It returned.
    Done(T),
    /// The run was cancelled first.
    Cancelled,
    /// Its time ran out first.
    TimedOut,
}

impl<T> Guarded<T> {
    /// The same ending, with the output mapped.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Guarded<U> {
        match self {
            Self::Done(out) => Guarded::Done(f(out)),
            Self::Cancelled => Guarded::Cancelled,
            Self::TimedOut => Guarded::TimedOut,
        }
    }
}

/// Polls `fut` until it returns, `cancel` is set, or `limit` (none: no limit) plus
/// `extension()` has passed since it first waited. `extension` is read again when the time is up (a run's limit grows
/// by the time its tool calls waited for the user's approval). Biased toward `fut`: a future
/// that sees the cancellation itself and returns is taken as returned.
pub(crate) async fn guarded<F: Future>(
    fut: F,
    cancel: &Signal,
    limit: Option<Duration>,
    extension: impl Fn() -> Duration,
) -> Guarded<F::Output> {
    let mut fut = pin!(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    if let Poll::Ready(out) = first {
        return Guarded::Done(out);
    }
    Box::pin(wait(fut, cancel, limit, extension)).await
}

/// The waiting part of [`guarded`], after a first poll that was not ready (that poll
/// registered `fut`'s wake-up: the first round here does not poll it again).
async fn wait<F: Future>(
    mut fut: std::pin::Pin<&mut F>,
    cancel: &Signal,
    limit: Option<Duration>,
    extension: impl Fn() -> Duration,
) -> Guarded<F::Output> {
    let armed = Instant::now();
    let deadline = |limit| armed + limit + extension();
    let mut sleep = pin!(limit.map(|limit| tokio::time::sleep_until(deadline(limit))));
    let cancelled = pin!(cancel.wait());
    let mut cancelled = cancelled;
    let mut polled = true;
    std::future::poll_fn(|cx| {
        if !std::mem::take(&mut polled) {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Guarded::Done(out));
            }
        }
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Guarded::Cancelled);
        }
        if let (Some(limit), Some(mut sleep)) = (limit, sleep.as_mut().as_pin_mut()) {
            while sleep.as_mut().poll(cx).is_ready() {
                let deadline = deadline(limit);
                if deadline <= Instant::now() {
                    return Poll::Ready(Guarded::TimedOut);
                }
                sleep.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    })
    .await
}
