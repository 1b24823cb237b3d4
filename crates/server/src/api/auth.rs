//! Who is calling: API tokens for clients (REST, event streams, socket.io), checked in constant
//! time; anonymous callers only when the configuration allows them.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::error::ApiError;
use crate::state::AppState;

/// The name of an authenticated caller (a token's name), or `anonymous`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// Compares secrets without leaking where they differ through timing (`subtle`; only the
/// length may show).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// The token of `Authorization: Bearer <token>`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

/// Identifies a caller from an optional API token.
pub fn identify(state: &AppState, token: Option<&str>) -> Result<Caller, ApiError> {
    match token.filter(|t| !t.is_empty()) {
        Some(given) => state
            .settings
            .api_tokens
            .iter()
            .fold(None, |found, (name, token)| {
                let hit = constant_time_eq(token.as_bytes(), given.as_bytes());
                found.or(hit.then(|| Caller(name.clone())))
            })
            .ok_or_else(|| ApiError::unauthorized("unknown API token")),
        None if state.settings.allow_anonymous => Ok(Caller("anonymous".into())),
        None => Err(ApiError::unauthorized(
            "an API token is required: pass --token or set CLOUDBUILD_TOKEN (HTTP: Authorization: Bearer <token>)",
        )),
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        identify(state, bearer(&parts.headers))
    }
}
