//! Collects a build's output and uploads it to the server's site store.
//!
//! Only regular files inside the output directory are published. Symlinks (wherever they
//! point), devices, sockets, FIFOs and `node_modules/` are skipped with a warning; files are
//! opened with `O_NOFOLLOW`, so a file swapped for a symlink after the walk is refused too.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::validate::RelPath;
use std::collections::{HashMap, HashSet};

use cloudbuild_proto::release::{ManifestFile, PlanAnswer, PublishPlan, PublishResult};
use cloudbuild_proto::site::SiteConfig;
use cloudbuild_proto::worker::TaskAttempt;
use futures_util::StreamExt;

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

/// The header carrying the assignment's lease key (the server's `release::LEASE_HEADER`).
pub const LEASE_HEADER: &str = "x-cloudbuild-lease";

/// Uploads over HTTP to the server that assigned the task.
#[derive(Debug, Clone)]
pub struct Uploader {
    pub client: reqwest::Client,
    /// Server base URL without a trailing slash.
    pub base: String,
    pub token: Arc<str>,
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
    ) -> Result<PublishResult, String> {
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
        type Upload<'u> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'u>>;
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
        let results: Vec<Result<(), String>> = futures_util::stream::iter(uploads).buffer_unordered(8).collect().await;
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
    ) -> Result<T, String> {
        let resp = self
            .client
            .post(url)
            .bearer_auth(&*self.token)
            .header(LEASE_HEADER, lease_key)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("{what} failed: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message =
                serde_json::from_str::<cloudbuild_proto::ApiErrorBody>(&text).map(|e| e.message).unwrap_or(text);
            return Err(format!("{what} was refused ({status}): {message}"));
        }
        resp.json().await.map_err(|e| format!("{what}: unreadable answer: {e}"))
    }

    /// Sends small contents in one request (frames `<hash> <size>\n<bytes>`), retried on
    /// transient errors; a server without bundles (404) gets them one by one.
    async fn upload_bundle(
        &self,
        url: &str,
        blob_base: &str,
        lease_key: &str,
        files: Vec<(String, PathBuf)>,
    ) -> Result<(), String> {
        let listed = files.clone();
        let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let mut body = Vec::new();
            for (hash, path) in &listed {
                let mut data = Vec::new();
                open_no_follow(path)
                    .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut data))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                body.extend_from_slice(format!("{hash} {}\n", data.len()).as_bytes());
                body.extend_from_slice(&data);
            }
            Ok(body)
        })
        .await
        .map_err(|e| e.to_string())??;
        let body = bytes::Bytes::from(body);
        let mut last_err = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            }
            let sent = self
                .client
                .post(url)
                .bearer_auth(&*self.token)
                .header(LEASE_HEADER, lease_key)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    for (hash, path) in &files {
                        self.upload_blob(&format!("{blob_base}/{hash}"), lease_key, path).await?;
                    }
                    return Ok(());
                }
                Ok(r) if r.status().is_server_error() => {
                    last_err = format!("bundle of {} files: server answered {}", files.len(), r.status())
                }
                Ok(r) => {
                    return Err(format!(
                        "bundle of {} files: {} {}",
                        files.len(),
                        r.status(),
                        r.text().await.unwrap_or_default()
                    ))
                }
                Err(e) => last_err = format!("bundle of {} files: {e}", files.len()),
            }
        }
        Err(format!("upload failed after 4 tries: {last_err}"))
    }

    async fn upload_blob(&self, url: &str, lease_key: &str, path: &Path) -> Result<(), String> {
        let shown = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut last_err = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            }
            let body = body_of(path).await.map_err(|e| format!("{shown}: {e}"))?;
            match self.client.put(url).bearer_auth(&*self.token).header(LEASE_HEADER, lease_key).body(body).send().await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status().is_server_error() => last_err = format!("{shown}: server answered {}", r.status()),
                Ok(r) => return Err(format!("{shown}: {} {}", r.status(), r.text().await.unwrap_or_default())),
                Err(e) => last_err = format!("{shown}: {e}"),
            }
        }
        Err(format!("upload failed after 4 tries: {last_err}"))
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

/// Opens a regular file without following a symlink at its last component.
pub(crate) fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
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
    use super::*;

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
