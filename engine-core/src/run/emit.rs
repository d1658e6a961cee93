//! The run's [`Emitter`]: stamps every event with the run's own ids, the next sequence number
//! and a timestamp that never goes backwards, and hands it to the engine's user-bound sink.
//!
//! Emitting is synchronous when the sink decides at once (the common case): [`Emit`] is then
//! already done and awaiting it costs nothing. Only a delivery that waits (backpressure, or a
//! sibling sub-agent holding the shared emitter) becomes a boxed future. Keeping the waiting
//! part out of line keeps every future of the run path small: the run's task is moved (copied)
//! a few times by the runtime, so its size is paid on every run.

use std::future::Future;
use std::ops::DerefMut;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;

use crate::context::UserExecutionContext;
use crate::error::panic_message;
use crate::event::{AgentEvent, EventEnvelope};
use crate::ids::RequestId;
use crate::sink::{Delivery, DeliveryError, EventSink};

/// The sequence and counters of one run's events (the sink is held beside it, by
/// [`EmitterSlot`]).
pub(crate) struct Emitter {
    context: UserExecutionContext,
    delivery_timeout: Duration,
    seq: u64,
    last_timestamp_us: u64,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
}

/// Why one event did not reach the sink's consumers.
enum Fault {
    Sink(DeliveryError),
    Panic(Box<dyn std::any::Any + Send>),
    TimedOut,
}

impl Emitter {
    pub(crate) fn new(context: UserExecutionContext, delivery_timeout: Duration) -> Self {
        Self {
            context,
            delivery_timeout,
            seq: 0,
            last_timestamp_us: 0,
            delivered: 0,
            dropped: 0,
        }
    }

    /// The next envelope of the run, for the agent of `request_id`. Counted as dropped until
    /// the sink confirms it, so a delivery abandoned half-way (the run future dropped on
    /// cancellation) is never counted as delivered. The sequence number is consumed whatever
    /// happens next, so a consumer sees a lost event as a gap.
    fn stamp(&mut self, request_id: RequestId, event: AgentEvent) -> EventEnvelope {
        self.seq += 1;
        let now = now_us();
        self.last_timestamp_us = self.last_timestamp_us.max(now);
        self.dropped += 1;
        EventEnvelope {
            user_id: self.context.user_id().clone(),
            thread_id: self.context.thread_id().clone(),
            run_id: self.context.run_id().clone(),
            request_id,
            seq: self.seq,
            timestamp_us: self.last_timestamp_us,
            event,
        }
    }

    /// Counts how the delivery of event `seq` ended.
    fn record(&mut self, seq: u64, result: Result<(), Fault>) {
        match result {
            Ok(()) => {
                self.dropped -= 1;
                self.delivered += 1;
            }
            Err(Fault::Sink(error)) => {
                tracing::debug!(seq, %error, "event dropped by sink");
            }
            Err(Fault::Panic(panic)) => {
                tracing::warn!(seq, panic = %panic_message(&*panic), "event sink panicked; event dropped");
            }
            Err(Fault::TimedOut) => {
                tracing::debug!(seq, "event delivery timed out; event dropped");
            }
        }
    }
}

/// Hands one event to `sink`. Never fails: an error, panic or timeout in the sink counts the
/// event as dropped. `emitter` is the run's emitter, owned or locked; a delivery that waits
/// keeps it (and so the run's sequence order) until it ends.
fn send<'a, E>(
    sink: &'a dyn EventSink,
    mut emitter: E,
    request_id: RequestId,
    event: AgentEvent,
) -> Emit<'a>
where
    E: DerefMut<Target = Emitter> + Send + 'a,
{
    // Stamped inside the call, so the envelope is built where the sink takes it (no copy).
    let delivered = std::panic::catch_unwind(AssertUnwindSafe(|| {
        sink.deliver(emitter.stamp(request_id, event))
    }));
    let seq = emitter.seq;
    match delivered {
        Err(panic) => emitter.record(seq, Err(Fault::Panic(panic))),
        Ok(Delivery::Ready(result)) => {
            let result = result.unwrap_or(Err(DeliveryError::Closed));
            emitter.record(seq, result.map_err(Fault::Sink));
        }
        Ok(Delivery::Pending(delivery)) => {
            let limit = emitter.delivery_timeout;
            return Emit::Waiting(Box::pin(async move {
                let result = match within(limit, AssertUnwindSafe(delivery).catch_unwind()).await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(error))) => Err(Fault::Sink(error)),
                    Ok(Err(panic)) => Err(Fault::Panic(panic)),
                    Err(_) => Err(Fault::TimedOut),
                };
                emitter.record(seq, result);
            }));
        }
    }
    Emit::Done
}

/// One event on its way: done at once (delivered or dropped), or a delivery still waiting.
/// Await it before emitting the next event of the agent.
#[must_use = "an event that waits on its delivery must be awaited"]
pub(crate) enum Emit<'a> {
    /// The sink decided at once.
    Done,
    /// The delivery waits (backpressure, or the shared emitter is busy).
    Waiting(Pin<Box<dyn Future<Output = ()> + Send + 'a>>),
}

impl Future for Emit<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Self::Done => Poll::Ready(()),
            Self::Waiting(delivery) => delivery.as_mut().poll(cx),
        }
    }
}

/// The run's emitter as one agent of the run holds it, with the engine's sink: owned while
/// only the top-level agent runs (no lock per event), shared behind an async lock while
/// sub-agents run, so every agent of the run draws from one sequence and events reach the sink
/// in sequence order.
pub(crate) struct EmitterSlot {
    sink: Arc<dyn EventSink>,
    state: Slot,
}

enum Slot {
    Own(Emitter),
    Shared(Arc<tokio::sync::Mutex<Emitter>>),
    /// Only while switching between the two.
    Moving,
}

impl EmitterSlot {
    /// The top-level agent's slot: owns the run's emitter.
    pub(crate) fn new(sink: Arc<dyn EventSink>, emitter: Emitter) -> Self {
        Self {
            sink,
            state: Slot::Own(emitter),
        }
    }

    /// Sends one event of the agent of `request_id`.
    pub(crate) fn emit(&mut self, request_id: &RequestId, event: AgentEvent) -> Emit<'_> {
        let sink = &*self.sink;
        match &mut self.state {
            Slot::Own(e) => send(sink, e, request_id.clone(), event),
            Slot::Shared(m) => match m.try_lock() {
                Ok(guard) => send(sink, guard, request_id.clone(), event),
                Err(_) => {
                    let request_id = request_id.clone();
                    let m = &**m;
                    Emit::Waiting(Box::pin(async move {
                        send(sink, m.lock().await, request_id, event).await;
                    }))
                }
            },
            Slot::Moving => unreachable!("the emitter is always put back"),
        }
    }

    /// A slot for a sub-agent sharing this one's emitter (this slot becomes shared if it was
    /// owned).
    pub(crate) fn share(&mut self) -> EmitterSlot {
        if let Slot::Own(_) = self.state {
            let Slot::Own(e) = std::mem::replace(&mut self.state, Slot::Moving) else {
                unreachable!("checked above")
            };
            self.state = Slot::Shared(Arc::new(tokio::sync::Mutex::new(e)));
        }
        match &self.state {
            Slot::Shared(m) => EmitterSlot {
                sink: Arc::clone(&self.sink),
                state: Slot::Shared(Arc::clone(m)),
            },
            Slot::Own(_) | Slot::Moving => unreachable!("made shared above"),
        }
    }

    /// Owns the emitter again once no sub-agent holds it (a no-op while one does).
    pub(crate) fn reclaim(&mut self) {
        if let Slot::Shared(m) = &self.state {
            if Arc::strong_count(m) == 1 {
                let Slot::Shared(m) = std::mem::replace(&mut self.state, Slot::Moving) else {
                    unreachable!("checked above")
                };
                match Arc::try_unwrap(m) {
                    Ok(mutex) => self.state = Slot::Own(mutex.into_inner()),
                    Err(m) => self.state = Slot::Shared(m),
                }
            }
        }
    }

    /// The owned emitter, for the run's last events; reclaims it first (every sub-agent has
    /// ended or been dropped by then).
    pub(crate) async fn last(&mut self) -> EmitterGuard<'_> {
        self.reclaim();
        let sink = &*self.sink;
        let emitter = match &mut self.state {
            Slot::Own(e) => Held::Own(e),
            Slot::Shared(m) => Held::Locked(m.lock().await),
            Slot::Moving => unreachable!("the emitter is always put back"),
        };
        EmitterGuard { sink, emitter }
    }
}

/// The run's emitter for its last events, with the sink.
pub(crate) struct EmitterGuard<'a> {
    sink: &'a dyn EventSink,
    emitter: Held<'a>,
}

enum Held<'a> {
    Own(&'a mut Emitter),
    Locked(tokio::sync::MutexGuard<'a, Emitter>),
}

impl EmitterGuard<'_> {
    /// Sends one event of the top-level agent.
    pub(crate) fn emit(&mut self, event: AgentEvent) -> Emit<'_> {
        let emitter: &mut Emitter = match &mut self.emitter {
            Held::Own(e) => e,
            Held::Locked(g) => g,
        };
        let request_id = emitter.context.request_id().clone();
        send(self.sink, emitter, request_id, event)
    }
}

impl std::ops::Deref for EmitterGuard<'_> {
    type Target = Emitter;
    fn deref(&self) -> &Emitter {
        match &self.emitter {
            Held::Own(e) => e,
            Held::Locked(g) => g,
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

/// Microseconds since the Unix epoch, from the real-time clock (0 for a clock set before it).
/// Read once per event: on Linux straight from the vDSO, without the checked `SystemTime`
/// subtraction std makes (a third of an event's cost in the stamp).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn now_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000;
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

/// Microseconds since the Unix epoch (0 for a clock set before it).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            d.as_secs()
                .saturating_mul(1_000_000)
                .saturating_add(u64::from(d.subsec_micros()))
        })
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    /// The event clock reads the same real time as std, in microseconds.
    #[test]
    fn now_us_is_the_wall_clock_in_microseconds() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let ours = super::now_us();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let lo = u64::try_from(before.as_micros()).unwrap();
        let hi = u64::try_from(after.as_micros()).unwrap();
        assert!(lo <= ours && ours <= hi, "{lo} <= {ours} <= {hi}");
    }
}
