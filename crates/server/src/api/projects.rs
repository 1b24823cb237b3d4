//! Project endpoints (over `domain::projects`): register, list, show, edit, delete, and
//! the members of a project.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cloudbuild_proto::project::{CreateProject, EditProject, Project, ProjectList};
use cloudbuild_proto::user::{MemberList, SetMember};

use super::error::ApiError;
use super::extract::ApiJson;
use crate::domain::callers::Caller;
use crate::domain::policy::ProjectAction;
use crate::domain::{hooks, projects};
use crate::state::AppState;

/// `GET /api/v1/projects`.
pub async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<ProjectList>, ApiError> {
    let mut list = projects::list(&state, &caller).await?;
    // Webhook secrets only in a project's own answer, to its maintainers.
    list.iter_mut().for_each(|p| {
        p.webhook_secret = None;
        if let Some(link) = &mut p.forge {
            link.token.clear();
        }
    });
    Ok(Json(ProjectList { projects: list }))
}

/// `POST /api/v1/projects` with `{"name", "repo", "default_branch"?, "visibility"?}`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateProject>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    let project = projects::create(&state, &caller, req).await?;
    Ok((StatusCode::CREATED, Json(hooks::present(&state, &caller, project).await?)))
}

/// `GET /api/v1/projects/{name}` (a scoped name's `/` percent-encoded).
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Project>, ApiError> {
    let project = projects::get(&state, &caller, &name, ProjectAction::Read).await?;
    Ok(Json(hooks::present(&state, &caller, project).await?))
}

/// `PATCH /api/v1/projects/{name}` with any of `{"repo", "default_branch", "visibility"}`.
pub async fn edit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<EditProject>,
) -> Result<Json<Project>, ApiError> {
    let project = projects::edit(&state, &caller, &name, req).await?;
    Ok(Json(hooks::present(&state, &caller, project).await?))
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

/// `GET /api/v1/projects/{name}/members`.
pub async fn members(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<MemberList>, ApiError> {
    Ok(Json(MemberList { members: projects::members(&state, &caller, &name).await? }))
}

/// `PUT /api/v1/projects/{name}/members/{user}` with `{"role"}`: adds a member or changes
/// their role.
pub async fn set_member(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, user)): Path<(String, String)>,
    ApiJson(req): ApiJson<SetMember>,
) -> Result<Json<MemberList>, ApiError> {
    let project = projects::set_member(&state, &caller, &name, &user, req.role).await?;
    Ok(Json(MemberList { members: project.members }))
}

/// `DELETE /api/v1/projects/{name}/members/{user}`.
pub async fn remove_member(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, user)): Path<(String, String)>,
) -> Result<Json<MemberList>, ApiError> {
    let project = projects::remove_member(&state, &caller, &name, &user).await?;
    Ok(Json(MemberList { members: project.members }))
}

/// `PUT /api/v1/projects/{name}/forge` with `{"forge", "path"?, "token"}`: commit statuses go
/// to that repository (maintainers). The answer carries no token.
pub async fn set_forge(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<cloudbuild_proto::project::SetForgeLink>,
) -> Result<Json<cloudbuild_proto::project::ForgeLink>, ApiError> {
    Ok(Json(crate::domain::statuses::link(&state, &caller, &name, req).await?))
}

/// `DELETE /api/v1/projects/{name}/forge`: no more commit statuses (maintainers).
pub async fn remove_forge(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::domain::statuses::unlink(&state, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
