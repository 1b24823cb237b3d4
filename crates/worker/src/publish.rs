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
    ) -> Result<PublishResult, String> {
        let base = format!("{}/api/v1/tasks/{}/attempts/{}/publish", self.base, task.task_id, task.attempt);
        let plan = PublishPlan { files: manifest.iter().map(|(f, _)| f.clone()).collect() };
        let answer: PlanAnswer = self.post_json(&format!("{base}/plan"), lease_key, &plan, "the publish plan").await?;
        let missing: HashSet<&str> = answer.missing.iter().map(String::as_str).collect();
        // One upload per missing content, whichever file holds it.
        let mut sources: HashMap<&str, &PathBuf> = HashMap::new();
        for (f, path) in manifest {
            if missing.contains(f.hash.as_str()) {
                sources.entry(f.hash.as_str()).or_insert(path);
            }
        }
        let uploads: Vec<_> = sources
            .into_iter()
            .map(|(hash, path)| {
                let (this, url, path) = (self.clone(), format!("{base}/blobs/{hash}"), path.clone());
                async move { this.upload_blob(&url, lease_key, &path).await }
            })
            .collect();
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

    async fn upload_blob(&self, url: &str, lease_key: &str, path: &Path) -> Result<(), String> {
        let shown = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut last_err = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            }
            let body = read_no_follow(path).await.map_err(|e| format!("{shown}: {e}"))?;
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

/// Hashes every collected file (blake3), reading without following symlinks.
pub fn manifest(files: &OutputFiles) -> std::io::Result<Vec<(ManifestFile, PathBuf)>> {
    files
        .files
        .iter()
        .map(|(rel, path, _)| {
            let data = read_no_follow_blocking(path)?;
            let file = ManifestFile {
                path: rel.as_str().to_owned(),
                size: data.len() as u64,
                hash: blake3::hash(&data).to_hex().to_string(),
            };
            Ok((file, path.clone()))
        })
        .collect()
}

fn read_no_follow_blocking(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

async fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_no_follow_blocking(&path)).await.map_err(std::io::Error::other)?
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
        let m = manifest(&out).unwrap();
        assert_eq!(m[1].0.hash, blake3::hash(b"hi").to_hex().to_string());
        assert_eq!((m[1].0.path.as_str(), m[1].0.size), ("index.html", 2));
    }
}
