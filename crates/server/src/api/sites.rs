//! The local site store: workers upload a build's files, then ask for the release switch.
//!
//! Files of attempt A of task T are staged under `<data>/staging/T-A/`; the release moves them
//! to `<data>/releases/<name>/<version>-T/` and points `<data>/sites/<env>/<name>` (served at
//! `/sites/<env>/<name>/`) at it by renaming
//! a fresh symlink over the old one. rename(2) is atomic, so a visitor sees the old release or
//! the new one, never a mix, and a failed upload leaves the current release untouched.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use cloudbuild_proto::task::{Task, TaskState};
use cloudbuild_proto::validate::{ProjectName, RelPath};
use cloudbuild_proto::worker::ReleaseResponse;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::error::ApiError;
use super::tasks::parse_id;
use super::workers::authorize_worker;
use crate::state::AppState;

async fn running_attempt(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    attempt: &str,
) -> Result<(Task, u32), ApiError> {
    authorize_worker(state, headers)?;
    let task = state.store.get_task(parse_id(id)?).await?;
    let attempt: u32 = attempt
        .parse()
        .map_err(|_| ApiError::bad_request("attempt must be a number"))?;
    if task.state != TaskState::Running || task.attempt != attempt {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_attempt",
            format!(
                "task {} is {} at attempt {}; attempt {attempt} may not publish",
                task.id, task.state, task.attempt
            ),
        ));
    }
    Ok((task, attempt))
}

fn staging_path(state: &AppState, task: &Task, attempt: u32) -> PathBuf {
    state.staging_dir().join(format!("{}-{attempt}", task.id))
}

/// `PUT /api/v1/tasks/{id}/attempts/{attempt}/files/{*path}`: stores one file of the output.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path((id, attempt, path)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let (task, attempt) = running_attempt(&state, &headers, &id, &attempt).await?;
    let rel = RelPath::parse(&path)?;
    let dest = staging_path(&state, &task, attempt).join(rel.as_str());
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| ApiError::internal("creating a staging directory", e))?;
    }
    let tmp = dest.with_extension("cloudbuild-partial");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| ApiError::internal("creating a staged file", e))?;
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        written += chunk.len() as u64;
        if written > state.settings.max_file_bytes {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "file_too_large",
                format!(
                    "{} is larger than limits.max_file_bytes ({})",
                    rel.as_str(),
                    state.settings.max_file_bytes
                ),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal("writing a staged file", e))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal("writing a staged file", e))?;
    drop(file);
    tokio::fs::rename(&tmp, &dest)
        .await
        .map_err(|e| ApiError::internal("placing a staged file", e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/tasks/{id}/attempts/{attempt}/release`: makes the staged files the site's
/// current release, atomically.
pub async fn release(
    State(state): State<Arc<AppState>>,
    Path((id, attempt)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let (task, attempt) = running_attempt(&state, &headers, &id, &attempt).await?;
    let name = ProjectName::parse(&task.name)?;
    let staged = staging_path(&state, &task, attempt);
    let (files, bytes) = count_files(&staged).await?;
    if files == 0 {
        return Err(ApiError::bad_request(
            "no files were uploaded for this attempt",
        ));
    }
    let segments = name.path_segments();
    let mut release_dir = state.releases_dir();
    segments.iter().for_each(|s| release_dir.push(s));
    let release_name = format!("{}-{}", task.version, task.id);
    release_dir.push(&release_name);
    // Each environment has its own current release: a test publish never touches prod.
    let mut link = state.sites_dir().join(task.env.as_str());
    segments.iter().for_each(|s| link.push(s));

    let io = |what: &'static str| move |e: std::io::Error| ApiError::internal(what, e);
    tokio::fs::create_dir_all(release_dir.parent().unwrap_or(FsPath::new(".")))
        .await
        .map_err(io("creating the releases directory"))?;
    if tokio::fs::try_exists(&release_dir).await.unwrap_or(false) {
        tokio::fs::remove_dir_all(&release_dir)
            .await
            .map_err(io("replacing an unfinished release"))?;
    }
    tokio::fs::rename(&staged, &release_dir)
        .await
        .map_err(io("moving the release in place"))?;
    let link_parent = link.parent().unwrap_or(FsPath::new(".")).to_path_buf();
    tokio::fs::create_dir_all(&link_parent)
        .await
        .map_err(io("creating the sites directory"))?;
    // Relative target: from sites/<segments...> up to the data dir, then into releases.
    let mut target = PathBuf::new();
    for _ in 0..segments.len() + 1 {
        target.push("..");
    }
    target.push("releases");
    segments.iter().for_each(|s| target.push(s));
    target.push(&release_name);
    let tmp_link = link_parent.join(format!(
        ".{}.{}-{attempt}.link",
        segments.last().unwrap_or(&"site"),
        task.id
    ));
    let _ = tokio::fs::remove_file(&tmp_link).await;
    tokio::fs::symlink(&target, &tmp_link)
        .await
        .map_err(io("creating the site link"))?;
    tokio::fs::rename(&tmp_link, &link)
        .await
        .map_err(io("switching the site link"))?;

    let url = format!("{}/sites/{}/{}/", state.public_url, task.env.as_str(), name);
    tracing::info!(task = task.id, %url, files, bytes, "released");
    Ok(Json(ReleaseResponse { url, files, bytes }))
}

/// Counts regular files and bytes under a directory (0 if it does not exist).
async fn count_files(dir: &FsPath) -> Result<(u64, u64), ApiError> {
    let mut stack = vec![dir.to_path_buf()];
    let (mut files, mut bytes) = (0, 0);
    while let Some(d) = stack.pop() {
        let mut rd = match tokio::fs::read_dir(&d).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ApiError::internal("reading the staged files", e)),
        };
        while let Some(entry) = rd
            .next_entry()
            .await
            .map_err(|e| ApiError::internal("reading the staged files", e))?
        {
            let meta = entry
                .metadata()
                .await
                .map_err(|e| ApiError::internal("reading the staged files", e))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    Ok((files, bytes))
}
