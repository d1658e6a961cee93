//! [`EventSink`]: where an engine sends its user's events.

use std::sync::Arc;

use async_trait::async_trait;

use crate::event::EventEnvelope;
use crate::ids::UserId;

/// Why a sink could not deliver one event. The engine counts it as dropped; the run goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// A destination for the events of exactly ONE user.
///
/// An engine checks when it is built that its sink's [`user_id`](Self::user_id) is its own user,
/// and every envelope it hands over carries that user id. A sink implementation must only route
/// to that user's consumers; the factory's hub sink is one.
///
/// Delivery never fails a run: an error or a timeout (the engine's
/// [`delivery_timeout`](crate::EngineConfig::delivery_timeout)) counts the event as dropped,
/// and the consumer sees the gap in the sequence numbers.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// The single user this sink delivers to.
    fn user_id(&self) -> &UserId;

    /// Delivers one event, waiting (backpressure) as the sink sees fit.
    ///
    /// # Errors
    /// [`DeliveryError`] when the event could not reach every consumer.
    async fn deliver(&self, event: Arc<EventEnvelope>) -> Result<(), DeliveryError>;
}
