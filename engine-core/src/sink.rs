//! [`EventSink`]: where an engine sends its user's events.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::context::UserExecutionContext;
use crate::event::EventEnvelope;
use crate::ids::UserId;
use crate::outcome::{RunEnd, RunOutcome};

/// Why a sink could not deliver one event. The engine counts it as dropped; the run goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// Nobody is subscribed to this user's events.
    #[error("no subscriber for user {0}")]
    NoSubscriber(UserId),
    /// A subscriber's buffer stayed full past the backpressure deadline.
    #[error("subscriber buffer full past the backpressure deadline ({dropped} of {subscribers} subscribers missed the event)")]
    Backpressure {
        /// Subscribers that missed the event.
        dropped: usize,
        /// Subscribers the event was meant for.
        subscribers: usize,
    },
    /// The sink is closed (for example after the factory shut down).
    #[error("sink closed")]
    Closed,
    /// Any other failure reported by a custom sink.
    #[error("delivery failed: {0}")]
    Failed(String),
}

/// The result of [`EventSink::deliver`]: already decided (no allocation, the common case), or
/// a future that finishes the delivery (for example while waiting on a full buffer).
#[must_use = "a delivery does nothing unless awaited"]
#[non_exhaustive]
pub enum Delivery<'a> {
    /// Decided without waiting.
    Ready(Option<Result<(), DeliveryError>>),
    /// Still in progress.
    Pending(Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>),
}

impl<'a> Delivery<'a> {
    /// A delivery that is already decided.
    pub fn ready(result: Result<(), DeliveryError>) -> Self {
        Self::Ready(Some(result))
    }
    /// A delivery finished by `fut`.
    pub fn pending(fut: impl Future<Output = Result<(), DeliveryError>> + Send + 'a) -> Self {
        Self::Pending(Box::pin(fut))
    }
}

impl std::fmt::Debug for Delivery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Self::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

impl Future for Delivery<'_> {
    type Output = Result<(), DeliveryError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(DeliveryError::Closed))),
            Self::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// A run about to emit its terminal event, as [`EventSink::run_ending`] sees it: how it ended
/// and what its terminal event will carry.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunEnding<'a> {
    /// The agent that answered (the terminal event's `agent_name`): the run's agent or
    /// pipeline, or the last agent the run was handed off to.
    pub agent_name: &'a str,
    /// How it ended, with its answer or error.
    pub end: &'a RunEnd,
    /// The terminal event's sequence number (every earlier event was delivered or dropped).
    pub seq: u64,
    /// The terminal event's `duration_ms`: from acceptance to the end.
    pub duration_ms: u64,
}

/// A destination for the events of exactly ONE user.
///
/// An engine checks when it is built that its sink's [`user_id`](Self::user_id) is its own user,
/// and every envelope it hands over carries that user id. A sink implementation must only route
/// to that user's consumers; the factory's hub sink is one.
///
/// Delivery never fails a run: an error, a panic or a timeout (the engine's
/// [`delivery_timeout`](crate::EngineConfig::delivery_timeout)) counts the event as dropped,
/// and the consumer sees the gap in the sequence numbers.
///
/// ```
/// use std::sync::Mutex;
/// use engine_core::{Delivery, EventEnvelope, EventSink, UserId};
///
/// /// Keeps one user's events in memory.
/// struct Recorder { user: UserId, events: Mutex<Vec<EventEnvelope>> }
///
/// impl EventSink for Recorder {
///     fn user_id(&self) -> &UserId { &self.user }
///     fn deliver(&self, event: EventEnvelope) -> Delivery<'_> {
///         self.events.lock().unwrap().push(event);
///         Delivery::ready(Ok(()))
///     }
/// }
/// ```
pub trait EventSink: Send + Sync + 'static {
    /// The single user this sink delivers to.
    fn user_id(&self) -> &UserId;

    /// Delivers one event: decide at once with [`Delivery::ready`], or return
    /// [`Delivery::pending`] to wait (backpressure).
    ///
    /// The sink takes the envelope by value: the engine keeps no copy, so a sink with one
    /// consumer can move it on without an allocation, and one with several decides how to share
    /// it.
    fn deliver(&self, event: EventEnvelope) -> Delivery<'_>;

    /// The engine accepted a run of this sink's user: called once per run, before any of its
    /// events, with the agent (or pipeline) name and the input. A durable sink records the run
    /// here. Default: nothing. Must not block: it runs on the caller of `spawn`/`execute`.
    fn run_accepted(&self, context: &UserExecutionContext, agent_name: &str, input: &str) {
        let _ = (context, agent_name, input);
    }

    /// The run has ended as `ending` says and its terminal event (sequence number
    /// `ending.seq`) is about to be emitted. The engine awaits the returned delivery (without
    /// the delivery timeout: the sink bounds its own wait) before it emits the terminal event,
    /// so a sink that must record the end before anyone is told of it (a store with `sync`
    /// durability) does it here. Default: ready.
    fn run_ending(&self, context: &UserExecutionContext, ending: &RunEnding<'_>) -> Delivery<'_> {
        let _ = (context, ending);
        Delivery::ready(Ok(()))
    }

    /// The run's terminal event was emitted; the engine awaits the returned delivery before the
    /// run's handle (or `execute`) resolves, so a durable sink can make the run's terminal
    /// record committed by then. `outcome` is the one the caller gets. Default: ready.
    fn run_ended(&self, context: &UserExecutionContext, outcome: &RunOutcome) -> Delivery<'_> {
        let _ = (context, outcome);
        Delivery::ready(Ok(()))
    }
}
