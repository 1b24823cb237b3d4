//! Releases: immutable published builds, the per-environment current pointer, and the
//! messages of the incremental publish (manifest, plan, commit).

use serde::{Deserialize, Serialize};

use crate::task::{Environment, TaskId};
use crate::time::Timestamp;

/// One file of a build output, identified by its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative path inside the output (`assets/app.3f2a.js`).
    pub path: String,
    pub size: u64,
    /// blake3 of the content, 64 lower-case hex digits.
    pub hash: String,
    /// The bundler's manifest lists it (`.vite/manifest.json`, `asset-manifest.json`): one of
    /// the pieces of evidence [`crate::site::cache_class`] weighs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fingerprinted: bool,
}

/// `POST /api/v1/tasks/{id}/attempts/{attempt}/publish/plan`: what the worker is about to
/// publish. The answer says which contents the target does not have yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishPlan {
    pub files: Vec<ManifestFile>,
    /// The `[site]` settings of the build's `cloudbuild.toml`, served with the release.
    #[serde(default)]
    pub site: crate::site::SiteConfig,
}

/// The answer to a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanAnswer {
    /// Hashes whose content must be uploaded (`PUT …/publish/blobs/{hash}`); every other file
    /// is already in the target and is copied there without being sent again.
    pub missing: Vec<String>,
}

/// The answer to `POST …/publish/commit`: the release is complete and current.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishResult {
    /// The environment's URL (follows the current release).
    pub url: String,
    /// The URL of this release, which never changes.
    pub immutable_url: String,
    pub release: Release,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    pub skipped_files: u64,
    pub skipped_bytes: u64,
    /// Set when the release was recorded but not made current, because a newer task (this
    /// one) already has a release in the environment: the newest build wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<TaskId>,
}

/// A published build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub id: i64,
    pub env: Environment,
    pub name: String,
    pub version: String,
    pub task_id: TaskId,
    pub commit: Option<String>,
    /// Who asked for the build.
    pub requested_by: String,
    pub created_at: Timestamp,
    pub files: u64,
    pub bytes: u64,
    /// Whether it is its environment's current release.
    pub current: bool,
    /// Removed from the target by the retention setting (it can no longer be switched to).
    pub pruned: bool,
}

/// `GET /api/v1/releases?name=&env=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseList {
    pub releases: Vec<Release>,
}

/// `POST /api/v1/releases/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub name: String,
    pub env: Environment,
    /// The version to switch to (its latest build); default: the release before the current one.
    #[serde(default)]
    pub to: Option<String>,
    /// The build to switch to, by its task: one build of several of a version (a pull
    /// request's preview builds one version again and again). Not with `to`.
    #[serde(default)]
    pub task: Option<crate::task::TaskId>,
    /// Roll back through a freeze window that holds rollbacks, with this reason (admins, or
    /// the role the window names; audited).
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub gate_override: Option<String>,
}

/// The answer to a rollback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackResult {
    pub url: String,
    pub immutable_url: String,
    pub release: Release,
    /// The release that was current before.
    pub previous: Option<Release>,
}

/// Checks a blake3 hex digest.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
