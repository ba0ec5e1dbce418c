//! Accepting connections: HTTP/1.1 (with WebSocket upgrades) through hyper, with a limit on how long a
//! client may take to send a request's headers, so that a client trickling its headers (slow-loris)
//! cannot hold a connection open. Request bodies are limited in the router (see [`crate::router`]).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `app` on `listener` until `signal` resolves, then stops accepting and waits for the open
/// requests to finish (idle keep-alive connections are closed at once; upgraded WebSockets are the
/// application's to close). A client that has not sent a whole request head within `header_timeout` of
/// starting one is disconnected.
pub(crate) async fn serve_http1(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let (stopping, connections) = (CancellationToken::new(), TaskTracker::new());
    let mut signal = std::pin::pin!(signal);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        // Small writes (event frames, short JSON answers) must not wait for Nagle + delayed ACK (~40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(tcp), service).with_upgrades();
        let stopping = stopping.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stopping.cancelled() => {
                    // Finish the request in flight, then close (an idle connection closes at once).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                // Timeouts, resets and malformed requests end here; the client has gone.
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// After a failed accept: per-connection errors are the client's (it went away before we took it);
/// anything else (out of file descriptors) is logged and given a moment to pass, as axum does.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
