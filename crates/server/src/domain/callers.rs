//! Who is calling: personal API tokens of users (in the store, by hash), service tokens of the
//! configuration file, worker tokens for workers, all checked in constant time or by hash;
//! anonymous callers only when the configuration allows. What a caller may do is `policy`'s.

use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{CallerKind, GlobalRole};
use cloudbuild_store::StoreError;

use crate::config::{Secret, ServiceToken};
use crate::state::AppState;

/// The prefix of personal API tokens (`cbp_<64 hex>`): tells them apart from other secrets in
/// a leaked file (secret scanners match on it) and from service tokens without a store read.
pub const PERSONAL_TOKEN_PREFIX: &str = "cbp_";

/// An authenticated caller: who (a user's or a service token's name, or `anonymous`), how it
/// proved it, its role on the whole server, and the address it called from (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub kind: CallerKind,
    pub role: GlobalRole,
    /// The personal token presented: `(blake3 hash, token name)`. Open streams check that it
    /// still works; `logout` revokes it.
    pub token: Option<(String, String)>,
    pub address: Option<std::net::IpAddr>,
}

impl Caller {
    /// The anonymous caller of a server that allows one: an admin (a development convenience on
    /// loopback, stated in the startup line).
    pub fn anonymous() -> Self {
        Caller {
            name: "anonymous".into(),
            kind: CallerKind::Anonymous,
            role: GlobalRole::Admin,
            token: None,
            address: None,
        }
    }

    /// The server acting on its own for `name` (pruning after a task's publish, adopting the
    /// projects of earlier tasks): recorded in the audit log under that name.
    pub fn on_behalf_of(name: impl Into<String>) -> Self {
        Caller { name: name.into(), kind: CallerKind::Service, role: GlobalRole::Admin, token: None, address: None }
    }

    pub fn is_admin(&self) -> bool {
        self.role == GlobalRole::Admin
    }

    /// A signed-in user (not a service token or the anonymous admin).
    pub fn user(&self) -> Option<&str> {
        (self.kind == CallerKind::User).then_some(self.name.as_str())
    }
}

/// Why a caller or a worker was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("sign in first: `cloudbuild login`, or pass --token / set CLOUDBUILD_TOKEN (HTTP: Authorization: Bearer <token>)")]
    TokenRequired,
    /// An unknown, revoked or expired token, or one of a disabled user: one answer for all, so
    /// that a stolen token's owner learns nothing from trying it.
    #[error("unknown, expired or revoked API token (sign in again: `cloudbuild login`)")]
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

/// The configured service token equal to `given`, comparing every one in constant time.
fn service_token<'a>(tokens: &'a [ServiceToken], given: &str) -> Option<&'a ServiceToken> {
    tokens.iter().fold(None, |found, t| {
        let hit = constant_time_eq(t.token.expose().as_bytes(), given.as_bytes());
        found.or(hit.then_some(t))
    })
}

/// What the store keeps of a personal token (blake3, hex; the token is 32 random bytes).
pub fn token_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// A token's last use is written at most this often (µs): a busy script must not turn every
/// request into a store write.
const TOUCH_EVERY_US: i64 = 60 * 1_000_000;

/// Identifies a client from an optional API token: a service token of the configuration, a
/// user's personal token, or anonymous when allowed.
pub async fn identify(state: &AppState, token: Option<&str>) -> Result<Caller, AuthError> {
    let Some(given) = token.filter(|t| !t.is_empty()) else {
        return if state.settings.allow_anonymous { Ok(Caller::anonymous()) } else { Err(AuthError::TokenRequired) };
    };
    if let Some(t) = service_token(&state.settings.api_tokens, given) {
        return Ok(Caller {
            name: t.name.clone(),
            kind: CallerKind::Service,
            role: t.role,
            token: None,
            address: None,
        });
    }
    if !given.starts_with(PERSONAL_TOKEN_PREFIX) {
        return Err(AuthError::UnknownToken);
    }
    let hash = token_hash(given);
    let (caller, last_used) = personal(state, &hash).await?.ok_or(AuthError::UnknownToken)?;
    let now = Timestamp::now();
    if last_used.is_none_or(|t| now.0 - t.0 >= TOUCH_EVERY_US) {
        if let Err(e) = state.store.touch_api_token(&hash, now).await {
            tracing::warn!("recording a token's use: {e}");
        }
    }
    Ok(caller)
}

/// The caller a personal token stands for, with its last use; `None` when the token is
/// unknown or expired, or its user is unknown or disabled.
async fn personal(state: &AppState, hash: &str) -> Result<Option<(Caller, Option<Timestamp>)>, StoreError> {
    let Some(rec) = state.store.api_token(hash).await? else { return Ok(None) };
    if rec.token.expires_at.is_some_and(|at| at <= Timestamp::now()) {
        return Ok(None);
    }
    let Some(user) = state.store.get_user(&rec.token.user).await?.filter(|u| !u.user.disabled) else {
        return Ok(None);
    };
    let caller = Caller {
        name: user.user.name,
        kind: CallerKind::User,
        role: user.user.role,
        token: Some((hash.to_owned(), rec.token.name)),
        address: None,
    };
    Ok(Some((caller, rec.token.last_used_at)))
}

/// Whether a caller identified earlier would still be let in as the same (its personal token
/// not revoked or expired, its user not disabled, its role unchanged): asked by open event
/// streams every few seconds, so that a revocation cuts them, not only the next connect.
/// Service tokens and the anonymous admin last as long as the configuration they came from.
pub async fn still_valid(state: &AppState, caller: &Caller) -> Result<bool, StoreError> {
    let Some((hash, _)) = &caller.token else { return Ok(true) };
    Ok(personal(state, hash).await?.is_some_and(|(now, _)| now.role == caller.role && now.name == caller.name))
}

/// Identifies a worker from its token: a configured one (`worker_tokens`) or a revocable one in
/// the store (found by blake3 hash). Returns the token's name.
pub async fn identify_worker(state: &AppState, token: Option<&str>) -> Result<String, AuthError> {
    let given = token.filter(|t| !t.is_empty()).ok_or(AuthError::WorkerTokenRequired)?;
    let configured = state.settings.worker_tokens.iter().fold(None, |found, (name, token): &(String, Secret)| {
        found.or(constant_time_eq(token.expose().as_bytes(), given.as_bytes()).then(|| name.clone()))
    });
    if let Some(name) = configured {
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
