//! Release endpoints (over `domain::releases`): the worker's publish calls (plan, blobs,
//! bundles, commit; fenced by task, attempt and lease), the release list and rollback.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use cloudbuild_proto::release::{PlanAnswer, PublishResult, ReleaseList, RollbackRequest, RollbackResult};
use cloudbuild_proto::task::Environment;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, PublishAttempt, Worker};
use crate::domain::callers::Caller;
use crate::domain::releases;
use crate::state::AppState;

/// `POST /api/v1/tasks/{id}/attempts/{attempt}/publish/plan`. The body is read after the
/// worker is authenticated (a JSON extractor would answer strangers before the check).
pub async fn plan(
    _worker: Worker,
    State(state): State<Arc<AppState>>,
    PublishAttempt(who): PublishAttempt,
    body: Bytes,
) -> Result<Json<PlanAnswer>, ApiError> {
    Ok(Json(releases::plan(&state, &who, &body).await?))
}

/// `PUT /api/v1/tasks/{id}/attempts/{attempt}/publish/blobs/{hash}`: streamed to disk.
pub async fn blob(
    _worker: Worker,
    State(state): State<Arc<AppState>>,
    PublishAttempt(who): PublishAttempt,
    Path((_, _, hash)): Path<(String, String, String)>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    releases::stage_blob(&state, &who, &hash, body.into_data_stream()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/tasks/{id}/attempts/{attempt}/publish/bundle`
pub async fn bundle(
    _worker: Worker,
    State(state): State<Arc<AppState>>,
    PublishAttempt(who): PublishAttempt,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    releases::stage_bundle(&state, &who, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/tasks/{id}/attempts/{attempt}/publish/commit`
pub async fn commit(
    _worker: Worker,
    State(state): State<Arc<AppState>>,
    PublishAttempt(who): PublishAttempt,
    body: Bytes,
) -> Result<Json<PublishResult>, ApiError> {
    Ok(Json(releases::commit(&state, &who, &body).await?))
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
    caller: Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<ReleaseList>, ApiError> {
    Ok(Json(ReleaseList { releases: releases::list(&state, &caller, &p.name, p.env).await? }))
}

/// `POST /api/v1/releases/rollback`: switches to an earlier release, without rebuilding.
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    super::extract::ClientZone(zone): super::extract::ClientZone,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<Json<RollbackResult>, ApiError> {
    Ok(Json(releases::rollback(&state, &caller, &req, zone.as_deref()).await?))
}
