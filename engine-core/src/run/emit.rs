//! The run's [`Emitter`]: stamps every event with the run's own ids, the next sequence number
//! and a timestamp that never goes backwards, and hands it to the engine's user-bound sink.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;

use crate::context::UserExecutionContext;
use crate::error::panic_message;
use crate::event::{AgentEvent, EventEnvelope};
use crate::ids::RequestId;
use crate::sink::EventSink;

/// Emits the events of one run, in order, to the engine's user-bound sink.
pub(crate) struct Emitter {
    sink: Arc<dyn EventSink>,
    context: UserExecutionContext,
    delivery_timeout: Duration,
    seq: u64,
    last_timestamp_us: u64,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
}

impl Emitter {
    pub(crate) fn new(
        sink: Arc<dyn EventSink>,
        context: UserExecutionContext,
        delivery_timeout: Duration,
    ) -> Self {
        Self {
            sink,
            context,
            delivery_timeout,
            seq: 0,
            last_timestamp_us: 0,
            delivered: 0,
            dropped: 0,
        }
    }

    /// Sends one event of the top-level agent.
    pub(crate) async fn emit(&mut self, event: AgentEvent) {
        let request_id = self.context.request_id().clone();
        self.emit_for(request_id, event).await;
    }

    /// Sends one event of the agent of `request_id`. Never fails: an error, panic or timeout in
    /// the sink counts the event as dropped, and the sequence number is consumed so the
    /// consumer sees the gap.
    pub(crate) async fn emit_for(&mut self, request_id: RequestId, event: AgentEvent) {
        self.seq += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last_timestamp_us = self.last_timestamp_us.max(now);
        let envelope = Arc::new(EventEnvelope {
            user_id: self.context.user_id().clone(),
            thread_id: self.context.thread_id().clone(),
            run_id: self.context.run_id().clone(),
            request_id,
            seq: self.seq,
            timestamp_us: self.last_timestamp_us,
            event,
        });
        // Counted as dropped until the sink confirms, so a delivery abandoned half-way (the run
        // future dropped on cancellation) is never counted as delivered.
        self.dropped += 1;
        let sink = &self.sink;
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| sink.deliver(envelope)));
        let outcome = match started {
            Ok(delivery) => {
                within(
                    self.delivery_timeout,
                    AssertUnwindSafe(delivery).catch_unwind(),
                )
                .await
            }
            Err(panic) => Ok(Err(panic)),
        };
        match outcome {
            Ok(Ok(Ok(()))) => {
                self.dropped -= 1;
                self.delivered += 1;
            }
            Ok(Ok(Err(error))) => {
                tracing::debug!(seq = self.seq, %error, "event dropped by sink");
            }
            Ok(Err(panic)) => {
                tracing::warn!(seq = self.seq, panic = %panic_message(&*panic), "event sink panicked; event dropped");
            }
            Err(_) => {
                tracing::debug!(seq = self.seq, "event delivery timed out; event dropped");
            }
        }
    }
}

/// The run's emitter as one agent of the run holds it: owned while only the top-level agent
/// runs (no lock per event), shared behind an async lock while sub-agents run, so every agent of
/// the run draws from one sequence and events reach the sink in sequence order.
pub(crate) enum EmitterSlot {
    Own(Emitter),
    Shared(Arc<tokio::sync::Mutex<Emitter>>),
    /// Only while switching between the two.
    Moving,
}

impl EmitterSlot {
    /// Sends one event of the agent of `request_id`.
    pub(crate) async fn emit(&mut self, request_id: &RequestId, event: AgentEvent) {
        match self {
            Self::Own(e) => e.emit_for(request_id.clone(), event).await,
            Self::Shared(m) => m.lock().await.emit_for(request_id.clone(), event).await,
            Self::Moving => unreachable!("the emitter is always put back"),
        }
    }

    /// A shared handle for sub-agents (the slot becomes shared if it was owned).
    pub(crate) fn share(&mut self) -> Arc<tokio::sync::Mutex<Emitter>> {
        if let Self::Own(_) = self {
            let Self::Own(e) = std::mem::replace(self, Self::Moving) else {
                unreachable!("checked above")
            };
            *self = Self::Shared(Arc::new(tokio::sync::Mutex::new(e)));
        }
        match self {
            Self::Shared(m) => Arc::clone(m),
            Self::Own(_) | Self::Moving => unreachable!("made shared above"),
        }
    }

    /// Owns the emitter again once no sub-agent holds it (a no-op while one does).
    pub(crate) fn reclaim(&mut self) {
        if let Self::Shared(m) = self {
            if Arc::strong_count(m) == 1 {
                let Self::Shared(m) = std::mem::replace(self, Self::Moving) else {
                    unreachable!("checked above")
                };
                match Arc::try_unwrap(m) {
                    Ok(mutex) => *self = Self::Own(mutex.into_inner()),
                    Err(m) => *self = Self::Shared(m),
                }
            }
        }
    }

    /// The owned emitter, for the run's last events; reclaims it first (every sub-agent has
    /// ended or been dropped by then).
    pub(crate) async fn last(&mut self) -> EmitterGuard<'_> {
        self.reclaim();
        match self {
            Self::Own(e) => EmitterGuard::Own(e),
            Self::Shared(m) => EmitterGuard::Locked(m.lock().await),
            Self::Moving => unreachable!("the emitter is always put back"),
        }
    }
}

/// Access to the emitter for the run's last events.
pub(crate) enum EmitterGuard<'a> {
    Own(&'a mut Emitter),
    Locked(tokio::sync::MutexGuard<'a, Emitter>),
}

impl std::ops::Deref for EmitterGuard<'_> {
    type Target = Emitter;
    fn deref(&self) -> &Emitter {
        match self {
            Self::Own(e) => e,
            Self::Locked(g) => g,
        }
    }
}

impl std::ops::DerefMut for EmitterGuard<'_> {
    fn deref_mut(&mut self) -> &mut Emitter {
        match self {
            Self::Own(e) => e,
            Self::Locked(g) => g,
        }
    }
}

/// Like `tokio::time::timeout`, but polls `fut` once first and only arms the timer if it is not
/// ready: most deliveries complete at once, and reading the clock for each would cost more
/// than the delivery.
pub(crate) async fn within<F: std::future::Future>(
    limit: Duration,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(out) => Ok(out),
        std::task::Poll::Pending => tokio::time::timeout(limit, fut).await,
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
