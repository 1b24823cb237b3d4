//! Project endpoints (over `domain::projects`): register, list, show, edit, delete.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cloudbuild_proto::project::{CreateProject, EditProject, Project, ProjectList};

use super::error::ApiError;
use super::extract::ApiJson;
use crate::domain::callers::Caller;
use crate::domain::projects;
use crate::state::AppState;

/// `GET /api/v1/projects`.
pub async fn list(State(state): State<Arc<AppState>>, _caller: Caller) -> Result<Json<ProjectList>, ApiError> {
    Ok(Json(ProjectList { projects: projects::list(&state).await? }))
}

/// `POST /api/v1/projects` with `{"name", "repo", "default_branch"?, "visibility"?}`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateProject>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    Ok((StatusCode::CREATED, Json(projects::create(&state, &caller, req).await?)))
}

/// `GET /api/v1/projects/{name}` (a scoped name's `/` percent-encoded).
pub async fn get(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Project>, ApiError> {
    Ok(Json(projects::get(&state, &name).await?))
}

/// `PATCH /api/v1/projects/{name}` with any of `{"repo", "default_branch", "visibility"}`.
pub async fn edit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<EditProject>,
) -> Result<Json<Project>, ApiError> {
    Ok(Json(projects::edit(&state, &caller, &name, req).await?))
}

/// `DELETE /api/v1/projects/{name}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    projects::delete(&state, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
