//! Schedule endpoints (over `domain::schedules`): list with the next runs, add, remove, run now.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use cloudbuild_proto::schedule::{NewSchedule, ScheduleList, ScheduleView};

use super::error::ApiError;
use super::extract::ApiJson;
use crate::domain::callers::Caller;
use crate::domain::schedules;
use crate::state::AppState;

/// `GET /api/v1/projects/{name}/schedules` (its readers).
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList { schedules: schedules::list(&state, &caller, &name).await? }))
}

/// `POST /api/v1/projects/{name}/schedules` with `{"name", "cron", "timezone"?, "branch"?,
/// "env"?}`: 201 with the schedule and its next run (maintainers).
pub async fn add(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<NewSchedule>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    Ok((StatusCode::CREATED, Json(schedules::add(&state, &caller, &name, req).await?)))
}

/// `DELETE /api/v1/projects/{name}/schedules/{schedule}`: 204 (maintainers).
pub async fn remove(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, schedule)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    schedules::remove(&state, &caller, &name, &schedule).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/projects/{name}/schedules/{schedule}/run`: 201 with the task it queued
/// (those who may publish to the schedule's environment).
pub async fn run_now(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, schedule)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let task = schedules::run_now(&state, &caller, &name, &schedule).await?;
    Ok(super::tasks::created(task))
}
