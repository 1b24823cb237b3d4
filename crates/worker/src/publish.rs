//! Collects a build's output and uploads it to the server's site store.
//!
//! Only regular files inside the output directory are published. Symlinks (wherever they
//! point), devices, sockets, FIFOs and `node_modules/` are skipped with a warning; files are
//! opened with `O_NOFOLLOW`, so a file swapped for a symlink after the walk is refused too.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backon::Retryable;
use cloudbuild_proto::release::{ManifestFile, PlanAnswer, PublishPlan, PublishResult};
use cloudbuild_proto::site::SiteConfig;
use cloudbuild_proto::text::count;
use cloudbuild_proto::validate::RelPath;
use cloudbuild_proto::worker::TaskAttempt;
use futures_util::StreamExt;

use crate::retry;

/// The files to publish and what was skipped.
#[derive(Debug, Default)]
pub struct OutputFiles {
    pub files: Vec<(RelPath, PathBuf, u64)>,
    pub skipped: Vec<String>,
}

/// Walks `root` without following symlinks.
pub fn collect(root: &Path) -> std::io::Result<OutputFiles> {
    let mut out = OutputFiles::default();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                out.skipped.push(format!("{prefix}{}: file name is not UTF-8", name.to_string_lossy()));
                continue;
            };
            let rel = format!("{prefix}{name}");
            let meta = entry.path().symlink_metadata()?;
            let ft = meta.file_type();
            if ft.is_dir() {
                if name == "node_modules" {
                    out.skipped.push(format!("{rel}/: node_modules is never published"));
                } else {
                    stack.push((entry.path(), format!("{rel}/")));
                }
            } else if ft.is_symlink() {
                out.skipped.push(format!("{rel}: symbolic link"));
            } else if !ft.is_file() {
                out.skipped.push(format!("{rel}: not a regular file"));
            } else {
                match RelPath::parse(&rel) {
                    Ok(p) => out.files.push((p, entry.path(), meta.len())),
                    Err(e) => out.skipped.push(format!("{rel}: {}", e.reason)),
                }
            }
        }
    }
    out.files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Files up to this size are uploaded in bundles.
const BUNDLED_FILE_BYTES: u64 = 256 << 10;
/// A bundle is closed once it holds this much (the server takes up to 8 MiB)...
const BUNDLE_TARGET_BYTES: u64 = 4 << 20;
/// ...or this many files, so that several bundles go at once.
const BUNDLE_FILES: usize = 500;

/// The header carrying the assignment's lease key (the server's `api::extract::LEASE_HEADER`).
pub const LEASE_HEADER: &str = "x-cloudbuild-lease";

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The server refused a call (4xx): retrying would not help.
    #[error("{what} was refused (HTTP {status}): {message}")]
    Refused { what: String, status: u16, message: String },
    /// The server failed (5xx); retried before giving up. `message` is the server's own, when
    /// it sent one.
    #[error("{what}: the server answered HTTP {status}{message}")]
    ServerFailed { what: String, status: u16, message: String },
    /// The request did not complete (connection refused or cut); retried before giving up.
    #[error("{what} failed: {source}")]
    Transport { what: String, source: reqwest::Error },
    #[error("{what}: unreadable answer: {source}")]
    Unreadable { what: String, source: reqwest::Error },
    /// A file of the build output could not be read.
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
}

impl PublishError {
    /// Whether trying again may succeed.
    fn is_transient(&self) -> bool {
        matches!(self, PublishError::ServerFailed { .. } | PublishError::Transport { .. })
    }
}

/// Runs an upload under the upload retry policy ([`retry::uploads`]): transient failures are
/// tried again, a refusal is final.
async fn with_retries<T, F, Fut>(upload: F) -> Result<T, PublishError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PublishError>>,
{
    upload.retry(retry::uploads()).when(PublishError::is_transient).await
}

/// The error of an answer that is not a success: the server's own message when it sent one.
async fn refused(what: &str, resp: reqwest::Response) -> PublishError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let said = serde_json::from_str::<cloudbuild_proto::ApiErrorBody>(&text).map(|e| e.message);
    if status.is_server_error() {
        let message = said.map(|m| format!(": {m}")).unwrap_or_default();
        return PublishError::ServerFailed { what: what.to_owned(), status: status.as_u16(), message };
    }
    PublishError::Refused { what: what.to_owned(), status: status.as_u16(), message: said.unwrap_or(text) }
}

/// Uploads over HTTP to the server that assigned the task.
#[derive(Clone)]
pub struct Uploader {
    pub client: reqwest::Client,
    /// Server base URL without a trailing slash.
    pub base: String,
    pub token: Arc<str>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader").field("base", &self.base).field("token", &"***").finish()
    }
}

impl Uploader {
    /// Publishes incrementally: sends the manifest, uploads only the contents the target lacks
    /// (8 at a time, each retried on transient errors), then asks the server to commit the
    /// release. Any failure leaves the environment's current release untouched.
    ///
    /// `lease_key` is the assignment's secret: every call carries it, so that the server takes
    /// the upload from the worker holding this attempt only.
    pub async fn publish(
        &self,
        task: TaskAttempt,
        lease_key: &str,
        manifest: &[(ManifestFile, PathBuf)],
        site: &SiteConfig,
    ) -> Result<PublishResult, PublishError> {
        let base = format!("{}/api/v1/tasks/{}/attempts/{}/publish", self.base, task.task_id, task.attempt);
        let plan = PublishPlan { files: manifest.iter().map(|(f, _)| f.clone()).collect(), site: site.clone() };
        let answer: PlanAnswer = self.post_json(&format!("{base}/plan"), lease_key, &plan, "the publish plan").await?;
        let missing: HashSet<&str> = answer.missing.iter().map(String::as_str).collect();
        // One upload per missing content, whichever file holds it.
        let mut sources: HashMap<&str, (&PathBuf, u64)> = HashMap::new();
        for (f, path) in manifest {
            if missing.contains(f.hash.as_str()) {
                sources.entry(f.hash.as_str()).or_insert((path, f.size));
            }
        }
        // Small contents travel many to a request; large ones alone, streamed.
        let (small, large): (Vec<_>, Vec<_>) =
            sources.into_iter().partition(|(_, (_, size))| *size <= BUNDLED_FILE_BYTES);
        let mut bundles: Vec<Vec<(String, PathBuf)>> = vec![Vec::new()];
        let mut bundle_bytes = 0;
        for (hash, (path, size)) in small {
            let full = bundles.last().is_some_and(|b| b.len() >= BUNDLE_FILES);
            if (full || bundle_bytes + size > BUNDLE_TARGET_BYTES) && !bundles.last().is_some_and(Vec::is_empty) {
                bundles.push(Vec::new());
                bundle_bytes = 0;
            }
            bundle_bytes += size;
            bundles.last_mut().expect("one bundle at least").push((hash.to_owned(), path.clone()));
        }
        type Upload<'u> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PublishError>> + Send + 'u>>;
        let mut uploads: Vec<Upload<'_>> = Vec::new();
        for bundle in bundles.into_iter().filter(|b| !b.is_empty()) {
            let (this, url) = (self.clone(), format!("{base}/bundle"));
            let blob_base = format!("{base}/blobs");
            uploads.push(Box::pin(async move { this.upload_bundle(&url, &blob_base, lease_key, bundle).await }));
        }
        for (hash, (path, _)) in large {
            let (this, url, path) = (self.clone(), format!("{base}/blobs/{hash}"), path.clone());
            uploads.push(Box::pin(async move { this.upload_blob(&url, lease_key, &path).await }));
        }
        let results: Vec<Result<(), PublishError>> =
            futures_util::stream::iter(uploads).buffer_unordered(8).collect().await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(e);
        }
        self.post_json(&format!("{base}/commit"), lease_key, &plan, "the release commit").await
    }

    async fn post_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        lease_key: &str,
        body: &B,
        what: &str,
    ) -> Result<T, PublishError> {
        let resp = self
            .client
            .post(url)
            .bearer_auth(&*self.token)
            .header(LEASE_HEADER, lease_key)
            .json(body)
            .send()
            .await
            .map_err(|source| PublishError::Transport { what: what.to_owned(), source })?;
        if !resp.status().is_success() {
            return Err(refused(what, resp).await);
        }
        resp.json().await.map_err(|source| PublishError::Unreadable { what: what.to_owned(), source })
    }

    /// Sends small contents in one request (frames `<hash> <size>\n<bytes>`), retried on
    /// transient errors; a server without bundles (404) gets them one by one.
    async fn upload_bundle(
        &self,
        url: &str,
        blob_base: &str,
        lease_key: &str,
        files: Vec<(String, PathBuf)>,
    ) -> Result<(), PublishError> {
        let listed = files.clone();
        let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, PublishError> {
            let mut body = Vec::new();
            for (hash, path) in &listed {
                let mut data = Vec::new();
                open_no_follow(path)
                    .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut data))
                    .map_err(|source| PublishError::File { path: path.display().to_string(), source })?;
                body.extend_from_slice(format!("{hash} {}\n", data.len()).as_bytes());
                body.extend_from_slice(&data);
            }
            Ok(body)
        })
        .await
        .map_err(|e| PublishError::File { path: "a bundle".into(), source: std::io::Error::other(e) })??;
        let body = bytes::Bytes::from(body);
        let what = format!("uploading a bundle of {}", count(files.len() as u64, "file", "files"));
        let send = || async {
            let resp = self
                .client
                .post(url)
                .bearer_auth(&*self.token)
                .header(LEASE_HEADER, lease_key)
                .body(body.clone())
                .send()
                .await
                .map_err(|source| PublishError::Transport { what: what.clone(), source })?;
            match resp.status() {
                s if s.is_success() => Ok(true),
                // A server without bundles: send them one by one.
                reqwest::StatusCode::NOT_FOUND => Ok(false),
                _ => Err(refused(&what, resp).await),
            }
        };
        let bundled = with_retries(send).await?;
        if !bundled {
            for (hash, path) in &files {
                self.upload_blob(&format!("{blob_base}/{hash}"), lease_key, path).await?;
            }
        }
        Ok(())
    }

    async fn upload_blob(&self, url: &str, lease_key: &str, path: &Path) -> Result<(), PublishError> {
        let shown = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let what = format!("uploading {shown}");
        let send = || async {
            let body = body_of(path).await.map_err(|source| PublishError::File { path: shown.clone(), source })?;
            let resp = self
                .client
                .put(url)
                .bearer_auth(&*self.token)
                .header(LEASE_HEADER, lease_key)
                .body(body)
                .send()
                .await
                .map_err(|source| PublishError::Transport { what: what.clone(), source })?;
            if resp.status().is_success() {
                return Ok(());
            }
            Err(refused(&what, resp).await)
        };
        with_retries(send).await
    }
}

/// Hashes every collected file (blake3, streamed: memory does not grow with file size),
/// reading without following symlinks, and marks the files the bundler's manifest lists.
pub fn manifest(files: &OutputFiles, root: &Path) -> std::io::Result<Vec<(ManifestFile, PathBuf)>> {
    let listed = bundler_listed(root);
    files
        .files
        .iter()
        .map(|(rel, path, _)| {
            let mut f = open_no_follow(path)?;
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(&mut f)?;
            let file = ManifestFile {
                path: rel.as_str().to_owned(),
                size: f.metadata()?.len(),
                hash: hasher.finalize().to_hex().to_string(),
                fingerprinted: listed.contains(rel.as_str()),
            };
            Ok((file, path.clone()))
        })
        .collect()
}

/// Files that a bundler's manifest in the output lists as its emitted chunks and assets:
/// Vite's `.vite/manifest.json` (or `manifest.json` of Vite 4; entries' `file`, `css`,
/// `assets`), Create React App's `asset-manifest.json` (`files`). Paths relative to `root`.
pub fn bundler_listed(root: &Path) -> HashSet<String> {
    let mut listed = HashSet::new();
    // Build output is untrusted: no links followed, at most 16 MiB read.
    let read = |name: &str| -> Option<serde_json::Value> {
        let file = open_no_follow(&root.join(name)).ok()?;
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, 16 << 20), &mut text).ok()?;
        serde_json::from_slice(&text).ok()
    };
    let mut add = |v: &serde_json::Value| {
        if let Some(p) = v.as_str() {
            listed.insert(p.trim_start_matches('/').to_owned());
        }
    };
    for name in [".vite/manifest.json", "manifest.json"] {
        if let Some(serde_json::Value::Object(entries)) = read(name) {
            for entry in entries.values() {
                if let Some(file) = entry.get("file") {
                    add(file);
                }
                for key in ["css", "assets"] {
                    for v in entry.get(key).and_then(|v| v.as_array()).into_iter().flatten() {
                        add(v);
                    }
                }
            }
        }
    }
    if let Some(files) = read("asset-manifest.json").and_then(|m| m.get("files").cloned()) {
        for v in files.as_object().into_iter().flat_map(|o| o.values()) {
            add(v);
        }
    }
    listed
}

/// Opens a regular file without following a symlink at its last component (nor blocking on a
/// FIFO put in its place).
pub(crate) fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits()).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Reads a small text file of a checkout (`package.json`, `cloudbuild.toml`) as the worker,
/// outside the sandbox: never through a symlink (it could point at the worker's own files), and
/// at most `limit` bytes.
pub(crate) fn read_checkout_file(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    open_no_follow(path)?.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(text)
}

/// The file as a streamed request body (never whole in memory).
async fn body_of(path: &Path) -> std::io::Result<reqwest::Body> {
    let path = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || open_no_follow(&path)).await.map_err(std::io::Error::other)??;
    Ok(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        tokio::fs::File::from_std(file),
        64 << 10,
    )))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Runs `fail` under the upload retry policy until it succeeds or the policy gives up;
    /// returns how many tries it took and the virtual time that passed.
    async fn tries_of(fail: impl Fn(u32) -> Option<PublishError>) -> (u32, Duration, Result<(), PublishError>) {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let call = || async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            fail(n).map_or(Ok(()), Err)
        };
        let result = with_retries(call).await;
        (tries.load(std::sync::atomic::Ordering::SeqCst), started.elapsed(), result)
    }

    fn server_failed() -> PublishError {
        PublishError::ServerFailed { what: "uploading".into(), status: 503, message: String::new() }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_growing_delays_then_reported() {
        let (tries, waited, result) = tries_of(|_| Some(server_failed())).await;
        assert_eq!(tries, 4, "the first try and three more");
        // 400 ms, 800 ms, 1.6 s apart, plus jitter of up to one delay each.
        assert!(waited >= Duration::from_millis(2800) && waited <= Duration::from_millis(5600), "{waited:?}");
        assert!(matches!(result, Err(PublishError::ServerFailed { status: 503, .. })));
        let (tries, _, result) = tries_of(|n| (n < 3).then(server_failed)).await;
        assert_eq!((tries, result.is_ok()), (3, true), "a success ends the retries");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_retried() {
        let refused = |_| Some(PublishError::Refused { what: "the plan".into(), status: 409, message: "stale".into() });
        let (tries, waited, result) = tries_of(refused).await;
        assert_eq!((tries, waited), (1, Duration::ZERO));
        assert!(matches!(result, Err(PublishError::Refused { status: 409, .. })));
    }

    #[test]
    fn only_regular_files_inside_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dist");
        std::fs::create_dir_all(root.join("assets")).unwrap();
        std::fs::create_dir_all(root.join("node_modules/x")).unwrap();
        std::fs::write(root.join("index.html"), "hi").unwrap();
        std::fs::write(root.join("assets/a b.js"), "js").unwrap();
        std::fs::write(root.join("node_modules/x/i.js"), "no").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        std::os::unix::fs::symlink("/", root.join("rootdir")).unwrap();
        std::os::unix::fs::symlink("index.html", root.join("inner-link.html")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let out = collect(&root).unwrap();
        let names: Vec<_> = out.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["assets/a b.js", "index.html"]);
        assert_eq!(out.skipped.len(), 5, "{:?}", out.skipped);
        let m = manifest(&out, &root).unwrap();
        assert_eq!(m[1].0.hash, blake3::hash(b"hi").to_hex().to_string());
        assert_eq!((m[1].0.path.as_str(), m[1].0.size), ("index.html", 2));
    }

    #[test]
    fn bundler_manifests_mark_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".vite")).unwrap();
        std::fs::write(
            root.join(".vite/manifest.json"),
            r#"{"index.html":{"file":"assets/index-BZrK3p2Q.js","css":["assets/index-D1x2y3z4.css"],"assets":["assets/hero-a1b2c3d4.jpg"]}}"#,
        )
        .unwrap();
        std::fs::write(root.join("asset-manifest.json"), r#"{"files":{"main.js":"/static/js/main.3f2a9c1b.js"}}"#)
            .unwrap();
        let listed = bundler_listed(root);
        for p in [
            "assets/index-BZrK3p2Q.js",
            "assets/index-D1x2y3z4.css",
            "assets/hero-a1b2c3d4.jpg",
            "static/js/main.3f2a9c1b.js",
        ] {
            assert!(listed.contains(p), "{p}: {listed:?}");
        }
        assert_eq!(listed.len(), 4);
    }
}
