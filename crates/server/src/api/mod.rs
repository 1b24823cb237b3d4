//! The HTTP adapter: `router(state)` builds every route, so tests can drive it without a socket.
//! Handlers are thin: extract (`extract.rs`), call a domain service, map its error (`error.rs`).

pub mod audit;
pub mod compat;
pub mod error;
pub mod events;
pub mod extract;
pub mod freeze;
pub mod hooks;
pub mod previews;
pub mod projects;
pub mod releases;
pub mod schedules;
pub mod secrets;
pub mod tasks;
pub mod users;
pub mod workers;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, delete, get, patch, post, put};
use axum::{Json, Router};

use crate::domain::releases::BUNDLE_BYTES;
use crate::sites;
use crate::state::AppState;
use error::ApiError;

/// The largest publish manifest: room for 200,000 files with long paths (a manifest entry is
/// about 150 bytes). Publish calls come from authenticated workers only.
const MANIFEST_BYTES: usize = 256 << 20;

/// Every route of the server.
pub fn router(state: Arc<AppState>) -> Router {
    // One budget for every upload route: a burst of publishes waits rather than piling up.
    let uploads = tower::limit::GlobalConcurrencyLimitLayer::new(state.settings.max_concurrent_uploads);
    let api = Router::new()
        .route("/tasks", post(tasks::create).get(tasks::list))
        .route("/tasks/{id}", get(tasks::get))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/retry", post(tasks::retry))
        .route("/tasks/{id}/override", post(freeze::override_task))
        .route("/tasks/{id}/approve", post(freeze::approve))
        .route("/tasks/{id}/reject", post(freeze::reject))
        .route("/tasks/{id}/events", get(events::events))
        .route(
            "/tasks/{id}/attempts/{attempt}/publish/plan",
            post(releases::plan).layer(DefaultBodyLimit::max(MANIFEST_BYTES)),
        )
        .route(
            "/tasks/{id}/attempts/{attempt}/publish/blobs/{hash}",
            put(releases::blob)
                .layer::<_, Infallible>(DefaultBodyLimit::disable())
                .layer::<_, Infallible>(uploads.clone()),
        )
        .route(
            "/tasks/{id}/attempts/{attempt}/publish/bundle",
            post(releases::bundle)
                .layer::<_, Infallible>(DefaultBodyLimit::max(BUNDLE_BYTES))
                .layer::<_, Infallible>(uploads),
        )
        .route(
            "/tasks/{id}/attempts/{attempt}/publish/commit",
            post(releases::commit).layer(DefaultBodyLimit::max(MANIFEST_BYTES)),
        )
        .route("/audit", get(audit::list))
        .route("/freeze", get(freeze::list).post(freeze::add))
        .route("/freeze/status", get(freeze::status))
        .route("/freeze/{id}", delete(freeze::remove))
        .route("/projects/{name}/freeze", get(freeze::list_project).post(freeze::add_project))
        .route("/projects/{name}/freeze/{id}", delete(freeze::remove_project))
        .route("/projects", get(projects::list).post(projects::create))
        .route("/projects/{name}", get(projects::get).patch(projects::edit).delete(projects::delete))
        .route("/projects/{name}/members", get(projects::members))
        .route("/projects/{name}/members/{user}", put(projects::set_member).delete(projects::remove_member))
        .route("/projects/{name}/secrets", get(secrets::list))
        .route("/projects/{name}/deliveries", get(hooks::deliveries))
        .route("/projects/{name}/webhook-secret", post(hooks::regenerate_secret))
        .route("/projects/{name}/forge", put(projects::set_forge).delete(projects::remove_forge))
        .route("/projects/{name}/previews", get(previews::list))
        .route("/projects/{name}/previews/{number}", delete(previews::remove))
        .route("/projects/{name}/schedules", get(schedules::list).post(schedules::add))
        .route("/projects/{name}/schedules/{schedule}", delete(schedules::remove))
        .route("/projects/{name}/schedules/{schedule}/run", post(schedules::run_now))
        .route("/hooks/{forge}", post(hooks::receive).layer(DefaultBodyLimit::max(hooks::HOOK_BYTES)))
        .route("/projects/{name}/secrets/{env}/{secret}", put(secrets::set).delete(secrets::delete))
        .route("/releases", get(releases::list))
        .route("/releases/rollback", post(releases::rollback))
        .route("/login", post(users::login))
        .route("/logout", post(users::logout))
        .route("/setup", post(users::setup))
        .route("/user", get(users::whoami))
        .route("/user/tokens", get(users::list_tokens).post(users::create_token))
        .route("/user/tokens/{name}", delete(users::revoke_token))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{name}", patch(users::edit))
        .route("/workers", get(workers::list))
        .route("/workers/connect", get(workers::connect))
        .route("/worker-tokens", post(workers::create_token).get(workers::list_tokens))
        .route("/worker-tokens/{name}", delete(workers::revoke_token))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint") });
    let socketio = crate::socketio::layer(state.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/project/oss", get(compat::project))
        .route("/oss/get", get(compat::file))
        .nest("/api/v1", api)
        .route("/sites/{env}/{*path}", any(sites::serve::site_by_path))
        .route("/releases/{env}/{*path}", any(sites::serve::release_by_path))
        .merge(crate::web::router().layer(axum::middleware::from_fn(crate::web::remember_locale)))
        .with_state(state.clone())
        // Last: a layer added before a later merge or nest would not see `/socket.io/`.
        .layer(socketio)
        .layer(axum::middleware::map_request(crate::socketio::detach_from_connection))
        // Outermost: a request for `<site>.<env>.<domain>` is the site's, whatever its path.
        .layer(axum::middleware::from_fn_with_state(state, sites::serve::by_host))
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "workers": state.scheduler.worker_count() }))
}
