//! The cloudbuild server: REST API, event streams, the worker endpoint, the scheduler, and the
//! local site store.
//!
//! # Layout
//! - [`config`]: `ServerConfig` (file / environment form) and validated `Settings`.
//! - [`api`]: `router(state)`: tasks, events (SSE / WebSocket / JSON), worker protocol, sites.
//! - [`scheduler`]: push dispatch to connected workers; leases, timeouts, forced cancels.
//! - [`hub`]: wakes event followers when a log grows.
//! - [`cluster`]: several servers on one store: notices to and from the others.
//! - [`state`]: `AppState`, shared by all handlers.
//!
//! The server never runs builds itself: workers (one embedded by the `cloudbuild` binary)
//! connect over the worker protocol.

pub mod api;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod release;
pub mod scheduler;
pub mod socketio;
pub mod state;

use std::future::Future;
use std::sync::Arc;

pub use api::router;
use axum::serve::ListenerExt;
use cloudbuild_store::{RedisOptions, RedisStore, SqliteStore, Store};
pub use config::{ServerConfig, Settings};
use state::AppState;
use tokio::net::TcpListener;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot open the store: {0}")]
    Store(#[from] cloudbuild_store::StoreError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error("publish target: {0}")]
    Target(#[from] release::target::TargetError),
}

/// Creates the data directory layout and opens the configured store: SQLite in the data
/// directory, or Redis.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, ServerError> {
    let dir = &settings.data_dir;
    for sub in ["", "targets", "staging"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|source| ServerError::DataDir { path: dir.join(sub).display().to_string(), source })?;
    }
    Ok(match &settings.store {
        config::StoreChoice::Sqlite => Arc::new(SqliteStore::open(&dir.join("cloudbuild.sqlite")).await?),
        config::StoreChoice::Redis(url) => Arc::new(RedisStore::open(&RedisOptions::new(url)).await?),
    })
}

/// Serves on `listener` until `shutdown` completes, then stops streams and returns.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    let public_url = settings.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let targets_dir = settings.data_dir.join("targets");
    let targets = release::Targets::new(
        release::target::Target::new(&settings.targets.test, targets_dir.join("test"), &public_url, "test")?,
        release::target::Target::new(&settings.targets.prod, targets_dir.join("prod"), &public_url, "prod")?,
    );
    let (outbox_tx, outbox) = tokio::sync::mpsc::unbounded_channel();
    let hub = if store.notices().is_some() { hub::EventHub::with_outbox(outbox_tx) } else { hub::EventHub::default() };
    let state = Arc::new(AppState {
        targets,
        store,
        hub,
        scheduler: scheduler::Scheduler::default(),
        settings,
        public_url,
        shutdown: stop_rx.clone(),
        socketio: Default::default(),
    });
    let sched = tokio::spawn(scheduler::run(state.clone()));
    let cluster = tokio::spawn(cluster::run(state.clone(), outbox));
    let app = router(state);
    tracing::info!("listening on http://{addr}");
    let mut stop_rx_serve = stop_rx;
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // No Nagle: worker acks and event pushes are small writes that must not wait ~40 ms for
    // the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop_rx_serve.wait_for(|stopped| *stopped).await;
        })
        .await?;
    sched.abort();
    cluster.abort();
    Ok(())
}
