//! Who is calling: API tokens for clients (REST, event streams, socket.io) and worker tokens
//! for workers, checked in constant time; anonymous callers only when the configuration allows.

use cloudbuild_store::StoreError;

use crate::config::{Secret, Settings};
use crate::state::AppState;

/// The name of an authenticated caller (a token's name), or `anonymous`; and the address it
/// called from, when it came over HTTP (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String, pub Option<std::net::IpAddr>);

/// Why a caller or a worker was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an API token is required: pass --token or set CLOUDBUILD_TOKEN (HTTP: Authorization: Bearer <token>)")]
    TokenRequired,
    #[error("unknown API token")]
    UnknownToken,
    #[error("a worker token is required (Authorization: Bearer <token>)")]
    WorkerTokenRequired,
    #[error("unknown or revoked worker token")]
    UnknownWorkerToken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Compares secrets without leaking where they differ through timing (`subtle`; only the
/// length may show).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// The name of the configured token equal to `given`, comparing every one in constant time.
fn configured_name(tokens: &[(String, Secret)], given: &str) -> Option<String> {
    tokens.iter().fold(None, |found, (name, token)| {
        let hit = constant_time_eq(token.expose().as_bytes(), given.as_bytes());
        found.or(hit.then(|| name.clone()))
    })
}

/// Identifies a client from an optional API token (`api_tokens`, or anonymous when allowed).
pub fn identify(settings: &Settings, token: Option<&str>) -> Result<Caller, AuthError> {
    match token.filter(|t| !t.is_empty()) {
        Some(given) => {
            configured_name(&settings.api_tokens, given).map(|n| Caller(n, None)).ok_or(AuthError::UnknownToken)
        }
        None if settings.allow_anonymous => Ok(Caller("anonymous".into(), None)),
        None => Err(AuthError::TokenRequired),
    }
}

/// Identifies a worker from its token: a configured one (`worker_tokens`) or a revocable one in
/// the store (found by blake3 hash). Returns the token's name.
pub async fn identify_worker(state: &AppState, token: Option<&str>) -> Result<String, AuthError> {
    let given = token.filter(|t| !t.is_empty()).ok_or(AuthError::WorkerTokenRequired)?;
    if let Some(name) = configured_name(&state.settings.worker_tokens, given) {
        return Ok(name);
    }
    let hash = blake3::hash(given.as_bytes()).to_hex().to_string();
    state.store.worker_token_name(&hash).await?.ok_or(AuthError::UnknownWorkerToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
