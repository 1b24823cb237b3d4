//! Staging of uploaded contents: single streamed uploads (`PUT …/publish/blobs/{hash}`),
//! bundles of small files (`POST …/publish/bundle`), and the check of what was staged before a
//! commit uses it. Where uploads are staged, and their sweep, is `crate::uploads`.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use cloudbuild_proto::release::is_hash;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::{running_attempt, Publisher, ReleaseError};
use crate::state::AppState;

/// Step 2 of a publish, one content: streams `body` into the attempt's staging directory while
/// hashing it, and keeps it only when its blake3 is `hash` and it is no larger than
/// `limits.max_file_bytes`.
pub async fn stage_blob<S, E>(state: &AppState, who: &Publisher, hash: &str, body: S) -> Result<(), ReleaseError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let task = running_attempt(state, who).await?;
    if !is_hash(hash) {
        return Err(ReleaseError::BadUpload("the blob name must be its blake3 hash".into()));
    }
    let dir = crate::uploads::staging_dir(state, task.id, who.attempt);
    tokio::fs::create_dir_all(&dir).await.map_err(ReleaseError::io("creating the staging directory"))?;
    // Streamed to disk while hashed: memory stays bounded whatever the file size.
    // Two uploads of one content (two files, a retry) must not share a temporary file.
    static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{hash}.{n}.partial"));
    let written = stream_to_file(state.settings.max_file_bytes, body, &tmp).await;
    let digest = match written {
        Ok(digest) => digest,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    if digest != hash {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ReleaseError::BadUpload("the content does not match its hash".into()));
    }
    tokio::fs::rename(&tmp, dir.join(hash)).await.map_err(ReleaseError::io("staging a file"))?;
    Ok(())
}

/// The largest bundle of small files a worker may send in one request.
pub const BUNDLE_BYTES: usize = 8 << 20;

/// Step 2 of a publish, many small contents in one request (a site of 50,000 files would
/// otherwise take 50,000 requests). `body` is a run of frames, each
/// `<blake3 hex> <size in decimal>\n` followed by exactly that many bytes; every frame is
/// checked against its hash and staged like a single upload. At most [`BUNDLE_BYTES`] per
/// request (the HTTP adapter enforces it).
pub async fn stage_bundle(state: &AppState, who: &Publisher, body: Bytes) -> Result<(), ReleaseError> {
    let task = running_attempt(state, who).await?;
    let dir = crate::uploads::staging_dir(state, task.id, who.attempt);
    tokio::fs::create_dir_all(&dir).await.map_err(ReleaseError::io("creating the staging directory"))?;
    // Checked and written in one blocking task: thousands of tiny files, no thread hop each.
    let max = state.settings.max_file_bytes;
    tokio::task::spawn_blocking(move || write_bundle(&body, &dir, max))
        .await
        .map_err(|e| ReleaseError::Io { context: "staging a bundle", source: std::io::Error::other(e) })?
}

/// The staged contents of `sizes` (hash → size) that are whole: the right size, and for small
/// ones (bundles write them in place) the right hash too.
pub(super) fn staged_whole(dir: &std::path::Path, sizes: &HashMap<String, u64>) -> HashSet<String> {
    let mut whole = HashSet::new();
    for (hash, size) in sizes {
        let path = dir.join(hash);
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.len() != *size {
            continue;
        }
        if *size <= BUNDLED_FILE_BYTES {
            match std::fs::read(&path) {
                Ok(data) if blake3::hash(&data).to_hex().as_str() == hash => {}
                _ => {
                    tracing::warn!(%hash, "a staged upload does not match its hash; it is not used");
                    continue;
                }
            }
        }
        whole.insert(hash.clone());
    }
    whole
}

/// Contents up to this size may arrive in bundles (the worker's limit is 256 KiB).
const BUNDLED_FILE_BYTES: u64 = 256 << 10;

/// Checks every frame of a bundle and stages its content in `dir`.
fn write_bundle(body: &[u8], dir: &std::path::Path, max_file_bytes: u64) -> Result<(), ReleaseError> {
    let bad = |why: &str| ReleaseError::BadUpload(format!("bundle: {why}"));
    let mut rest = body;
    while !rest.is_empty() {
        let newline = rest.iter().take(96).position(|b| *b == b'\n').ok_or_else(|| bad("a frame header is missing"))?;
        let header = std::str::from_utf8(&rest[..newline]).map_err(|_| bad("a frame header is not text"))?;
        let (hash, size) = header.split_once(' ').ok_or_else(|| bad("a frame header is `<hash> <size>`"))?;
        let size: usize = size.parse().map_err(|_| bad("a frame size is not a number"))?;
        if size as u64 > max_file_bytes {
            return Err(ReleaseError::FileTooLarge(max_file_bytes));
        }
        if !is_hash(hash) {
            return Err(bad("a frame's hash must be 64 lower-case hex digits (blake3)"));
        }
        let data = rest.get(newline + 1..newline + 1 + size).ok_or_else(|| bad("a frame is cut short"))?;
        if blake3::hash(data).to_hex().as_str() != hash {
            return Err(ReleaseError::BadUpload(format!("bundle: the content of {hash} does not match its hash")));
        }
        // Written in place, without the usual rename (it costs ~1 ms a file on ext4, most of a
        // bundle's time): the commit checks small staged contents against their hash, so a
        // file cut short by a crash is never published. An earlier copy is unlinked, never
        // truncated: it may already be hard-linked into a release.
        let path = dir.join(hash);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(ReleaseError::io("staging a file")(e)),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(ReleaseError::io("staging a file"))?;
        std::io::Write::write_all(&mut file, data).map_err(ReleaseError::io("staging a file"))?;
        rest = &rest[newline + 1 + size..];
    }
    Ok(())
}

/// Writes an upload to `path`, refusing it past `limits.max_file_bytes`; returns its blake3.
async fn stream_to_file<S, E>(max_file_bytes: u64, mut body: S, path: &std::path::Path) -> Result<String, ReleaseError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut file = tokio::fs::File::create(path).await.map_err(ReleaseError::io("staging a file"))?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ReleaseError::BadUpload(format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        if size > max_file_bytes {
            return Err(ReleaseError::FileTooLarge(max_file_bytes));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(ReleaseError::io("staging a file"))?;
    }
    file.flush().await.map_err(ReleaseError::io("staging a file"))?;
    Ok(hasher.finalize().to_hex().to_string())
}
