//! `AppState`: what every handler shares.

use std::path::PathBuf;
use std::sync::Arc;

use cloudbuild_store::Store;
use tokio::sync::watch;

use crate::config::Settings;
use crate::hub::EventHub;
use crate::scheduler::Scheduler;

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
}

impl AppState {
    /// Where published releases are kept: `<data>/releases/<name>/<version>-<task>/`.
    pub fn releases_dir(&self) -> PathBuf {
        self.settings.data_dir.join("releases")
    }

    /// Where the current release of each site is linked: `<data>/sites/<env>/<name>`.
    pub fn sites_dir(&self) -> PathBuf {
        self.settings.data_dir.join("sites")
    }

    /// Where uploads of a running attempt are staged before the release switch.
    pub fn staging_dir(&self) -> PathBuf {
        self.settings.data_dir.join("staging")
    }
}
