//! The cloudbuild server: REST API, event streams, the worker endpoint, the scheduler, and the
//! local site store.
//!
//! # Layout
//! - [`config`]: `ServerConfig` (file / environment form) and validated `Settings`.
//! - [`domain`]: the services (callers, tasks, event following, workers, releases); no HTTP.
//! - [`api`]: the HTTP adapter, `router(state)`: thin handlers over the services.
//! - [`socketio`]: the original socket.io protocol, another adapter over the services.
//! - [`scheduler`]: push dispatch to connected workers; leases, timeouts, forced cancels.
//! - [`targets`]: where releases are stored (local directory or S3) and their public URLs.
//! - [`sites`]: serving local sites by host (`<site>.<env>.<domain>`) or by path.
//! - [`hub`]: wakes event followers when a log grows.
//! - [`cluster`]: several servers on one store: notices to and from the others.
//! - [`state`]: `AppState`, shared by all handlers.
//!
//! The server never runs builds itself: workers (one embedded by the `cloudbuild` binary)
//! connect over the worker protocol.

pub mod api;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod scheduler;
pub mod secrets;
pub mod sites;
pub mod socketio;
pub mod state;
pub mod targets;
pub mod uploads;
pub mod vault;
pub mod web;

use std::future::Future;
use std::sync::Arc;

pub use api::router;
use cloudbuild_proto::task::Environment;
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
    Target(#[from] targets::TargetError),
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
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

/// The URLs of an environment's local sites: by host when a sites domain is set, else by path;
/// `prod` adds the custom domains.
fn site_urls(settings: &Settings, public_url: &str, env: Environment) -> targets::urls::SiteUrls {
    let uri: Option<axum::http::Uri> = public_url.parse().ok();
    let scheme = settings
        .sites_scheme
        .clone()
        .or_else(|| uri.as_ref().and_then(|u| u.scheme_str().map(str::to_owned)))
        .unwrap_or_else(|| "http".into());
    let port = settings.sites_port.or_else(|| uri.as_ref().and_then(|u| u.port_u16()));
    let urls = match &settings.sites_domain {
        Some(domain) => targets::urls::SiteUrls::by_host(&scheme, domain, port, env),
        None => targets::urls::SiteUrls::by_path(public_url, env),
    };
    if env != Environment::Prod {
        return urls;
    }
    urls.with_custom_domains(settings.custom_domains.iter().map(|(d, p)| (p, d.as_str())), &scheme, port)
}

/// The shared state of a server reached at `public_url`: both targets, the sites, the hub and
/// the scheduler. `shutdown` turns true when the server stops. Also returns the notices this
/// server sends to the others on its store (see [`cluster::run`]).
pub fn app_state(
    settings: Settings,
    store: Arc<dyn Store>,
    public_url: String,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(Arc<AppState>, tokio::sync::mpsc::UnboundedReceiver<cloudbuild_store::Notice>), ServerError> {
    let targets_dir = settings.data_dir.join("targets");
    let urls = |env| site_urls(&settings, &public_url, env);
    let targets = targets::Targets::new(
        targets::Target::new(&settings.targets.test, targets_dir.join("test"), urls(Environment::Test), "test")?,
        targets::Target::new(&settings.targets.prod, targets_dir.join("prod"), urls(Environment::Prod), "prod")?,
        // Each pull request's preview is this target under `pr-<N>/` (Targets::get).
        targets::Target::new(
            &settings.targets.preview,
            targets_dir.join("preview"),
            urls(Environment::Preview(0)),
            "preview",
        )?,
    );
    let sites = sites::Sites {
        domain: settings.sites_domain.clone(),
        own_host: public_url.parse::<axum::http::Uri>().ok().and_then(|u| u.host().map(str::to_ascii_lowercase)),
        custom_domains: settings.custom_domains.iter().cloned().collect(),
        indexes: Default::default(),
        bodies: Default::default(),
        labels: Default::default(),
    };
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|source| ServerError::DataDir { path: settings.data_dir.display().to_string(), source })?;
    let vault = Arc::new(vault::Vault::open_or_create(&settings.data_dir.join("secrets.key"))?);
    let mut csrf_key = [0u8; 32];
    getrandom::fill(&mut csrf_key).map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
    let (outbox_tx, outbox) = tokio::sync::mpsc::unbounded_channel();
    let hub = if store.notices().is_some() { hub::EventHub::with_outbox(outbox_tx) } else { hub::EventHub::default() };
    let state = Arc::new(AppState {
        vault,
        targets,
        store,
        hub,
        scheduler: scheduler::Scheduler::default(),
        settings,
        public_url,
        shutdown,
        sites,
        login_limits: Default::default(),
        setup_spent: Default::default(),
        csrf_key,
    });
    Ok((state, outbox))
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
    let (state, outbox) = app_state(settings, store, public_url, stop_rx.clone())?;
    if let Err(e) = domain::projects::adopt_existing(&state).await {
        tracing::error!("cannot register the projects of earlier tasks: {e}");
    }
    let sched = tokio::spawn(scheduler::run(state.clone()));
    let cluster = tokio::spawn(cluster::run(state.clone(), outbox));
    let schedules = tokio::spawn(domain::schedules::run(state.clone()));
    let statuses = tokio::spawn(domain::statuses::run(state.clone()));
    let previews = tokio::spawn(domain::previews::run(state.clone()));
    let gates = tokio::spawn(domain::freeze::run(state.clone()));
    let approvals = tokio::spawn(domain::approvals::run(state.clone()));
    let app = router(state.clone());
    tracing::info!("listening on http://{addr}");
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let s = &state.settings;
    listener::serve(listener, app, s.max_connections, s.header_read_timeout, stop_rx).await;
    sched.abort();
    cluster.abort();
    schedules.abort();
    statuses.abort();
    previews.abort();
    gates.abort();
    approvals.abort();
    Ok(())
}
