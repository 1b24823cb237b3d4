//! The HTTP listener: accepts connections up to `limits.max_connections` (more wait in the
//! kernel's listen queue), gives each `limits.header_read_timeout_secs` to send a request's
//! headers (slow-header clients, as in slowloris, are disconnected), serves HTTP/1.1 with
//! upgrades (WebSockets, socket.io) and HTTP/2 through hyper-util, and shuts down gracefully.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How long requests in flight get to finish once the server stops (event streams end on the
/// shutdown signal by themselves).
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    header_read_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            () = stopped(stop.clone()) => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, usually: wait for some to close.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(stop.clone()) => break,
        };
        // No Nagle: worker acks and event pushes are small writes that must not wait ~40 ms
        // for the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        // The peer's address, for who-did-what records (`ConnectInfo`, as axum's own server
        // gives), on each request of the connection.
        let app = tower::ServiceExt::map_request(app.clone(), move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req
        });
        let service = TowerToHyperService::new(app);
        let connection =
            graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections were still open {} s after shutdown", DRAIN.as_secs());
    }
}

/// Completes when `stop` turns true (its guard is not held across an await).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
