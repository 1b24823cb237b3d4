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
mod rollback;
pub mod staging;

pub use rollback::rollback;
pub use staging::{stage_blob, stage_bundle, BUNDLE_BYTES};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use cloudbuild_proto::release::{is_hash, ManifestFile, PlanAnswer, PublishPlan, PublishResult, Release};
use cloudbuild_proto::task::{Environment, Task, TaskId, TaskState};
use cloudbuild_proto::validate::{ProjectName, RelPath, ValidationError, Version};
use cloudbuild_store::StoreError;
use futures_util::StreamExt;

use super::callers::Caller;
use super::policy::{self, ProjectAction};
use super::projects::ProjectError;
use crate::state::AppState;

/// Why a publish call, a rollback or a release listing was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The manifest or a bundle is malformed (paths, hashes, frames).
    #[error("{0}")]
    BadUpload(String),
    /// The plan is not the JSON a publish plan is.
    #[error("{0}")]
    UnreadablePlan(String),
    #[error("task {task} is {state} at attempt {current}; attempt {attempt} may not publish")]
    StaleAttempt { task: TaskId, state: TaskState, current: u32, attempt: u32 },
    #[error("only the worker holding task {task} at attempt {attempt} may publish it")]
    NotLeaseHolder { task: TaskId, attempt: u32 },
    #[error("{name}@{version} is already published to prod; publish with --force to release a new build of it, or bump the version")]
    VersionExists { name: String, version: String },
    #[error("{name} has no {env} release of version {version} (available: {available})")]
    NoSuchVersion { name: String, env: String, version: String, available: String },
    #[error("{name} has no {env} release before the current one{hint}")]
    NothingToRollBack { name: String, env: String, hint: String },
    #[error("{name} has no {env} release yet: there is nothing to roll back")]
    NoReleases { name: String, env: String },
    #[error("pull request #{0} was closed (or its preview expired): its preview is not published")]
    PreviewClosed(u32),
    #[error("{name}@{version} is already current in {env}")]
    AlreadyCurrent { name: String, version: String, env: String },
    /// The environment's target (local directory or bucket) failed.
    #[error("{0}")]
    Target(String),
    /// The task's project builds from another repository now.
    #[error(transparent)]
    Project(#[from] crate::domain::projects::ProjectError),
    #[error("a file is larger than limits.max_file_bytes ({0})")]
    FileTooLarge(u64),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// A freeze window holds rollbacks of the environment.
    #[error(transparent)]
    Gate(#[from] Box<crate::domain::freeze::FreezeError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server's own disk failed while staging (`context` says doing what).
    #[error("{context}: {source}")]
    Io { context: &'static str, source: std::io::Error },
}

impl ReleaseError {
    /// An I/O failure of the server itself, with what it was doing.
    pub fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> ReleaseError {
        move |source| ReleaseError::Io { context, source }
    }
}

/// Who publishes: the task and attempt of a publish call, with the lease key that came with
/// the assignment (over the holding worker's own connection).
#[derive(Debug, Clone)]
pub struct Publisher {
    pub task: TaskId,
    pub attempt: u32,
    pub lease_key: String,
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
) -> Result<(), ReleaseError> {
    if env != Environment::Prod || force {
        return Ok(());
    }
    let existing = state.store.list_releases(Some(Environment::Prod), name).await?;
    if existing.iter().any(|r| r.version == version) {
        return Err(ReleaseError::VersionExists { name: name.to_owned(), version: version.to_owned() });
    }
    Ok(())
}

/// Checks that `who` may publish: its task runs at that attempt, and it holds the attempt's
/// lease (a worker token only says "one of our workers"; the lease key says "the one holding
/// this attempt").
pub async fn running_attempt(state: &AppState, who: &Publisher) -> Result<Task, ReleaseError> {
    let task = state.store.get_task(who.task).await?;
    if task.state != TaskState::Running || task.attempt != who.attempt {
        return Err(ReleaseError::StaleAttempt {
            task: task.id,
            state: task.state,
            current: task.attempt,
            attempt: who.attempt,
        });
    }
    let hash = crate::secrets::lease_key_hash(&who.lease_key);
    if who.lease_key.is_empty() || !state.store.holds_lease(task.id, who.attempt, &hash).await? {
        return Err(ReleaseError::NotLeaseHolder { task: task.id, attempt: who.attempt });
    }
    Ok(task)
}

/// Checks a publish call (plan or commit): its attempt, then its manifest and version.
async fn accept_plan(state: &AppState, who: &Publisher, body: &[u8]) -> Result<(Task, PublishPlan), ReleaseError> {
    let task = running_attempt(state, who).await?;
    let plan = parse_plan(body)?;
    check_manifest(&plan.files)?;
    plan.site.validate().map_err(|e| ReleaseError::BadUpload(e.to_string()))?;
    check_version_free(state, task.env, &task.name, &task.version, task.force).await?;
    Ok((task, plan))
}

/// Parses a plan after authentication (an extractor would answer strangers before the check).
fn parse_plan(body: &[u8]) -> Result<PublishPlan, ReleaseError> {
    serde_json::from_slice(body).map_err(|e| ReleaseError::UnreadablePlan(e.to_string()))
}

/// Checks a manifest: valid relative paths, valid hashes, no duplicates, not empty.
fn check_manifest(files: &[ManifestFile]) -> Result<(), ReleaseError> {
    if files.is_empty() {
        return Err(ReleaseError::BadUpload("the manifest lists no files".into()));
    }
    let mut seen = HashSet::new();
    for f in files {
        RelPath::parse(&f.path)?;
        if !is_hash(&f.hash) {
            return Err(ReleaseError::BadUpload(format!(
                "{}: the hash must be 64 lower-case hex digits (blake3)",
                f.path
            )));
        }
        if !seen.insert(f.path.as_str()) {
            return Err(ReleaseError::BadUpload(format!("{} is listed twice", f.path)));
        }
    }
    Ok(())
}

/// Step 1 of a publish: which contents of the manifest (`body`, a JSON [`PublishPlan`]) the
/// target lacks.
pub async fn plan(state: &AppState, who: &Publisher, body: &[u8]) -> Result<PlanAnswer, ReleaseError> {
    let started = std::time::Instant::now();
    let (task, plan) = accept_plan(state, who, body).await?;
    // Before anything is uploaded; checked again at the commit, under the project's lock.
    crate::domain::projects::check_still_bound(state, &task.name, &task.repo).await?;
    crate::domain::previews::ensure_open(state, &task).await?;
    let wanted: Vec<String> = plan.files.iter().map(|f| f.hash.clone()).collect::<HashSet<_>>().into_iter().collect();
    let known: HashSet<String> =
        state.store.find_contents(task.env, &wanted).await?.into_iter().map(|holder| holder.hash).collect();
    let mut missing: Vec<String> = wanted.into_iter().filter(|h| !known.contains(h)).collect();
    missing.sort();
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(task = task.id, files = plan.files.len(), missing = missing.len(), ms, "publish planned");
    Ok(PlanAnswer { missing })
}

/// Step 3 of a publish: writes every file of the manifest (`body`) under the release's
/// immutable key, records the release and, unless a newer task released already, makes it
/// current; then prunes old releases.
pub async fn commit(state: &AppState, who: &Publisher, body: &[u8]) -> Result<PublishResult, ReleaseError> {
    let (task, plan) = accept_plan(state, who, body).await?;
    // Before anything is written: a closed preview's target directory stays removed.
    crate::domain::previews::ensure_open(state, &task).await?;
    crate::domain::freeze::check_commit(state, &task).await.map_err(Box::new)?;
    let attempt = who.attempt;
    let name = ProjectName::parse(&task.name)?;
    Version::parse(&task.version)?;
    let target = state.targets.get(task.env);
    let key = format!("{}/{}/{}", name, task.version, task.id);
    let staged = crate::uploads::staging_dir(state, task.id, attempt);

    // Where each content comes from: this attempt's upload, or a release that has it.
    let hashes: Vec<String> = plan.files.iter().map(|f| f.hash.clone()).collect::<HashSet<_>>().into_iter().collect();
    let holders: HashMap<String, String> = state
        .store
        .find_contents(task.env, &hashes)
        .await?
        .into_iter()
        .map(|h| (h.hash, format!("{}/{}", release_key(&h.release), h.path)))
        .collect();
    let mut uploads = Vec::new();
    let (mut uploaded, mut skipped) = ((0u64, 0u64), (0u64, 0u64));
    let sizes: HashMap<String, u64> = plan.files.iter().map(|f| (f.hash.clone(), f.size)).collect();
    let dir = staged.clone();
    let whole = tokio::task::spawn_blocking(move || staging::staged_whole(&dir, &sizes))
        .await
        .map_err(|e| ReleaseError::Io { context: "checking staged uploads", source: std::io::Error::other(e) })?;
    for f in &plan.files {
        let blob = staged.join(&f.hash);
        let source = if whole.contains(&f.hash) {
            uploaded = (uploaded.0 + 1, uploaded.1 + f.size);
            Source::Staged(blob)
        } else if let Some(from) = holders.get(&f.hash) {
            skipped = (skipped.0 + 1, skipped.1 + f.size);
            Source::Copy(from.clone())
        } else {
            return Err(ReleaseError::BadUpload(format!(
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
                Source::Copy(from) => target.copy(&from, &to, &f.hash).await.map_err(|e| format!("{path}: {e}")),
            }
        }
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(ReleaseError::Target(format!("writing to the {} target failed: {e}", task.env.as_str())));
    }

    // Recording and switching are serialised per project and environment: concurrent publishes
    // cannot interleave their switches, and of concurrent `prod` publishes of one version
    // exactly one is recorded (the others are refused here, after their upload).
    let written = started.elapsed();
    let guard = project_guard(state, task.env, &task.name).await?;
    // Still this attempt's to publish? (Its lease may have moved on while it uploaded; two
    // attempts must not both describe one release directory.)
    running_attempt(state, who).await?;
    if let Err(closed) = crate::domain::previews::ensure_open(state, &task).await {
        // Removed while this upload ran: what it wrote goes, and the site stays removed.
        if let Err(e) = target.remove_site(&name).await {
            tracing::warn!(task = task.id, "removing what a closed preview's publish wrote failed: {e}");
        }
        return Err(closed);
    }
    check_version_free(state, task.env, &task.name, &task.version, task.force).await?;
    target
        .describe_release(&name, &task.version, task.id, &plan.site, &plan.files)
        .await
        .map_err(|e| ReleaseError::Target(format!("recording the release in the target failed: {e}")))?;
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
    crate::domain::projects::check_still_bound(state, &task.name, &task.repo).await?;
    let release = state.store.record_release(new, &plan.files).await?;
    // Done on the task's behalf: the audit log names whoever asked for the task.
    let asker = Caller::on_behalf_of(task.requested_by.clone());
    if newer.is_none() {
        guard.ensure_held().await?;
        let switched = switch(state, &release).await;
        let target = format!(
            "release {} ({} {} of task {}) in {}",
            release.id,
            task.name,
            task.version,
            task.id,
            task.env.as_str()
        );
        crate::domain::audit::record(state, &asker, "release.switch", target, Some(&task.name), &switched).await;
        let previous = switched?;
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
    prune(state, &asker, task.env, &task.name).await;
    drop(guard);
    let _ = tokio::fs::remove_dir_all(&staged).await;
    let release = state.store.get_release(release.id).await?.unwrap_or(release);
    Ok(PublishResult {
        superseded_by: newer,
        url: target.urls().site(&name),
        immutable_url: target.urls().release(&name, &task.version, task.id),
        release,
        uploaded_files: uploaded.0,
        uploaded_bytes: uploaded.1,
        skipped_files: skipped.0,
        skipped_bytes: skipped.1,
    })
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
    async fn ensure_held(&self) -> Result<(), ReleaseError> {
        Ok(self.shared.ensure_held().await?)
    }
}

/// Serialises recording and switching of a project in an environment, across servers.
pub(crate) async fn project_guard(
    state: &AppState,
    env: Environment,
    name: &str,
) -> Result<ProjectGuard, ReleaseError> {
    static HOLDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let local = state.targets.project_lock(env, name).lock_owned().await;
    let lock_name = format!("release/{}/{name}", env.as_str());
    let n = HOLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let holder = format!("{}#{}#{n}", state.public_url, std::process::id());
    let wait = Duration::from_secs(state.settings.timeouts.publish_secs);
    let shared = lock::SharedLock::acquire(state.store.clone(), lock_name, holder, LOCK_TTL, wait).await?;
    Ok(ProjectGuard { _local: local, shared })
}

enum Source {
    Staged(PathBuf),
    Copy(String),
}

/// Makes `release` current in its target, then in the store. Returns the release it replaced.
async fn switch(state: &AppState, release: &Release) -> Result<Option<Release>, ReleaseError> {
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
        return Err(ReleaseError::Target(format!("switching the current release failed: {e}")));
    }
    Ok(state.store.set_current(release.id).await?)
}

/// Removes releases beyond `releases.keep` from the target (never the current one). Failures are
/// logged and retried at the next publish.
async fn prune(state: &AppState, asker: &Caller, env: Environment, name: &str) {
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
        tracing::info!(%name, %env, count = pruned.len(), "pruned old releases");
        let ids: Vec<String> = pruned.iter().map(i64::to_string).collect();
        let target = format!("releases {} of {name} in {} (keeping {keep})", ids.join(", "), env.as_str());
        crate::domain::audit::record(
            state,
            asker,
            "release.prune",
            target,
            Some(name),
            &Ok::<(), std::convert::Infallible>(()),
        )
        .await;
        if let Err(e) = state.store.mark_pruned(&pruned).await {
            tracing::warn!("recording pruned releases failed: {e}");
        }
    }
}

/// The files of a project's current release in an environment; `None` when it has none.
pub async fn current_files(
    state: &AppState,
    env: Environment,
    name: &ProjectName,
) -> Result<Option<Vec<ManifestFile>>, ReleaseError> {
    let releases = state.store.list_releases(Some(env), name.as_str()).await?;
    let Some(current) = releases.into_iter().find(|r| r.current) else { return Ok(None) };
    Ok(Some(state.store.release_files(current.id).await?))
}

/// A project's releases in one environment or both, newest first (its readers).
pub async fn list(
    state: &AppState,
    caller: &Caller,
    name: &str,
    env: Option<Environment>,
) -> Result<Vec<Release>, ReleaseError> {
    let name = ProjectName::parse(name)?;
    policy::project(state, caller, name.as_str(), ProjectAction::Read, || format!("project {name}"))
        .await
        .map_err(ProjectError::from)?;
    Ok(state.store.list_releases(env, name.as_str()).await?)
}
