//! Publish targets: where an environment's releases live, and how its current release is
//! switched.
//!
//! Keys are `<name>/<version>/<task>/<path>` (a release never changes once written).
//! - `local`: a directory in the data dir, served by the server. The current release is the
//!   symlink `<name>/current`, replaced by `rename(2)`: every request is answered from one
//!   release, old or new, never a mix.
//! - `s3`: any S3-compatible bucket (AWS, Aliyun OSS, Tencent COS, MinIO) behind a CDN. The
//!   current release is a copy of the release at `<name>/<path>`, made with server-side copies:
//!   assets first, HTML entry files last, then files the new release no longer has are deleted.
//!   A visitor may see old HTML with old assets, or new HTML with new assets; see
//!   docs/releases.md for the exact guarantee.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cloudbuild_proto::release::ManifestFile;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, RetryConfig};

use super::headers::{cache_control, content_type, is_html};
use crate::config::TargetConfig;

/// Why a target operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("invalid target configuration: {0}")]
    Config(String),
}

/// Uploads and copies to a target run this many at a time.
const CONCURRENCY: usize = 8;

/// Where an environment publishes.
#[derive(Debug, Clone)]
pub enum Target {
    Local { root: PathBuf, base_url: String },
    S3 { store: Arc<AmazonS3>, prefix: String, public_url: String },
}

impl Target {
    /// Builds the target of an environment. `local_root` and `server_url` serve the local kind.
    pub fn new(config: &TargetConfig, local_root: PathBuf, server_url: &str, env: &str) -> Result<Self, TargetError> {
        match config {
            TargetConfig::Local => {
                std::fs::create_dir_all(&local_root)?;
                Ok(Target::Local { root: local_root, base_url: format!("{server_url}/sites/{env}") })
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
                    public_url: public_url.trim_end_matches('/').to_owned(),
                })
            }
        }
    }

    /// The environment's URL of a project (follows the current release).
    pub fn env_url(&self, name: &str) -> String {
        match self {
            Target::Local { base_url, .. } => format!("{base_url}/{name}/"),
            Target::S3 { public_url, .. } => format!("{public_url}/{name}/"),
        }
    }

    /// The URL of one release, which never changes.
    pub fn immutable_url(&self, release_key: &str) -> String {
        match self {
            Target::Local { base_url, .. } => {
                // Served by the server under /releases/<env>/...
                format!("{}/{release_key}/", base_url.replacen("/sites/", "/releases/", 1))
            }
            Target::S3 { public_url, .. } => format!("{public_url}/{release_key}/"),
        }
    }

    fn object_path(prefix: &str, key: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{prefix}/{key}"))
        }
    }

    /// Writes one file of a release.
    pub async fn put(&self, key: &str, path_in_release: &str, data: Bytes) -> Result<(), TargetError> {
        match self {
            Target::Local { root, .. } => {
                let dest = root.join(key);
                if let Some(parent) = dest.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                let tmp = dest.with_extension("cloudbuild-partial");
                tokio::fs::write(&tmp, &data).await?;
                tokio::fs::rename(&tmp, &dest).await?;
                Ok(())
            }
            Target::S3 { store, prefix, .. } => {
                let mut attributes = Attributes::new();
                attributes.insert(Attribute::ContentType, content_type(path_in_release).into());
                attributes.insert(Attribute::CacheControl, cache_control(path_in_release).into());
                let opts = PutOptions { attributes, ..Default::default() };
                store.put_opts(&Self::object_path(prefix, key), PutPayload::from_bytes(data), opts).await?;
                Ok(())
            }
        }
    }

    /// Copies content already in the target, without sending it again.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), TargetError> {
        match self {
            Target::Local { root, .. } => {
                let dest = root.join(to);
                if let Some(parent) = dest.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                let _ = tokio::fs::remove_file(&dest).await;
                // A hard link: releases are immutable, so sharing the inode is safe and free.
                if tokio::fs::hard_link(root.join(from), &dest).await.is_err() {
                    tokio::fs::copy(root.join(from), &dest).await?;
                }
                Ok(())
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
                    swap_link(&project, "previous", prev_rel).await?;
                }
                swap_link(&project, "current", relative).await
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
                            async move { self.copy(&from, &to).await }
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

    /// Removes a whole release (retention). Never called for the current one.
    pub async fn remove_release(&self, release_key: &str, files: &[ManifestFile]) -> Result<(), TargetError> {
        match self {
            Target::Local { root, .. } => {
                let dir = root.join(release_key);
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

    /// The local root, if this target is served by the server.
    pub fn local_root(&self) -> Option<&FsPath> {
        match self {
            Target::Local { root, .. } => Some(root),
            Target::S3 { .. } => None,
        }
    }
}

/// Points `<dir>/<link>` at `target` atomically: a fresh symlink renamed over the old one.
async fn swap_link(dir: &FsPath, link: &str, target: &str) -> Result<(), TargetError> {
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{link}.{}.tmp", std::process::id()));
    let _ = tokio::fs::remove_file(&tmp).await;
    tokio::fs::symlink(target, &tmp).await?;
    tokio::fs::rename(&tmp, dir.join(link)).await?;
    Ok(())
}
