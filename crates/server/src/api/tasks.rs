//! Task endpoints: create, get, list, cancel, retry (over `domain::tasks`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudbuild_proto::task::{CreateTask, Task, TaskId, TaskPage};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, ClientZone, TaskIdParam};
use crate::domain::callers::Caller;
use crate::domain::policy::ProjectAction;
use crate::domain::tasks::{self, Cancelled, ListQuery};
use crate::state::AppState;

pub(super) fn created(task: Task) -> Response {
    let location = format!("/api/v1/tasks/{}", task.id);
    (StatusCode::CREATED, [(header::LOCATION, location)], Json(task)).into_response()
}

/// `POST /api/v1/tasks`: 201 with the task and its `Location`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ClientZone(zone): ClientZone,
    ApiJson(req): ApiJson<CreateTask>,
) -> Result<Response, ApiError> {
    // `socket.io` is the bridge's word for its own clients' tasks, not a REST client's.
    if req.trigger == cloudbuild_proto::task::Trigger::SocketIo {
        let message =
            "invalid trigger: trigger `socket.io` is set by the server itself (a client names `cli` or `api`)";
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message));
    }
    Ok(created(tasks::create(&state, &caller, &req, zone.as_deref()).await?))
}

/// `GET /api/v1/tasks/{id}`
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    TaskIdParam(id): TaskIdParam,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(tasks::get(&state, &caller, id, ProjectAction::Read).await?))
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
    caller: Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<TaskPage>, ApiError> {
    let query = ListQuery { name: p.name, state: p.state, before: p.before, limit: p.limit };
    Ok(Json(tasks::list(&state, &caller, query).await?))
}

/// `POST /api/v1/tasks/{id}/cancel`: 200 when it is (or was already) cancelled, 202 while the
/// worker stops it, 409 when it already ended otherwise.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    TaskIdParam(id): TaskIdParam,
) -> Result<Response, ApiError> {
    Ok(match tasks::cancel(&state, &caller, id).await? {
        Cancelled::Done(task) => (StatusCode::OK, Json(task)).into_response(),
        Cancelled::Requested(task) => (StatusCode::ACCEPTED, Json(task)).into_response(),
    })
}

/// `POST /api/v1/tasks/{id}/retry`: 201 with the new task.
pub async fn retry(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    TaskIdParam(id): TaskIdParam,
) -> Result<Response, ApiError> {
    Ok(created(tasks::retry(&state, &caller, id).await?))
}
