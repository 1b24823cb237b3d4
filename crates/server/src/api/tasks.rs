//! Task endpoints: create, get, list, cancel, retry.

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudbuild_proto::event::EventBody;
use cloudbuild_proto::task::{actions, CreateTask, Task, TaskId, TaskPage, TaskState, Trigger};
use cloudbuild_proto::validate::{is_internal_ip, CommandLine, CommitSha, GitRef, ProjectName, RepoUrl, Version};
use cloudbuild_proto::worker::{TaskAttempt, WorkerState};
use cloudbuild_store::{Appended, CancelOutcome, Fence, NewTask, Notice, TaskQuery};
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use crate::state::AppState;

/// `Json<T>` whose rejections are `ApiError`s (JSON bodies, stable codes).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(ApiError::new(rej.status(), "invalid_json", rej.body_text())),
        }
    }
}

/// Parses a task id from the path, with a JSON error on garbage.
pub fn parse_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse::<TaskId>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("`{raw}` is not a task id (a positive integer)")))
}

/// Validates a request into a store row. Every field is checked before anything is stored.
pub fn validate(
    state: &AppState,
    req: &CreateTask,
    caller: &Caller,
    trigger: Trigger,
    retry_of: Option<TaskId>,
) -> Result<NewTask, ApiError> {
    let s = &state.settings;
    let repo = RepoUrl::parse(req.repo.trim(), &s.repo_policy)?;
    let branch = GitRef::parse(&req.branch)?;
    let name = ProjectName::parse(&req.name)?;
    let version = Version::parse(&req.version)?;
    let commit = req.commit.as_deref().map(str::trim).map(CommitSha::parse).transpose()?;
    let build_cmd = match req.build_cmd.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => Some(CommandLine::parse(c, "build command", &s.command_policy)?.to_string()),
        None => None,
    };
    Ok(NewTask {
        name: name.to_string(),
        version: version.to_string(),
        repo: repo.to_string(),
        branch: branch.to_string(),
        commit: commit.map(|c| c.to_string()),
        build_cmd,
        env: req.env,
        trigger,
        force: req.force,
        requested_by: caller.0.clone(),
        retry_of,
        output_limit: s.output_bytes,
        labels: cloudbuild_proto::validate::labels(&req.labels)?,
    })
}

/// Refuses a repository whose host name resolves to a loopback, private or link-local address
/// (the literal forms were refused by validation). A name that does not resolve is let through:
/// the clone fails on it anyway. The answer at clone time can differ (DNS rebinding); the
/// worker's network is the boundary for that.
pub async fn check_repo_host(state: &AppState, repo: &str) -> Result<(), ApiError> {
    if state.settings.repo_policy.allow_local_hosts {
        return Ok(());
    }
    let Ok(url) = RepoUrl::parse(repo, &state.settings.repo_policy) else { return Ok(()) };
    let Some(host) = url.host().map(str::to_owned) else { return Ok(()) };
    let lookup = tokio::time::timeout(std::time::Duration::from_secs(3), tokio::net::lookup_host((host.as_str(), 443)));
    if let Ok(Ok(addrs)) = lookup.await {
        if let Some(addr) = addrs.into_iter().find(|a| is_internal_ip(a.ip())) {
            return Err(ApiError::bad_request(format!(
                "invalid repo: host `{host}` resolves to {}, a local or private address",
                addr.ip()
            )));
        }
    }
    Ok(())
}

/// Stores a validated task, announces its first event and wakes the schedulers.
pub async fn submit(state: &AppState, new: NewTask) -> Result<Task, ApiError> {
    let (task, event) = state.store.create_task(new).await?;
    state.hub.published(task.id, std::slice::from_ref(&event));
    state.scheduler.task_queued();
    state.hub.announce(Notice::Queued);
    tracing::info!(task = task.id, name = %task.name, version = %task.version, "task queued");
    say_if_no_worker_fits(state, &task).await;
    Ok(task)
}

/// A task that no connected worker can take (none is connected, or none has its labels) says
/// so in its log instead of waiting silently; it still starts as soon as a fitting worker
/// connects.
async fn say_if_no_worker_fits(state: &AppState, task: &Task) {
    // The usual case is answered from memory; only then ask the registry (other servers).
    if state.scheduler.any_fits(&task.labels) {
        return;
    }
    let Ok(workers) = state.store.list_workers().await else { return };
    let lease = state.settings.lease_secs as i64 * 1_000_000;
    let now = cloudbuild_proto::time::Timestamp::now();
    let fits = workers
        .iter()
        .filter(|w| w.state == WorkerState::Connected && now.0 - w.last_heartbeat.0 <= lease)
        .any(|w| cloudbuild_store::labels_match(&task.labels, &w.labels));
    if fits {
        return;
    }
    let message = if task.labels.is_empty() {
        "no worker is connected; the task waits until one connects (see `cloudbuild workers`)".to_owned()
    } else {
        format!(
            "no connected worker has the labels {}; the task waits until one connects (see `cloudbuild workers`)",
            task.labels.join(", ")
        )
    };
    let body = EventBody::Stage { action: actions::WAITING.into(), message };
    if let Ok(Appended::Events(events)) = state.store.append_event(task.id, Fence::Server, body).await {
        state.hub.published(task.id, &events);
    }
}

fn created(task: Task) -> Response {
    let location = format!("/api/v1/tasks/{}", task.id);
    (StatusCode::CREATED, [(header::LOCATION, location)], Json(task)).into_response()
}

/// `POST /api/v1/tasks`
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTask>,
) -> Result<Response, ApiError> {
    if req.trigger == Trigger::Retry {
        return Err(ApiError::bad_request("trigger `retry` is set by POST /api/v1/tasks/{id}/retry only"));
    }
    let new = validate(&state, &req, &caller, req.trigger, None)?;
    check_repo_host(&state, &new.repo).await?;
    // Fail fast: a build that could not be published is not started.
    crate::release::check_version_free(&state, new.env, &new.name, &new.version, new.force).await?;
    Ok(created(submit(&state, new).await?))
}

/// `GET /api/v1/tasks/{id}`
pub async fn get(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(state.store.get_task(parse_id(&id)?).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    name: Option<String>,
    state: Option<String>,
    before: Option<TaskId>,
    limit: Option<u32>,
}

/// `GET /api/v1/tasks?name=&state=&before=&limit=`
pub async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let task_state = match p.state.as_deref() {
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            let names: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(format!("unknown state `{s}` (one of {})", names.join(", ")))
        })?),
        None => None,
    };
    let limit = p.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 200"));
    }
    let query = TaskQuery { name: p.name, state: task_state, before: p.before, limit: limit + 1 };
    let mut tasks = state.store.list_tasks(&query).await?;
    let next_before = if tasks.len() > limit as usize {
        tasks.truncate(limit as usize);
        tasks.last().map(|t| t.id)
    } else {
        None
    };
    Ok(Json(TaskPage { tasks, next_before }))
}

/// `POST /api/v1/tasks/{id}/cancel`: 200 when it is (or was already) cancelled, 202 while the
/// worker stops it, 409 when it already ended otherwise.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    Ok(match state.store.request_cancel(id).await? {
        CancelOutcome::CancelledQueued(task, events) => {
            state.hub.published(id, &events);
            tracing::info!(task = id, by = %caller.0, "cancelled while queued");
            (StatusCode::OK, Json(task)).into_response()
        }
        CancelOutcome::Requested(task) => {
            let attempt = TaskAttempt { task_id: id, attempt: task.attempt };
            state.scheduler.cancel(task.worker.as_deref(), attempt);
            if let Some(worker) = task.worker.clone().filter(|w| !state.scheduler.is_connected(w)) {
                // Its worker is connected to another server: that one forwards the cancel.
                state.hub.announce(Notice::Cancel { task: id, attempt: task.attempt, worker });
            }
            tracing::info!(task = id, by = %caller.0, "cancel sent to worker");
            (StatusCode::ACCEPTED, Json(task)).into_response()
        }
        CancelOutcome::AlreadyCancelled(task) => (StatusCode::OK, Json(task)).into_response(),
        CancelOutcome::AlreadyFinished(task) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_finished",
                format!("task {id} already ended as {}; there is nothing to cancel", task.state),
            ))
        }
    })
}

/// `POST /api/v1/tasks/{id}/retry`: a new task with the same inputs, linked to the old one. It
/// builds the commit the old task built (or was pinned to), not the branch's head today: a
/// retry must not record another commit under the old version. A task that never resolved its
/// commit (it failed while cloning) is retried from the branch's head; the worker's identity
/// check (the built `package.json` must carry the task's name and version) still holds.
pub async fn retry(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let old = state.store.get_task(parse_id(&id)?).await?;
    if !old.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_finished",
            format!("task {} is still {}; cancel it or wait before retrying", old.id, old.state),
        ));
    }
    let req = CreateTask {
        repo: old.repo,
        branch: old.branch,
        commit: old.commit,
        name: old.name,
        version: old.version,
        build_cmd: old.build_cmd,
        env: old.env,
        trigger: Trigger::Retry,
        force: old.force,
        labels: old.labels,
    };
    // Re-validated against today's policy: a retry must not bypass a tightened configuration.
    let new = validate(&state, &req, &caller, Trigger::Retry, Some(old.id))?;
    check_repo_host(&state, &new.repo).await?;
    Ok(created(submit(&state, new).await?))
}
