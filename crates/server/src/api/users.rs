//! User endpoints (over `domain::users`): sign-in and sign-out, the first admin's setup, who
//! the caller is, a user's own API tokens, and the admins' management of users.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cloudbuild_proto::user::{
    ApiTokenList, CreateApiToken, CreateUser, CreatedApiToken, EditUser, Login, Setup, User, UserList, Whoami,
};

use super::error::ApiError;
use super::extract::{ApiJson, Peer};
use crate::domain::callers::Caller;
use crate::domain::users;
use crate::state::AppState;

/// `POST /api/v1/login {user, password, token_name?}`: 201 with a new personal token (its
/// secret in this answer only); 401 on a wrong name or password; 429 when rate-limited.
pub async fn login(
    State(state): State<Arc<AppState>>,
    Peer(peer): Peer,
    ApiJson(req): ApiJson<Login>,
) -> Result<(StatusCode, Json<CreatedApiToken>), ApiError> {
    Ok((StatusCode::CREATED, Json(users::login(&state, peer, req).await?)))
}

/// `POST /api/v1/logout`: revokes the personal token presented.
pub async fn logout(State(state): State<Arc<AppState>>, caller: Caller) -> Result<StatusCode, ApiError> {
    users::logout(&state, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/setup {setup_token, user, password}`: the first admin, signed in.
pub async fn setup(
    State(state): State<Arc<AppState>>,
    Peer(peer): Peer,
    ApiJson(req): ApiJson<Setup>,
) -> Result<(StatusCode, Json<CreatedApiToken>), ApiError> {
    Ok((StatusCode::CREATED, Json(users::setup(&state, peer, req).await?)))
}

/// `GET /api/v1/user`: who the server takes the caller for.
pub async fn whoami(caller: Caller) -> Json<Whoami> {
    Json(Whoami { name: caller.name, kind: caller.kind, role: caller.role, token: caller.token.map(|t| t.1) })
}

/// `GET /api/v1/user/tokens`: the caller's tokens, never their secrets.
pub async fn list_tokens(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<ApiTokenList>, ApiError> {
    Ok(Json(ApiTokenList { tokens: users::list_tokens(&state, &caller).await? }))
}

/// `POST /api/v1/user/tokens {name, expires_in_days?}`: 201 with the secret (shown once).
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateApiToken>,
) -> Result<(StatusCode, Json<CreatedApiToken>), ApiError> {
    Ok((StatusCode::CREATED, Json(users::create_token(&state, &caller, req).await?)))
}

/// `DELETE /api/v1/user/tokens/{name}`.
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    users::revoke_token(&state, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/users` (admins).
pub async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<UserList>, ApiError> {
    Ok(Json(UserList { users: users::list(&state, &caller).await? }))
}

/// `POST /api/v1/users {name, password, role?}` (admins).
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    Ok((StatusCode::CREATED, Json(users::create(&state, &caller, req).await?)))
}

/// `PATCH /api/v1/users/{name} {role?, disabled?, password?}` (admins).
pub async fn edit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<EditUser>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(users::edit(&state, &caller, &name, req).await?))
}
