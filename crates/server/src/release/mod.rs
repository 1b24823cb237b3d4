//! Releases: incremental publish into an environment's target, the atomic switch of its current
//! release, history, rollback and retention.
//!
//! A worker publishes in three calls (all fenced by task and attempt):
//! 1. `POST …/publish/plan` with the manifest (path, size, blake3 of every file): the answer
//!    lists the contents the target does not have yet;
//! 2. `PUT …/publish/blobs/{hash}` for each of them (the server checks the hash), staged in the
//!    data dir; small ones travel many to a request (`POST …/publish/bundle`);
//! 3. `POST …/publish/commit` with the manifest again: every file is written under the
//!    release's immutable key (a staged blob is uploaded; known content is copied inside the
//!    target, sending nothing), the release is recorded, then made current, then old releases
//!    beyond `releases.keep` are removed. A failure before the switch leaves the current
//!    release untouched.

pub mod lock;
pub mod staging;

pub use staging::{blob, bundle, staging, sweep_staging, BUNDLE_BYTES};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use cloudbuild_proto::release::{
    is_hash, ManifestFile, PlanAnswer, PublishPlan, PublishResult, Release, ReleaseList, RollbackRequest,
    RollbackResult,
};
use cloudbuild_proto::task::{Environment, Task, TaskState};
use cloudbuild_proto::validate::{ProjectName, RelPath, Version};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::tasks::parse_id;
use crate::api::workers::authorize_worker;
use crate::state::AppState;
use crate::targets::Target;

/// Held while a project's release is recorded and switched in one environment.
pub type SwitchLock = Arc<tokio::sync::Mutex<()>>;

/// The targets of the two environments.
#[derive(Debug)]
pub struct Targets {
    pub test: Target,
    pub prod: Target,
    /// One lock per project and environment, held while a release is recorded and switched.
    pub locks: std::sync::Mutex<HashMap<(Environment, String), SwitchLock>>,
}

impl Targets {
    /// Both targets, with no switch in progress.
    pub fn new(test: Target, prod: Target) -> Self {
        Targets { test, prod, locks: Default::default() }
    }

    /// The switch lock of a project in an environment.
    pub fn project_lock(&self, env: Environment, name: &str) -> SwitchLock {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry((env, name.to_owned())).or_default().clone()
    }

    pub fn get(&self, env: Environment) -> &Target {
        match env {
            Environment::Test => &self.test,
            Environment::Prod => &self.prod,
        }
    }
}

/// The immutable key prefix of a release: `<name>/<version>/<task>`.
pub fn release_key(r: &Release) -> String {
    format!("{}/{}/{}", r.name, r.version, r.task_id)
}

/// Refuses to publish over an existing `prod` version without `force`.
pub async fn check_version_free(
    state: &AppState,
    env: Environment,
    name: &str,
    version: &str,
    force: bool,
) -> Result<(), ApiError> {
    if env != Environment::Prod || force {
        return Ok(());
    }
    let existing = state.store.list_releases(Some(Environment::Prod), name).await?;
    if existing.iter().any(|r| r.version == version) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "version_exists",
            format!("{name}@{version} is already published to prod; publish with --force to release a new build of it, or bump the version"),
        ));
    }
    Ok(())
}

pub(super) async fn running_attempt(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    attempt: &str,
) -> Result<(Task, u32), ApiError> {
    authorize_worker(state, headers).await?;
    let task = state.store.get_task(parse_id(id)?).await?;
    let attempt: u32 = attempt.parse().map_err(|_| ApiError::bad_request("attempt must be a number"))?;
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
    // A worker token only says "one of our workers": the lease key says "the one holding
    // this attempt" (it came with the assignment, over that worker's own connection).
    let key = headers.get(LEASE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let hash = crate::scheduler::lease_key_hash(key);
    if key.is_empty() || !state.store.holds_lease(task.id, attempt, &hash).await? {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_lease_holder",
            format!("only the worker holding task {} at attempt {attempt} may publish it", task.id),
        ));
    }
    Ok((task, attempt))
}

/// The header carrying the assignment's lease key on publish calls.
pub const LEASE_HEADER: &str = "x-cloudbuild-lease";

/// Authenticates a publish call (plan or commit), then checks its manifest and version.
async fn accept_plan(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    attempt: &str,
    body: &[u8],
) -> Result<(Task, u32, PublishPlan), ApiError> {
    let (task, attempt) = running_attempt(state, headers, id, attempt).await?;
    let plan = parse_plan(body)?;
    check_manifest(&plan.files)?;
    plan.site.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    check_version_free(state, task.env, &task.name, &task.version, task.force).await?;
    Ok((task, attempt, plan))
}

/// Parses a plan after authentication (an extractor would answer strangers before the check).
fn parse_plan(body: &[u8]) -> Result<PublishPlan, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_json", e.to_string()))
}

/// Checks a manifest: valid relative paths, valid hashes, no duplicates, not empty.
fn check_manifest(files: &[ManifestFile]) -> Result<(), ApiError> {
    if files.is_empty() {
        return Err(ApiError::bad_request("the manifest lists no files"));
    }
    let mut seen = HashSet::new();
    for f in files {
        RelPath::parse(&f.path)?;
        if !is_hash(&f.hash) {
            return Err(ApiError::bad_request(format!(
                "{}: the hash must be 64 lower-case hex digits (blake3)",
                f.path
            )));
        }
        if !seen.insert(f.path.as_str()) {
            return Err(ApiError::bad_request(format!("{} is listed twice", f.path)));
        }
    }
    Ok(())
}

/// `POST /api/v1/tasks/{id}/attempts/{attempt}/publish/plan`
pub async fn plan(
    State(state): State<Arc<AppState>>,
    Path((id, attempt)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PlanAnswer>, ApiError> {
    let started = std::time::Instant::now();
    let (task, _, plan) = accept_plan(&state, &headers, &id, &attempt, &body).await?;
    let wanted: Vec<String> = plan.files.iter().map(|f| f.hash.clone()).collect::<HashSet<_>>().into_iter().collect();
    let known: HashSet<String> =
        state.store.find_contents(task.env, &wanted).await?.into_iter().map(|(h, _, _)| h).collect();
    let mut missing: Vec<String> = wanted.into_iter().filter(|h| !known.contains(h)).collect();
    missing.sort();
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(task = task.id, files = plan.files.len(), missing = missing.len(), ms, "publish planned");
    Ok(Json(PlanAnswer { missing }))
}

/// `POST /api/v1/tasks/{id}/attempts/{attempt}/publish/commit`
pub async fn commit(
    State(state): State<Arc<AppState>>,
    Path((id, attempt)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PublishResult>, ApiError> {
    let (task, attempt, plan) = accept_plan(&state, &headers, &id, &attempt, &body).await?;
    let name = ProjectName::parse(&task.name)?;
    Version::parse(&task.version)?;
    let target = state.targets.get(task.env);
    let key = format!("{}/{}/{}", name, task.version, task.id);
    let staged = staging(&state, task.id, attempt);

    // Where each content comes from: this attempt's upload, or a release that has it.
    let hashes: Vec<String> = plan.files.iter().map(|f| f.hash.clone()).collect::<HashSet<_>>().into_iter().collect();
    let holders: HashMap<String, String> = state
        .store
        .find_contents(task.env, &hashes)
        .await?
        .into_iter()
        .map(|(hash, release, path)| (hash, format!("{}/{path}", release_key(&release))))
        .collect();
    let mut uploads = Vec::new();
    let (mut uploaded, mut skipped) = ((0u64, 0u64), (0u64, 0u64));
    let sizes: HashMap<String, u64> = plan.files.iter().map(|f| (f.hash.clone(), f.size)).collect();
    let dir = staged.clone();
    let whole = tokio::task::spawn_blocking(move || staging::staged_whole(&dir, &sizes))
        .await
        .map_err(|e| ApiError::internal("checking staged uploads", std::io::Error::other(e)))?;
    for f in &plan.files {
        let blob = staged.join(&f.hash);
        let source = if whole.contains(&f.hash) {
            uploaded = (uploaded.0 + 1, uploaded.1 + f.size);
            Source::Staged(blob)
        } else if let Some(from) = holders.get(&f.hash) {
            skipped = (skipped.0 + 1, skipped.1 + f.size);
            Source::Copy(from.clone())
        } else {
            return Err(ApiError::bad_request(format!(
                "the content of {} was neither uploaded nor in the target",
                f.path
            )));
        };
        uploads.push((format!("{key}/{}", f.path), f.clone(), source));
    }
    let started = std::time::Instant::now();
    let results: Vec<Result<(), String>> = futures_util::stream::iter(uploads.into_iter().map(|(to, f, source)| {
        let target = target.clone();
        async move {
            let path = &f.path;
            match source {
                Source::Staged(blob) => target.put_file(&to, &f, &blob).await.map_err(|e| format!("{path}: {e}")),
                Source::Copy(from) => target.copy(&from, &to).await.map_err(|e| format!("{path}: {e}")),
            }
        }
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "target_failed",
            format!("writing to the {} target failed: {e}", task.env.as_str()),
        ));
    }

    // Recording and switching are serialised per project and environment: concurrent publishes
    // cannot interleave their switches, and of concurrent `prod` publishes of one version
    // exactly one is recorded (the others are refused here, after their upload).
    let written = started.elapsed();
    let guard = project_guard(&state, task.env, &task.name).await?;
    // Still this attempt's to publish? (Its lease may have moved on while it uploaded; two
    // attempts must not both describe one release directory.)
    running_attempt(&state, &headers, &id, &attempt.to_string()).await?;
    check_version_free(&state, task.env, &task.name, &task.version, task.force).await?;
    target.describe_release(&name, &task.version, task.id, &plan.site, &plan.files).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "target_failed",
            format!("recording the release in the target failed: {e}"),
        )
    })?;
    if let Some(root) = target.local_root() {
        // A retried commit rewrote this directory's record.
        let dir = crate::targets::layout::project_dir(root, &name).join(&task.version).join(task.id.to_string());
        state.sites.indexes.forget(&dir);
    }
    // The newest build wins: a task switches the environment only if no newer task (higher
    // id: created later) has a release there. Otherwise its release is recorded, reachable at
    // its immutable URL and by rollback, but the newer one stays current.
    let newer = state
        .store
        .list_releases(Some(task.env), &task.name)
        .await?
        .into_iter()
        .filter(|r| r.task_id > task.id)
        .map(|r| r.task_id)
        .max();
    let new = cloudbuild_store::NewRelease {
        env: task.env,
        name: task.name.clone(),
        version: task.version.clone(),
        task_id: task.id,
        commit: task.commit.clone(),
        requested_by: task.requested_by.clone(),
    };
    let release = state.store.record_release(new, &plan.files).await?;
    if newer.is_none() {
        guard.ensure_held().await?;
        let previous = switch(&state, &release).await?;
        tracing::info!(
            task = task.id,
            release = release.id,
            previous = previous.as_ref().map(|p| p.id),
            files = plan.files.len(),
            written_ms = written.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "released"
        );
    } else {
        tracing::info!(task = task.id, release = release.id, newer = ?newer, "recorded; a newer task's release stays current");
    }
    prune(&state, task.env, &task.name).await;
    drop(guard);
    let _ = tokio::fs::remove_dir_all(&staged).await;
    let release = state.store.get_release(release.id).await?.unwrap_or(release);
    Ok(Json(PublishResult {
        superseded_by: newer,
        url: target.urls().site(&name),
        immutable_url: target.urls().release(&name, &task.version, task.id),
        release,
        uploaded_files: uploaded.0,
        uploaded_bytes: uploaded.1,
        skipped_files: skipped.0,
        skipped_bytes: skipped.1,
    }))
}

/// How long a server's hold on a project's release lock lasts unless renewed: a server that
/// dies while switching blocks the others for at most this long.
const LOCK_TTL: Duration = Duration::from_secs(30);

/// Held while a project's release is recorded and switched in one environment: this server's
/// mutex, then the lock every server on the store shares.
pub struct ProjectGuard {
    _local: tokio::sync::OwnedMutexGuard<()>,
    shared: lock::SharedLock,
}

impl ProjectGuard {
    /// Confirms the shared lock right before switching: a server whose renewals failed past the
    /// lock's TTL (Redis stalled) may have lost it to another server, and must not switch.
    async fn ensure_held(&self) -> Result<(), ApiError> {
        self.shared.ensure_held().await.map_err(ApiError::from)
    }
}

impl From<lock::LockError> for ApiError {
    fn from(e: lock::LockError) -> Self {
        match e {
            lock::LockError::Busy(_) => ApiError::new(StatusCode::CONFLICT, "switch_busy", format!("{e}; try again")),
            lock::LockError::Lost(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "lock_lost",
                format!("{e}; nothing was switched, try again"),
            ),
            lock::LockError::Store(s) => s.into(),
        }
    }
}

/// Serialises recording and switching of a project in an environment, across servers.
async fn project_guard(state: &AppState, env: Environment, name: &str) -> Result<ProjectGuard, ApiError> {
    static HOLDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let local = state.targets.project_lock(env, name).lock_owned().await;
    let lock_name = format!("release/{}/{name}", env.as_str());
    let n = HOLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let holder = format!("{}#{}#{n}", state.public_url, std::process::id());
    let wait = Duration::from_secs(state.settings.limits.publish_secs);
    let shared = lock::SharedLock::acquire(state.store.clone(), lock_name, holder, LOCK_TTL, wait).await?;
    Ok(ProjectGuard { _local: local, shared })
}

enum Source {
    Staged(PathBuf),
    Copy(String),
}

/// Makes `release` current in its target, then in the store. Returns the release it replaced.
async fn switch(state: &AppState, release: &Release) -> Result<Option<Release>, ApiError> {
    let target = state.targets.get(release.env);
    let current = state.store.list_releases(Some(release.env), &release.name).await?.into_iter().find(|r| r.current);
    let files = state.store.release_files(release.id).await?;
    let prev_files = match &current {
        Some(c) => state.store.release_files(c.id).await?,
        None => Vec::new(),
    };
    let prev_key = current.as_ref().map(release_key);
    let previous = prev_key.as_deref().map(|k| (k, prev_files.as_slice()));
    if let Err(e) = target.activate(&release.name, &release_key(release), &files, previous).await {
        // A half-done S3 switch leaves a mix in the current copy: put the previous release
        // back whole (nothing skipped), so the next switch starts from a clean copy.
        if let (Some(c), Some(key)) = (&current, &prev_key) {
            if let Err(restore) = target.activate(&c.name, key, &prev_files, None).await {
                tracing::error!(release = c.id, "restoring the previous current release failed too: {restore}");
            }
        }
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "target_failed",
            format!("switching the current release failed: {e}"),
        ));
    }
    Ok(state.store.set_current(release.id).await?)
}

/// Removes releases beyond `releases.keep` from the target (never the current one). Failures are
/// logged and retried at the next publish.
async fn prune(state: &AppState, env: Environment, name: &str) {
    let Ok(all) = state.store.list_releases(Some(env), name).await else { return };
    let keep = state.settings.keep_releases as usize;
    let old: Vec<&Release> = all.iter().filter(|r| !r.pruned).skip(keep).filter(|r| !r.current).collect();
    let mut pruned = Vec::new();
    for r in old {
        let files = state.store.release_files(r.id).await.unwrap_or_default();
        let Ok(name) = ProjectName::parse(&r.name) else { continue };
        match state.targets.get(env).remove_release(&name, &r.version, r.task_id, &files).await {
            Ok(()) => {
                pruned.push(r.id);
                if let Some(root) = state.targets.get(env).local_root() {
                    let dir =
                        crate::targets::layout::project_dir(root, &name).join(&r.version).join(r.task_id.to_string());
                    state.sites.indexes.forget(&dir);
                }
            }
            Err(e) => tracing::warn!(release = r.id, "pruning failed: {e}"),
        }
    }
    if !pruned.is_empty() {
        tracing::info!(%name, env = env.as_str(), count = pruned.len(), "pruned old releases");
        if let Err(e) = state.store.mark_pruned(&pruned).await {
            tracing::warn!("recording pruned releases failed: {e}");
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    name: String,
    env: Option<Environment>,
}

/// `GET /api/v1/releases?name=&env=`
pub async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ReleaseList>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let name = ProjectName::parse(&p.name)?;
    Ok(Json(ReleaseList { releases: state.store.list_releases(p.env, name.as_str()).await? }))
}

/// `POST /api/v1/releases/rollback`: switches to an earlier release, without rebuilding.
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(req): Json<RollbackRequest>,
) -> Result<Json<RollbackResult>, ApiError> {
    let name = ProjectName::parse(&req.name)?;
    let guard = project_guard(&state, req.env, name.as_str()).await?;
    let all = state.store.list_releases(Some(req.env), name.as_str()).await?;
    let current = all.iter().find(|r| r.current).cloned();
    let live = all.iter().filter(|r| !r.pruned);
    let chosen = match &req.to {
        Some(v) => {
            Version::parse(v)?;
            live.clone().find(|r| &r.version == v).ok_or_else(|| {
                let versions: Vec<&str> = all.iter().filter(|r| !r.pruned).map(|r| r.version.as_str()).collect();
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "{name} has no {} release of version {v} (available: {})",
                        req.env.as_str(),
                        versions.join(", ")
                    ),
                )
            })?
        }
        // The release before the current one (releases are newest first).
        None => live.skip_while(|r| !r.current).nth(1).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "nothing_to_roll_back_to",
                format!("{name} has no {} release before the current one", req.env.as_str()),
            )
        })?,
    }
    .clone();
    if chosen.current {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_current",
            format!("{name}@{} is already current in {}", chosen.version, req.env.as_str()),
        ));
    }
    guard.ensure_held().await?;
    let previous = switch(&state, &chosen).await?;
    drop(guard);
    tracing::info!(by = %caller.0, %name, env = req.env.as_str(), release = chosen.id, "rolled back");
    let target = state.targets.get(req.env);
    let release = state.store.get_release(chosen.id).await?.unwrap_or(chosen);
    Ok(Json(RollbackResult {
        url: target.urls().site(&name),
        immutable_url: target.urls().release(&name, &release.version, release.task_id),
        release,
        previous: previous.or(current),
    }))
}
