//! One WebSocket connection: its reader (client frames to the dispatcher) and its writer (the
//! user's frames to the socket, pings, the reaping deadlines, then a close frame with the
//! right code). The close codes are the ones of [`CloseReason`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::GatewayMetrics;
use crate::protocol::{ErrorCode, ServerFrame};
use crate::routes::Detach;
use crate::session::{Outgoing, UserSession};
use crate::slots::Slot;
use crate::Gateway;

/// Why the server closes a socket, and the close code it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// `1000`: no message either way for `idle_timeout`.
    Idle,
    /// `1001`: the server is shutting down.
    Shutdown,
    /// `1002`: the client broke the WebSocket protocol.
    ProtocolError,
    /// `1009`: a frame over the WebSocket size limit.
    MessageTooBig,
    /// `1011`: nothing received (no pong, no frame) for `ping_interval + pong_timeout`.
    PingTimeout,
    /// `4401`: the token the socket was opened with has expired; reconnect with a new one.
    TokenExpired,
}

impl CloseReason {
    fn code(self) -> u16 {
        match self {
            Self::Idle => 1000,
            Self::Shutdown => 1001,
            Self::ProtocolError => 1002,
            Self::MessageTooBig => 1009,
            Self::PingTimeout => 1011,
            Self::TokenExpired => 4401,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Shutdown => "shutdown",
            Self::ProtocolError => "protocol_error",
            Self::MessageTooBig => "message_too_big",
            Self::PingTimeout => "ping_timeout",
            Self::TokenExpired => "token_expired",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Shutdown => "server shutting down",
            Self::ProtocolError => "protocol error",
            Self::MessageTooBig => "message too big",
            Self::PingTimeout => "no pong",
            Self::TokenExpired => "token expired",
        }
    }

    fn frame(self) -> CloseFrame {
        CloseFrame {
            code: self.code(),
            reason: self.text().into(),
        }
    }
}

/// When the connection last received something and last carried a message, in milliseconds
/// since it opened (the reader writes, the writer reads).
#[derive(Debug)]
struct Activity {
    opened: Instant,
    received_ms: AtomicU64,
    message_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            received_ms: AtomicU64::new(0),
            message_ms: AtomicU64::new(0),
        }
    }
    /// Rounded up: a pong that arrives within the millisecond its ping left still counts as
    /// after it.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis() + 1).unwrap_or(u64::MAX)
    }
    fn received(&self, message: bool) {
        let now = self.now_ms();
        self.received_ms.fetch_max(now, Ordering::Relaxed);
        if message {
            self.message_ms.fetch_max(now, Ordering::Relaxed);
        }
    }
    fn sent_message(&self) {
        self.message_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }
    fn at(&self, ms: &AtomicU64) -> Instant {
        self.opened + Duration::from_millis(ms.load(Ordering::Relaxed))
    }
}

/// The timeouts a connection enforces (from the gateway's configuration).
#[derive(Debug, Clone, Copy)]
struct Reaping {
    ping_interval: Duration,
    pong_timeout: Duration,
    idle: Option<Duration>,
    /// When the token expires (then `4401`).
    expires: Instant,
}

/// What the writer's timer decides at a wake-up.
enum Due {
    /// Send a ping now.
    Ping,
    /// Close the socket.
    Close(CloseReason),
    /// Nothing yet; wake again at this instant.
    Later(Instant),
}

impl Reaping {
    /// The decision at `now`, given the connection's activity and the ping in flight.
    fn due(&self, now: Instant, activity: &Activity, ping_sent: Option<Instant>) -> Due {
        if now >= self.expires {
            return Due::Close(CloseReason::TokenExpired);
        }
        let received = activity.at(&activity.received_ms);
        if let Some(idle) = self.idle {
            if now >= activity.at(&activity.message_ms) + idle {
                return Due::Close(CloseReason::Idle);
            }
        }
        let mut next = self.expires;
        if let Some(idle) = self.idle {
            next = next.min(activity.at(&activity.message_ms) + idle);
        }
        match ping_sent {
            // A ping is out and nothing came back since it left.
            Some(sent) if received < sent => {
                if now >= sent + self.pong_timeout {
                    return Due::Close(CloseReason::PingTimeout);
                }
                Due::Later(next.min(sent + self.pong_timeout))
            }
            // Silent for a whole interval: ask.
            _ if now >= received + self.ping_interval => Due::Ping,
            _ => Due::Later(next.min(received + self.ping_interval)),
        }
    }
}

pub(crate) async fn connection(
    gw: Gateway,
    session: Arc<UserSession>,
    guard: Detach,
    slot: Slot,
    expires_at: SystemTime,
    socket: WebSocket,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    gw.inner.metrics.connection(1);
    session.wait_live().await;
    let (mut sink, mut stream) = socket.split();
    let cfg = &gw.inner.config;
    let reaping = Reaping {
        ping_interval: cfg.ping_interval,
        pong_timeout: cfg.pong_timeout,
        idle: cfg.idle_timeout,
        expires: Instant::now()
            + expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
    };
    let activity = Arc::new(Activity::new());
    let seen = Arc::clone(&activity);
    let lag_gw = gw.clone();
    let welcome = ServerFrame::Welcome {
        user_id: session.user.to_string(),
    };
    let close = gw.inner.close_connections.clone();
    // How the reader ended, for the close frame the writer sends.
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<CloseReason>();
    let writer = tokio::spawn(async move {
        let metrics = &lag_gw.inner.metrics;
        let closing = |reason: CloseReason| {
            GatewayMetrics::refused(&metrics.closed, reason.label());
            Message::Close(Some(reason.frame()))
        };
        if sink
            .send(Message::Text(welcome.to_json().into()))
            .await
            .is_err()
        {
            return;
        }
        let mut reading = true;
        let mut ping_sent: Option<Instant> = None;
        // Wakes at once, then at the next deadline `Reaping::due` names (a ping, a pong's
        // timeout, the token's expiry, idleness).
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                // The reader ended on an error: close with its code, before anything else.
                reason = &mut ended, if reading => match reason {
                    Ok(reason) => {
                        let _ = sink.send(closing(reason)).await;
                        return;
                    }
                    Err(_) => reading = false,
                },
                msg = rx.recv() => match msg {
                    Some(frame) => {
                        if sink.send(Message::Text(frame.text.as_ref().into())).await.is_err() {
                            return;
                        }
                        activity.sent_message();
                        if frame.emitted_us > 0 {
                            let lag_us = now_us().saturating_sub(frame.emitted_us);
                            metrics.emit_to_socket.observe(lag_us as f64 / 1e6);
                        }
                    }
                    // Every sender is gone: the reader ended (the client left, or shutdown).
                    None if close.is_cancelled() => break,
                    None => return,
                },
                () = close.cancelled() => {
                    // Flush what is queued (terminal events), then say goodbye.
                    while let Ok(frame) = rx.try_recv() {
                        if sink.send(Message::Text(frame.text.as_ref().into())).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
                () = &mut timer => match reaping.due(Instant::now(), &activity, ping_sent) {
                    Due::Ping => {
                        ping_sent = Some(Instant::now());
                        if sink.send(Message::Ping(Default::default())).await.is_err() {
                            return;
                        }
                        timer.as_mut().reset(Instant::now() + reaping.pong_timeout);
                    }
                    Due::Close(reason) => {
                        let _ = sink.send(closing(reason)).await;
                        return;
                    }
                    Due::Later(at) => timer.as_mut().reset(at),
                },
            }
        }
        let _ = sink.send(closing(CloseReason::Shutdown)).await;
    });
    let closing = gw.inner.close_connections.clone();
    tokio::pin!(writer);
    let mut writer_done = false;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            () = closing.cancelled() => break,
            // The writer closed the socket (reaped, or the client is gone): stop reading, so
            // that a peer that never answers the close frame does not keep the slot.
            _ = &mut writer => {
                writer_done = true;
                break;
            }
        };
        let reply = match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => {
                // A frame over the WebSocket size limit closes with 1009 (message too big).
                let text = e.to_string();
                let reason = if text.contains("too long") || text.contains("limit") {
                    CloseReason::MessageTooBig
                } else {
                    CloseReason::ProtocolError
                };
                tracing::info!(user_id = %session.user, code = reason.code(), error = %text, "closing a connection after a WebSocket error");
                let _ = ended_tx.send(reason);
                break;
            }
            Some(Ok(Message::Text(t))) => {
                seen.received(true);
                // Boxed: the dispatcher's future is large, and an idle socket should not carry
                // its space while it waits for the next frame.
                Box::pin(gw.handle_frame(&session, guard.id, t.as_str())).await
            }
            Some(Ok(Message::Binary(_))) => {
                seen.received(true);
                Some(ServerFrame::error(
                    ErrorCode::BadFrame,
                    "binary frames are not supported; send JSON text",
                ))
            }
            Some(Ok(_)) => {
                // Pings and pongs: the client is alive.
                seen.received(false);
                None
            }
        };
        if let Some(frame) = reply {
            session.send_to(guard.id, Outgoing::plain(frame.to_json()));
        }
    }
    drop(guard);
    if !writer_done {
        let _ = writer.await;
    }
    drop(slot);
    gw.inner.metrics.connection(-1);
}

/// Microseconds since the Unix epoch, as event timestamps count them.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reaping(idle: Option<u64>) -> Reaping {
        Reaping {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(5),
            idle: idle.map(Duration::from_secs),
            expires: Instant::now() + Duration::from_secs(3600),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_when_silent_and_closes_1011_when_no_pong_comes() {
        let r = reaping(None);
        let a = Activity::new();
        let start = Instant::now();
        assert!(
            matches!(r.due(start, &a, None), Due::Later(t) if t == start + Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(r.due(Instant::now(), &a, None), Due::Ping));
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            r.due(Instant::now(), &a, Some(sent)),
            Due::Close(CloseReason::PingTimeout)
        ));
        // A pong in time keeps it open.
        a.received(false);
        assert!(matches!(
            r.due(Instant::now(), &a, Some(sent)),
            Due::Later(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn closes_at_token_expiry_and_when_idle() {
        let mut r = reaping(Some(30));
        let a = Activity::new();
        tokio::time::advance(Duration::from_secs(30)).await;
        a.received(false); // pongs do not count as messages
        assert!(matches!(
            r.due(Instant::now(), &a, None),
            Due::Close(CloseReason::Idle)
        ));
        r.idle = None;
        r.expires = Instant::now();
        assert!(matches!(
            r.due(Instant::now(), &a, None),
            Due::Close(CloseReason::TokenExpired)
        ));
        assert_eq!(CloseReason::TokenExpired.code(), 4401);
        assert_eq!(CloseReason::PingTimeout.code(), 1011);
    }
}
