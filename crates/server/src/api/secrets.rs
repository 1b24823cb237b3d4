//! Project secret endpoints (over `domain::secrets`): set, list (names only), delete.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cloudbuild_proto::secret::{SecretInfo, SetSecret};
use cloudbuild_proto::task::Environment;
use serde::Serialize;

use super::error::ApiError;
use super::extract::ApiJson;
use crate::domain::callers::Caller;
use crate::domain::secrets;
use crate::state::AppState;

/// `GET /api/v1/projects/{name}/secrets`.
#[derive(Debug, Serialize)]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

fn env(s: &str) -> Result<Environment, ApiError> {
    Environment::parse(s)
        .ok_or_else(|| ApiError::bad_request(format!("invalid env: `{s}` is not an environment (test or prod)")))
}

/// `GET /api/v1/projects/{name}/secrets`: names, environments, stages, dates; never values.
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<SecretList>, ApiError> {
    Ok(Json(SecretList { secrets: secrets::list(&state, &caller, &project).await? }))
}

/// `PUT /api/v1/projects/{name}/secrets/{env}/{secret}` with `{"value": …, "stages": […]}`.
pub async fn set(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((project, e, name)): Path<(String, String, String)>,
    ApiJson(req): ApiJson<SetSecret>,
) -> Result<Json<SecretInfo>, ApiError> {
    Ok(Json(secrets::set(&state, &caller, &project, env(&e)?, &name, req).await?))
}

/// `DELETE /api/v1/projects/{name}/secrets/{env}/{secret}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((project, e, name)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    secrets::delete(&state, &caller, &project, env(&e)?, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
