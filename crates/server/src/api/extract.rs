//! Extractors of the HTTP adapter: the calling client, the calling worker, ids in the path,
//! and JSON bodies and queries whose rejections are `ApiError`s (JSON, stable codes).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::Json;
use cloudbuild_proto::task::TaskId;

use super::error::ApiError;
use crate::domain::callers::{self, Caller};
use crate::state::AppState;

/// The token of `Authorization: Bearer <token>`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let mut caller = callers::identify(state, bearer(&parts.headers)).await?;
        caller.address = peer(parts);
        Ok(caller)
    }
}

/// The peer's address, put there by the listener for each connection (absent when a test
/// drives the router without one).
fn peer(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// The caller's IANA time zone from the `Time-Zone` header (as GitHub's API takes it), for the
/// times a refusal tells; an unknown zone is ignored (times are then told in UTC).
#[derive(Debug, Clone, Default)]
pub struct ClientZone(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientZone {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let zone = parts.headers.get("time-zone").and_then(|v| v.to_str().ok());
        let known = zone.filter(|z| z.len() <= 64 && cloudbuild_proto::gate::zone_is_known(z));
        Ok(ClientZone(known.map(str::to_owned)))
    }
}

/// The address a request came from, for callers not yet identified (sign-in).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(peer(parts)))
    }
}

/// A worker authenticated by its token (`Authorization: Bearer <worker token>`): the token's
/// name. Put it first among a handler's arguments, so that strangers learn nothing else.
#[derive(Debug, Clone)]
pub struct Worker(pub String);

impl FromRequestParts<Arc<AppState>> for Worker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        Ok(Worker(callers::identify_worker(state, bearer(&parts.headers)).await?))
    }
}

/// Parses a task id (a positive integer), with a JSON error on garbage.
pub fn parse_task_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse::<TaskId>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("`{raw}` is not a task id (a positive integer)")))
}

/// The `{id}` of a task route.
#[derive(Debug, Clone, Copy)]
pub struct TaskIdParam(pub TaskId);

impl<S: Send + Sync> FromRequestParts<S> for TaskIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) =
            Path::<String>::from_request_parts(parts, state).await.map_err(|e| ApiError::bad_request(e.body_text()))?;
        Ok(TaskIdParam(parse_task_id(&raw)?))
    }
}

/// The `{id}` and `{attempt}` of a publish route, with the lease key the worker presents
/// (header [`LEASE_HEADER`]; empty when missing, which no lease matches).
#[derive(Debug, Clone)]
pub struct PublishAttempt(pub crate::domain::releases::Publisher);

/// The header carrying the assignment's lease key on publish calls.
pub const LEASE_HEADER: &str = "x-cloudbuild-lease";

impl<S: Send + Sync> FromRequestParts<S> for PublishAttempt {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<Vec<String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let (Some(id), Some(attempt)) = (raw.first(), raw.get(1)) else {
            return Err(ApiError::bad_request("a publish route names a task and an attempt"));
        };
        let task = parse_task_id(id)?;
        let attempt: u32 = attempt.parse().map_err(|_| ApiError::bad_request("attempt must be a number"))?;
        let lease_key = parts.headers.get(LEASE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        Ok(PublishAttempt(crate::domain::releases::Publisher { task, attempt, lease_key }))
    }
}

/// `Json<T>` whose rejections are `ApiError`s.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(ApiError::new(rej.status(), "invalid_json", rej.body_text())),
        }
    }
}

/// `Query<T>` whose rejections are `ApiError`s (`invalid_input`, naming the bad parameter).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(ApiError::bad_request(rej.body_text())),
        }
    }
}
