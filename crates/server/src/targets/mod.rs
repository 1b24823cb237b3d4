//! Publish targets: where an environment's releases live, how its current release is
//! switched, and the public URLs of what they hold.
//!
//! - [`layout`]: the local target's directory (records, label and task links).
//! - [`urls`]: site, release and file URLs, by host, by path or under a CDN.
//! - [`headers`]: the Content-Type of published files.
//!
//! Keys are `<name>/<version>/<task>/<path>` (a release never changes once written); a preview's
//! are under `pr-<N>/` of the preview target.
//! - `local`: a directory in the data dir, served by the server. The current release is the
//!   symlink `<name>/current`, replaced by `rename(2)`: every request is answered from one
//!   release, old or new, never a mix.
//! - `s3`: any S3-compatible bucket (AWS, Aliyun OSS, Tencent COS, MinIO) behind a CDN. The
//!   current release is a copy of the release at `<name>/<path>`, made with server-side copies:
//!   assets first, HTML entry files last, then files the new release no longer has are deleted.
//!   A visitor may see old HTML with old assets, or new HTML with new assets; see
//!   docs/releases.md for the exact guarantee.

pub mod headers;
pub mod layout;
pub mod urls;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::site::{cache_class, site_label};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, RetryConfig};

use crate::config::TargetConfig;
use cloudbuild_proto::site::SiteConfig;
use cloudbuild_proto::task::{Environment, TaskId};
use cloudbuild_proto::validate::ProjectName;
use headers::{content_type, is_html};
use urls::SiteUrls;

/// Why a target operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("invalid target configuration: {0}")]
    Config(String),
    /// A published file no longer has the content it was published with (changed on disk
    /// after its release): it is not linked or copied into another release.
    #[error(
        "{path} in the target does not match its hash (changed after it was published); nothing was copied from it"
    )]
    Tampered { path: String },
}

/// Uploads and copies to a target run this many at a time.
const CONCURRENCY: usize = 8;

/// Where an environment publishes.
#[derive(Debug, Clone)]
pub enum Target {
    Local { root: PathBuf, urls: SiteUrls },
    S3 { store: Arc<AmazonS3>, prefix: String, urls: SiteUrls },
}

/// Makes a published file read-only (`0444`): neither a build nor a later release can change
/// it in place, and one content linked into many releases stays what was published.
fn make_read_only(path: &FsPath) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
}

/// Whether the file at `path` has the blake3 hash `hash` (streamed: any size).
fn has_hash(path: &FsPath, hash: &str) -> std::io::Result<bool> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().as_str() == hash)
}

/// Puts `blob` at `dest` (a new path in a release): a hard link (blobs are never written
/// again once staged, so sharing the inode is safe), else a copy; one system call in the usual
/// case, since a site may have 50,000 files.
fn link_or_copy(blob: &FsPath, dest: &FsPath) -> std::io::Result<()> {
    use std::io::ErrorKind;
    match std::fs::hard_link(blob, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound && dest.parent().is_some_and(|p| !p.exists()) => {
            std::fs::create_dir_all(dest.parent().unwrap_or(dest))?;
            link_or_copy(blob, dest)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            // A retried commit: the earlier attempt left it.
            std::fs::remove_file(dest)?;
            link_or_copy(blob, dest)
        }
        Err(_) => {
            let tmp = dest.with_extension("cloudbuild-partial");
            std::fs::copy(blob, &tmp)?;
            std::fs::rename(&tmp, dest)
        }
    }
}

/// Files up to this size go to S3 in one request; larger ones in 8 MiB parts (multipart), so
/// memory stays bounded whatever the file size.
const SINGLE_PUT_BYTES: u64 = 8 << 20;

impl Target {
    /// Builds the target of an environment. `local_root` and `local_urls` serve the local kind.
    pub fn new(
        config: &TargetConfig,
        local_root: PathBuf,
        local_urls: SiteUrls,
        env: &str,
    ) -> Result<Self, TargetError> {
        match config {
            TargetConfig::Local => {
                std::fs::create_dir_all(&local_root)?;
                Ok(Target::Local { root: local_root, urls: local_urls })
            }
            TargetConfig::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                virtual_hosted_style,
                allow_http,
                public_url,
                access_key_id_env,
                secret_access_key_env,
            } => {
                let key = std::env::var(access_key_id_env).map_err(|_| {
                    TargetError::Config(format!(
                        "the access key of the {env} target is not set in ${access_key_id_env}"
                    ))
                })?;
                let secret = std::env::var(secret_access_key_env).map_err(|_| {
                    TargetError::Config(format!(
                        "the secret key of the {env} target is not set in ${secret_access_key_env}"
                    ))
                })?;
                let retry = RetryConfig {
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(30),
                    backoff: object_store::BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(2),
                        base: 2.0,
                    },
                };
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(key)
                    .with_secret_access_key(secret)
                    .with_virtual_hosted_style_request(*virtual_hosted_style)
                    .with_allow_http(*allow_http)
                    .with_retry(retry);
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                let store = builder.build()?;
                Ok(Target::S3 {
                    store: Arc::new(store),
                    prefix: prefix.trim_matches('/').to_owned(),
                    urls: SiteUrls::in_bucket(public_url.trim_end_matches('/')),
                })
            }
        }
    }

    /// The public URLs of this environment's sites.
    pub fn urls(&self) -> &SiteUrls {
        match self {
            Target::Local { urls, .. } | Target::S3 { urls, .. } => urls,
        }
    }

    fn object_path(prefix: &str, key: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{prefix}/{key}"))
        }
    }

    /// Writes one file of a release under `key` from the staged upload `blob`, streaming: a
    /// local target links the blob in (same file system) or copies it; S3 gets one request, or
    /// a multipart upload for large files. S3 objects carry the Content-Type and the
    /// Cache-Control that local serving sends.
    pub async fn put_file(&self, key: &str, file: &ManifestFile, blob: &FsPath) -> Result<(), TargetError> {
        match self {
            Target::Local { root, .. } => {
                let (blob, dest) = (blob.to_path_buf(), root.join(key));
                tokio::task::spawn_blocking(move || link_or_copy(&blob, &dest).and_then(|()| make_read_only(&dest)))
                    .await
                    .map_err(std::io::Error::other)??;
                Ok(())
            }
            Target::S3 { store, prefix, .. } => {
                let mut attributes = Attributes::new();
                attributes.insert(Attribute::ContentType, content_type(&file.path).into());
                attributes.insert(
                    Attribute::CacheControl,
                    cache_class(&file.path, file.fingerprinted).cache_control().into(),
                );
                let path = Self::object_path(prefix, key);
                if file.size <= SINGLE_PUT_BYTES {
                    let data = tokio::fs::read(blob).await?;
                    let opts = PutOptions { attributes, ..Default::default() };
                    store.put_opts(&path, PutPayload::from(data), opts).await?;
                } else {
                    let store: Arc<dyn ObjectStore> = store.clone();
                    let mut writer =
                        object_store::buffered::BufWriter::with_capacity(store, path, SINGLE_PUT_BYTES as usize)
                            .with_attributes(attributes);
                    let mut source = tokio::fs::File::open(blob).await?;
                    tokio::io::copy(&mut source, &mut writer).await?;
                    tokio::io::AsyncWriteExt::shutdown(&mut writer).await?;
                }
                Ok(())
            }
        }
    }

    /// Copies content already in the target, without sending it again. A local target first
    /// checks that the file still has `hash` (the content it was published with), so a file
    /// changed on disk is never propagated to another release.
    pub async fn copy(&self, from: &str, to: &str, hash: &str) -> Result<(), TargetError> {
        match self {
            Target::Local { root, .. } => {
                let (source, dest, hash, shown) = (root.join(from), root.join(to), hash.to_owned(), from.to_owned());
                tokio::task::spawn_blocking(move || -> Result<(), TargetError> {
                    if !has_hash(&source, &hash)? {
                        return Err(TargetError::Tampered { path: shown });
                    }
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let _ = std::fs::remove_file(&dest);
                    // A hard link: releases are immutable, so sharing the inode is safe and free.
                    if std::fs::hard_link(&source, &dest).is_err() {
                        std::fs::copy(&source, &dest)?;
                    }
                    Ok(make_read_only(&dest)?)
                })
                .await
                .map_err(std::io::Error::other)?
            }
            Target::S3 { store, prefix, .. } => {
                store.copy(&Self::object_path(prefix, from), &Self::object_path(prefix, to)).await?;
                Ok(())
            }
        }
    }

    /// Makes `release_key` (`<name>/<version>/<task>`) the current release of `name`.
    /// `previous` is the release it replaces, with its files.
    pub async fn activate(
        &self,
        name: &str,
        release_key: &str,
        files: &[ManifestFile],
        previous: Option<(&str, &[ManifestFile])>,
    ) -> Result<(), TargetError> {
        match self {
            Target::Local { root, .. } => {
                let project = root.join(name);
                let relative = release_key.strip_prefix(&format!("{name}/")).unwrap_or(release_key);
                if let Some((prev_key, _)) = previous {
                    let prev_rel = prev_key.strip_prefix(&format!("{name}/")).unwrap_or(prev_key);
                    layout::swap_link(&project, "previous", FsPath::new(prev_rel)).await?;
                }
                layout::swap_link(&project, "current", FsPath::new(relative)).await?;
                Ok(())
            }
            Target::S3 { .. } => {
                // The current copy already holds these (same path, same content): nothing to copy.
                let unchanged: std::collections::HashSet<(&str, &str)> = previous
                    .map(|(_, prev)| prev.iter().map(|f| (f.path.as_str(), f.hash.as_str())).collect())
                    .unwrap_or_default();
                let (html, assets): (Vec<&ManifestFile>, Vec<&ManifestFile>) = files
                    .iter()
                    .filter(|f| !unchanged.contains(&(f.path.as_str(), f.hash.as_str())))
                    .partition(|f| is_html(&f.path));
                // Assets first, entry files last: new HTML never points at assets not yet there.
                for group in [assets, html] {
                    let copies: Vec<_> = group
                        .iter()
                        .map(|f| {
                            let (from, to) = (format!("{release_key}/{}", f.path), format!("{name}/{}", f.path));
                            async move { self.copy(&from, &to, &f.hash).await }
                        })
                        .collect();
                    let results: Vec<_> =
                        futures_util::stream::iter(copies).buffer_unordered(CONCURRENCY).collect().await;
                    results.into_iter().collect::<Result<Vec<()>, _>>()?;
                }
                // Then what the new release no longer has.
                if let Some((_, prev_files)) = previous {
                    let keep: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
                    for f in prev_files.iter().filter(|f| !keep.contains(f.path.as_str())) {
                        self.delete(&format!("{name}/{}", f.path)).await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Deletes one key (missing keys are fine).
    pub async fn delete(&self, key: &str) -> Result<(), TargetError> {
        match self {
            Target::Local { root, .. } => match tokio::fs::remove_file(root.join(key)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Target::S3 { store, prefix, .. } => match store.delete(&Self::object_path(prefix, key)).await {
                Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Records what serving a release needs (local targets only: its files and `[site]`
    /// settings beside it, and the links that find it by host and by task), before any switch.
    pub async fn describe_release(
        &self,
        name: &ProjectName,
        version: &str,
        task: TaskId,
        site: &SiteConfig,
        files: &[ManifestFile],
    ) -> Result<(), TargetError> {
        if let Target::Local { root, .. } = self {
            let dir = layout::project_dir(root, name).join(version).join(task.to_string());
            let record = layout::SiteRecord { site: site.clone(), files: files.to_vec() };
            layout::write_record(&dir, &record).await?;
            layout::link_release(root, name, version, task).await?;
        }
        Ok(())
    }

    /// Removes a whole release (retention). Never called for the current one.
    pub async fn remove_release(
        &self,
        name: &ProjectName,
        version: &str,
        task: TaskId,
        files: &[ManifestFile],
    ) -> Result<(), TargetError> {
        let release_key = format!("{name}/{version}/{task}");
        match self {
            Target::Local { root, .. } => {
                let dir = root.join(&release_key);
                layout::unlink_release(root, name, &dir, task).await?;
                match tokio::fs::remove_dir_all(&dir).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                    _ => Ok(()),
                }
            }
            Target::S3 { .. } => {
                for f in files {
                    self.delete(&format!("{release_key}/{}", f.path)).await?;
                }
                Ok(())
            }
        }
    }

    /// The same target for pull request `number`'s preview: under `pr-<N>/`.
    fn for_pull_request(&self, number: u32) -> Target {
        let dir = format!("pr-{number}");
        match self {
            Target::Local { root, urls } => {
                Target::Local { root: root.join(&dir), urls: urls.for_pull_request(number) }
            }
            Target::S3 { store, prefix, urls } => Target::S3 {
                store: store.clone(),
                prefix: if prefix.is_empty() { dir } else { format!("{prefix}/{dir}") },
                urls: urls.for_pull_request(number),
            },
        }
    }

    /// Removes every file of `name` under this target (a preview's whole site, when its pull
    /// request is closed or its time is up): a local directory and its label link, or every
    /// key under `<name>/` in the bucket.
    pub async fn remove_site(&self, name: &ProjectName) -> Result<(), TargetError> {
        match self {
            Target::Local { root, .. } => {
                let _ = tokio::fs::remove_file(root.join(layout::LABELS_DIR).join(site_label(name))).await;
                let dir = layout::project_dir(root, name);
                // Releases are read-only files in writable directories: removable as they are.
                match tokio::fs::remove_dir_all(&dir).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                // A scope's directory that held only this site goes too. The root and its labels
                // stay: another project's pull request of the same number may be publishing
                // into them under its own lock.
                for d in dir.ancestors().skip(1).take_while(|d| d.starts_with(root) && *d != root) {
                    let _ = tokio::fs::remove_dir(d).await;
                }
                Ok(())
            }
            Target::S3 { store, prefix, .. } => {
                let under = Self::object_path(prefix, name.as_str());
                // As they are listed, in batches (S3's DeleteObjects takes 1,000 keys a request).
                let keys = store.list(Some(&under)).map_ok(|m| m.location).boxed();
                let mut deleted = store.delete_stream(keys);
                while let Some(done) = deleted.next().await {
                    match done {
                        Err(object_store::Error::NotFound { .. }) | Ok(_) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
        }
    }

    /// The local root, if this target is served by the server.
    pub fn local_root(&self) -> Option<&FsPath> {
        match self {
            Target::Local { root, .. } => Some(root),
            Target::S3 { .. } => None,
        }
    }
}

/// Held while a project's release is recorded and switched in one environment.
pub type SwitchLock = std::sync::Arc<tokio::sync::Mutex<()>>;

/// The targets of the environments.
#[derive(Debug)]
pub struct Targets {
    pub test: Target,
    pub prod: Target,
    /// Every preview's: pull request `N`'s is this one under `pr-<N>/` (see [`Targets::get`]).
    pub preview: Target,
    /// One lock per project and environment, held while a release is recorded and switched.
    pub locks: std::sync::Mutex<std::collections::HashMap<(Environment, String), SwitchLock>>,
}

impl Targets {
    /// The targets, with no switch in progress.
    pub fn new(test: Target, prod: Target, preview: Target) -> Self {
        Targets { test, prod, preview, locks: Default::default() }
    }

    /// The switch lock of a project in an environment.
    pub fn project_lock(&self, env: Environment, name: &str) -> SwitchLock {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry((env, name.to_owned())).or_default().clone()
    }

    /// Drops the switch lock of a project in an environment that nobody holds or waits for (a
    /// removed preview's: one per pull request would otherwise stay forever).
    pub fn forget_lock(&self, env: Environment, name: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(&(env, name.to_owned())).is_some_and(|l| std::sync::Arc::strong_count(l) == 1) {
            locks.remove(&(env, name.to_owned()));
        }
    }

    /// The target of an environment. A preview's is the preview target under `pr-<N>/`: each
    /// pull request's releases, `current` link and labels are apart from every other's, so
    /// removing one preview is removing one directory (or key prefix).
    pub fn get(&self, env: Environment) -> std::borrow::Cow<'_, Target> {
        match env {
            Environment::Test => std::borrow::Cow::Borrowed(&self.test),
            Environment::Prod => std::borrow::Cow::Borrowed(&self.prod),
            Environment::Preview(n) => std::borrow::Cow::Owned(self.preview.for_pull_request(n)),
        }
    }
}
