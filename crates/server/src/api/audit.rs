//! The audit log endpoint (over `domain::audit`).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use cloudbuild_proto::audit::AuditPage;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::ApiQuery;
use crate::domain::audit::{self, AuditFilter};
use crate::domain::callers::Caller;
use crate::state::AppState;

/// The query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    project: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/v1/audit?project=&actor=&action=&before=&limit=`: newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let filter = AuditFilter { project: p.project, actor: p.actor, action: p.action, before: p.before, limit: p.limit };
    Ok(Json(audit::list(&state, &caller, filter).await?))
}
