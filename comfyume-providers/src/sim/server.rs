//! Listening and connection handling: our own accept loop (so `kill()` can really cut every open
//! connection), the cold-start delay, and the load-balancer mode that sends each request and each
//! WebSocket connection to the next replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use super::replica::Shared;

/// Which replica answers a request.
pub(crate) enum Routing {
    /// Always this replica (one port per replica).
    Fixed(Router),
    /// The next replica in turn, for every request (serverless routing without affinity).
    RoundRobin {
        /// One router per replica.
        routers: Vec<Router>,
        /// The next one to use.
        next: AtomicUsize,
    },
}

impl Routing {
    fn pick(&self) -> Router {
        match self {
            Routing::Fixed(r) => r.clone(),
            Routing::RoundRobin { routers, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % routers.len().max(1);
                routers[i].clone()
            }
        }
    }
}

/// Accepts connections until the worker is killed or shut down; dropping the listener then refuses
/// new connections.
pub(crate) async fn serve(listener: TcpListener, routing: Arc<Routing>, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.kill.cancelled() => break,
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let (routing, shared2) = (routing.clone(), shared.clone());
                shared.tracker.spawn(connection(stream, routing, shared2));
            }
            Err(e) => {
                tracing::debug!(error = %e, "sim-worker accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn connection(stream: TcpStream, routing: Arc<Routing>, shared: Arc<Shared>) {
    let ready = tokio::time::Instant::from_std(shared.ready_at);
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = routing.pick();
        async move {
            // Cold start: the connection is open but nothing answers yet.
            tokio::time::sleep_until(ready).await;
            router.oneshot(req.map(Body::new)).await
        }
    });
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // Dropping the connection future closes the socket at once, mid-request or not.
        _ = shared.kill.cancelled() => {}
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shared.kill.cancelled() => {}
            }
        }
    }
}
