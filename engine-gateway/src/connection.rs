//! One WebSocket connection: its reader (client frames to the dispatcher) and its writer (the
//! user's frames to the socket, then a close frame with the right code).

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::protocol::{ErrorCode, ServerFrame};
use crate::routes::Detach;
use crate::session::{Outgoing, UserSession};
use crate::Gateway;

pub(crate) async fn connection(
    gw: Gateway,
    session: Arc<UserSession>,
    guard: Detach,
    socket: WebSocket,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    gw.inner.metrics.connection(1);
    session.wait_live().await;
    let (mut sink, mut stream) = socket.split();
    let lag_gw = gw.clone();
    let welcome = ServerFrame::Welcome {
        user_id: session.user.to_string(),
    };
    let close = gw.inner.close_connections.clone();
    // How the reader ended, for the close frame the writer sends.
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<CloseFrame>();
    let writer = tokio::spawn(async move {
        if sink
            .send(Message::Text(welcome.to_json().into()))
            .await
            .is_err()
        {
            return;
        }
        let mut reading = true;
        loop {
            tokio::select! {
                biased;
                // The reader ended on an error: close with its code, before anything else.
                frame = &mut ended, if reading => match frame {
                    Ok(frame) => {
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        return;
                    }
                    Err(_) => reading = false,
                },
                msg = rx.recv() => match msg {
                    Some(frame) => {
                        if sink.send(Message::Text(frame.text.as_ref().into())).await.is_err() {
                            return;
                        }
                        if frame.emitted_us > 0 {
                            let lag_us = now_us().saturating_sub(frame.emitted_us);
                            lag_gw.inner.metrics.emit_to_socket.observe(lag_us as f64 / 1e6);
                        }
                    }
                    None => break,
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
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1001,
                reason: "server shutting down".into(),
            })))
            .await;
    });
    let closing = gw.inner.close_connections.clone();
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            () = closing.cancelled() => break,
        };
        let reply = match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => {
                // A frame over the WebSocket size limit closes with 1009 (message too big).
                let text = e.to_string();
                let code = if text.contains("too long") || text.contains("limit") {
                    1009
                } else {
                    1002
                };
                tracing::info!(user_id = %session.user, code, error = %text, "closing a connection after a WebSocket error");
                let _ = ended_tx.send(CloseFrame {
                    code,
                    reason: if code == 1009 {
                        "message too big"
                    } else {
                        "protocol error"
                    }
                    .into(),
                });
                break;
            }
            Some(Ok(Message::Text(t))) => gw.handle_frame(&session, guard.id, t.as_str()).await,
            Some(Ok(Message::Binary(_))) => Some(ServerFrame::error(
                ErrorCode::BadFrame,
                "binary frames are not supported; send JSON text",
            )),
            Some(Ok(_)) => None,
        };
        if let Some(frame) = reply {
            session.send_to(guard.id, Outgoing::plain(frame.to_json()));
        }
    }
    drop(guard);
    let _ = writer.await;
    gw.inner.metrics.connection(-1);
}

/// Microseconds since the Unix epoch, as event timestamps count them.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
