//! Webhook endpoints (over `domain::hooks`): `POST /api/v1/hooks/{github|gitlab|gitea}`, whose
//! only credential is the delivery's signature; a project's recorded deliveries and its webhook
//! secret's regeneration.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use cloudbuild_proto::webhook::{Delivery, DeliveryList, Forge};
use serde::Deserialize;

use super::error::ApiError;
use crate::domain::callers::Caller;
use crate::domain::hooks::{self, Incoming};
use crate::state::AppState;

/// The largest delivery taken (GitHub caps payloads at 25 MB, but a push's is a few KiB; a
/// push of thousands of commits lists at most the newest 20).
pub const HOOK_BYTES: usize = 2 << 20;

#[derive(Debug, Deserialize)]
pub struct HookQuery {
    project: Option<String>,
}

/// `POST /api/v1/hooks/{forge}?project=NAME`: a delivery. 202 with the delivery's record when
/// it queued a build, 200 when it did something else (`pong`, `skipped`, `ignored`,
/// `deleted`, `duplicate`); an error (and nothing recorded) when it is not verified.
pub async fn receive(
    State(state): State<Arc<AppState>>,
    Path(forge): Path<String>,
    Query(q): Query<HookQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Delivery>), ApiError> {
    let forge = Forge::parse(&forge)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such forge: github, gitlab or gitea"))?;
    let body = body.map_err(|e| {
        let message = format!("the delivery's body was refused ({e}); at most {} MiB", HOOK_BYTES >> 20);
        ApiError::new(e.status(), "body_too_large", message)
    })?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let event = header(forge.event_header()).ok_or_else(|| {
        let message = format!("no {} header: is this a {} webhook delivery?", forge.event_header(), forge.as_str());
        ApiError::new(StatusCode::BAD_REQUEST, "missing_event", message)
    })?;
    let signature = header(match forge {
        Forge::GitHub => "x-hub-signature-256",
        Forge::GitLab => "x-gitlab-token",
        Forge::Gitea => "x-gitea-signature",
    });
    let owned = |v: Option<&str>| v.map(str::to_owned);
    let (event, signature) = (event.to_owned(), owned(signature));
    let delivery = owned(forge.delivery_headers().iter().find_map(|h| header(h)));
    let sha1_only = forge == Forge::GitHub && signature.is_none() && header("x-hub-signature").is_some();
    // Taken to its end even if the forge hangs up first (it gives up after 10 s): a delivery
    // dropped half-way would stay claimed, and its redelivery be taken for a duplicate.
    let work = tokio::spawn(async move {
        let incoming = Incoming {
            forge,
            event: &event,
            delivery: delivery.as_deref(),
            signature: signature.as_deref(),
            sha1_only,
            project: q.project.as_deref(),
            body: &body,
        };
        hooks::receive(&state, incoming).await
    });
    let delivery = work.await.map_err(|e| {
        tracing::error!("a webhook delivery's work ended abnormally: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the delivery could not be taken; send it again")
    })??;
    let status = if delivery.outcome == "queued" { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(delivery)))
}

/// `GET /api/v1/projects/{name}/deliveries`: the newest 100, newest first (its readers).
pub async fn deliveries(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<DeliveryList>, ApiError> {
    Ok(Json(DeliveryList { deliveries: hooks::deliveries(&state, &caller, &name).await? }))
}

/// `POST /api/v1/projects/{name}/webhook-secret`: a new secret (maintainers): `{"webhook_secret"}`.
pub async fn regenerate_secret(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let secret = hooks::secret(&state, &caller, &name, true).await?;
    Ok(Json(serde_json::json!({ "webhook_secret": secret })))
}
