//! The layout of a local target's directory, beside the releases themselves:
//!
//! ```text
//! <root>/<name>/<version>/<task>/…            a release (never rewritten)
//! <root>/<name>/<version>/<task>.site.json    its record: files and [site] settings
//! <root>/<name>/current, previous             links to `<version>/<task>`
//! <root>/<name>/.releases/<task>              link to `../<version>/<task>` (a release by task)
//! <root>/.labels/<site label>                 link to `../<name>` (a site by its host label)
//! ```
//!
//! Records and the `.`-directories sit outside every release's tree, so they are never served;
//! npm names cannot start with `.`, so they never meet a project.

use std::path::{Path, PathBuf};

use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::site::{site_label, SiteConfig};
use cloudbuild_proto::task::TaskId;
use cloudbuild_proto::validate::ProjectName;
use serde::{Deserialize, Serialize};

/// The directory of label links in a local target's root.
pub const LABELS_DIR: &str = ".labels";
/// The directory of release-by-task links in a project's directory.
pub const RELEASES_DIR: &str = ".releases";

/// What is written next to a release: everything its site needs at serving time.
#[derive(Debug, Serialize, Deserialize)]
pub struct SiteRecord {
    pub site: SiteConfig,
    pub files: Vec<ManifestFile>,
}

/// The directory of a project.
pub fn project_dir(root: &Path, name: &ProjectName) -> PathBuf {
    name.path_segments().iter().fold(root.to_path_buf(), |p, s| p.join(s))
}

/// The record's path for a release directory.
pub fn record_path(release_dir: &Path) -> PathBuf {
    let mut name = release_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".site.json");
    release_dir.with_file_name(name)
}

/// Reads the record of a release directory; `None` when it has none (published before records
/// existed: the caller falls back to the store's file list).
pub async fn read_record(dir: &Path) -> std::io::Result<Option<SiteRecord>> {
    match tokio::fs::read(record_path(dir)).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the record of a release directory (atomically: a reader sees all of it or none).
pub async fn write_record(dir: &Path, record: &SiteRecord) -> std::io::Result<()> {
    let path = record_path(dir);
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let tmp = path.with_extension("json.partial");
    tokio::fs::write(&tmp, serde_json::to_vec(record).map_err(std::io::Error::other)?).await?;
    tokio::fs::rename(&tmp, &path).await
}

/// Points `<dir>/<link>` at `target` atomically: a fresh symlink renamed over the old one.
pub async fn swap_link(dir: &Path, link: &str, target: &Path) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    if tokio::fs::read_link(dir.join(link)).await.ok().as_deref() == Some(target) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{link}.{}.tmp", std::process::id()));
    let _ = tokio::fs::remove_file(&tmp).await;
    tokio::fs::symlink(target, &tmp).await?;
    tokio::fs::rename(&tmp, dir.join(link)).await
}

/// Makes a project reachable by its site label and a release by its task.
pub async fn link_release(root: &Path, name: &ProjectName, version: &str, task: TaskId) -> std::io::Result<()> {
    swap_link(&root.join(LABELS_DIR), &site_label(name), &Path::new("..").join(name.as_str())).await?;
    let releases = project_dir(root, name).join(RELEASES_DIR);
    swap_link(&releases, &task.to_string(), &Path::new("..").join(version).join(task.to_string())).await
}

/// Removes a release's record and task link (retention; the release directory goes too).
pub async fn unlink_release(root: &Path, name: &ProjectName, release_dir: &Path, task: TaskId) -> std::io::Result<()> {
    for path in [record_path(release_dir), project_dir(root, name).join(RELEASES_DIR).join(task.to_string())] {
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The project a label link points at: `../@team/admin` → `@team/admin`.
pub fn name_of_label_link(target: &Path) -> Option<ProjectName> {
    ProjectName::parse(target.to_str()?.strip_prefix("../")?).ok()
}
