//! Release gate endpoints (over `domain::freeze` and `domain::approvals`): global freeze
//! windows (admins change them), a project's own (its maintainers), whether releases are
//! frozen now, the override that releases one gated task, and approving or rejecting a publish
//! that awaits approval.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cloudbuild_proto::gate::{Decision, FreezeList, FreezeStatus, FreezeView, NewFreezeWindow, OverrideRequest};
use cloudbuild_proto::task::Task;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, TaskIdParam};
use crate::domain::callers::Caller;
use crate::domain::{approvals, freeze};
use crate::state::AppState;

/// `GET /api/v1/freeze`: the global windows, whether each holds now and its next period.
pub async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<FreezeList>, ApiError> {
    Ok(Json(FreezeList { windows: freeze::list(&state, &caller, None).await? }))
}

/// `POST /api/v1/freeze` with a window (`reason`, `from`/`to` or `start_cron` with `end_cron`
/// or `duration_secs`, `timezone`, `environments`, `rollbacks`, `override_role`): 201 (admins).
pub async fn add(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<NewFreezeWindow>,
) -> Result<(StatusCode, Json<FreezeView>), ApiError> {
    Ok((StatusCode::CREATED, Json(freeze::add(&state, &caller, None, req).await?)))
}

/// `DELETE /api/v1/freeze/{id}`: 204 (admins).
pub async fn remove(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    freeze::remove(&state, &caller, None, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/projects/{name}/freeze`: the windows that apply to the project, global and
/// its own (its readers).
pub async fn list_project(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<FreezeList>, ApiError> {
    Ok(Json(FreezeList { windows: freeze::list(&state, &caller, Some(&name)).await? }))
}

/// `POST /api/v1/projects/{name}/freeze`: 201 (its maintainers).
pub async fn add_project(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<NewFreezeWindow>,
) -> Result<(StatusCode, Json<FreezeView>), ApiError> {
    Ok((StatusCode::CREATED, Json(freeze::add(&state, &caller, Some(&name), req).await?)))
}

/// `DELETE /api/v1/projects/{name}/freeze/{id}`: 204 (its maintainers).
pub async fn remove_project(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    freeze::remove(&state, &caller, Some(&name), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    project: Option<String>,
}

/// `GET /api/v1/freeze/status[?project=NAME]`: whether each environment is frozen now.
pub async fn status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<StatusQuery>,
) -> Result<Json<FreezeStatus>, ApiError> {
    Ok(Json(freeze::status(&state, &caller, q.project.as_deref()).await?))
}

/// `POST /api/v1/tasks/{id}/override` with `{"reason"}`: queues a gated task now (admins, or
/// the role its windows name); audited and written in its log.
pub async fn override_task(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    TaskIdParam(id): TaskIdParam,
    ApiJson(req): ApiJson<OverrideRequest>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(freeze::override_gated(&state, &caller, id, &req.reason).await?))
}

/// `POST /api/v1/tasks/{id}/approve` with `{"reason"?}`: a maintainer other than the requester
/// (or an admin) lets a `prod` publish go on: queued, or gated while a window holds it.
pub async fn approve(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    TaskIdParam(id): TaskIdParam,
    ApiJson(req): ApiJson<Decision>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(approvals::approve(&state, &caller, id, req.reason.as_deref()).await?))
}

/// `POST /api/v1/tasks/{id}/reject` with `{"reason"}`: ends a publish awaiting approval.
pub async fn reject(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    TaskIdParam(id): TaskIdParam,
    ApiJson(req): ApiJson<Decision>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(approvals::reject(&state, &caller, id, req.reason.as_deref().unwrap_or_default()).await?))
}
