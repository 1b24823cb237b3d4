//! `AppState`: what every handler shares.

use std::path::PathBuf;
use std::sync::Arc;

use cloudbuild_store::Store;
use tokio::sync::watch;

use crate::config::Settings;
use crate::hub::EventHub;
use crate::scheduler::Scheduler;
use crate::targets::Targets;

/// Shared server state; handlers get it as `State<Arc<AppState>>`.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub hub: EventHub,
    pub scheduler: Scheduler,
    pub settings: Settings,
    /// Base URL for site links, without a trailing slash.
    pub public_url: String,
    /// Turns true when the server shuts down; long-lived streams end on it.
    pub shutdown: watch::Receiver<bool>,
    /// Where each environment publishes.
    pub targets: Targets,
    /// The sites domain and the cache of release indexes.
    pub sites: crate::sites::Sites,
    /// The keys project secrets are sealed with.
    pub vault: Arc<crate::vault::Vault>,
    /// Sign-in attempts per account and per address.
    pub login_limits: crate::limits::LoginLimits,
    /// The key dashboard forms' CSRF tokens are made with (random at each start).
    pub csrf_key: [u8; 32],
    /// Whether the setup token was used (it makes one admin, once); held while setup runs.
    pub setup_spent: tokio::sync::Mutex<bool>,
}

impl AppState {
    /// Where uploads of a running publish are staged: `<data>/staging/<task>-<attempt>/`.
    pub fn staging_dir(&self) -> PathBuf {
        self.settings.data_dir.join("staging")
    }
}
