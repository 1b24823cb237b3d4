//! Preview endpoints (over `domain::previews`): a project's open pull-request previews, and
//! removing one before its pull request is closed.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cloudbuild_proto::preview::PreviewList;
use cloudbuild_proto::task::parse_pull_request;
use cloudbuild_proto::validate::ValidationError;

use super::error::ApiError;
use crate::domain::callers::Caller;
use crate::domain::previews;
use crate::state::AppState;

/// `GET /api/v1/projects/{name}/previews`: its open previews, by number, with their URLs
/// (its readers).
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PreviewList>, ApiError> {
    Ok(Json(previews::list(&state, &caller, &name).await?))
}

/// `DELETE /api/v1/projects/{name}/previews/{number}` (`12` or `pr-12`): 204 once its builds
/// are stopped and its site removed (those who may build its previews: developers).
pub async fn remove(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, number)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let number = parse_pull_request(number.strip_prefix("pr-").unwrap_or(&number)).ok_or_else(|| {
        ApiError::from(ValidationError {
            field: "pull request",
            reason: format!("`{number}` is not a pull request number (12 or pr-12)"),
        })
    })?;
    previews::remove_now(&state, &caller, &name, number).await?;
    Ok(StatusCode::NO_CONTENT)
}
