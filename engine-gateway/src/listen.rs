//! The accept loop: each TCP connection served by hyper's HTTP/1 connection with a timer (so
//! the header-read timeout cuts off slow clients), upgrades allowed, the peer address put in
//! every request, and graceful shutdown (stop accepting, close the gateway, let in-flight HTTP
//! requests finish within the shutdown deadline).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::Gateway;

pub(crate) async fn serve_http(
    gw: &Gateway,
    listener: tokio::net::TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = gw.router();
    // Every HTTP connection's task (until it is upgraded or ends), and the signal that asks
    // them to finish their request in flight and close.
    let http = TaskTracker::new();
    let stop = CancellationToken::new();
    let header_timeout = gw.inner.config.header_read_timeout;
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(&e).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        http.spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    gw.shutdown().await;
    let deadline = gw.inner.config.factory.shutdown_deadline();
    stop.cancel();
    http.close();
    if tokio::time::timeout(deadline, http.wait()).await.is_err() {
        tracing::warn!("HTTP requests still in flight at the shutdown deadline");
    }
    Ok(())
}

/// An accept that failed: a connection reset before it was taken is nothing; anything else
/// (out of file descriptors above all) is logged, and accepting pauses briefly so the loop does
/// not spin while the condition lasts.
async fn accept_error(e: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "cannot accept a connection (out of file descriptors?); pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
