//! The HTTP surface: `router(state)` builds every route, so tests can drive it without a socket.

pub mod auth;
pub mod compat;
pub mod error;
pub mod events;
pub mod sites;
pub mod tasks;
pub mod workers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use tower_http::services::ServeDir;

use crate::state::AppState;
use error::ApiError;

/// Every route of the server.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/tasks", post(tasks::create).get(tasks::list))
        .route("/tasks/{id}", get(tasks::get))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/retry", post(tasks::retry))
        .route("/tasks/{id}/events", get(events::events))
        .route(
            "/tasks/{id}/attempts/{attempt}/files/{*path}",
            put(sites::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/tasks/{id}/attempts/{attempt}/release",
            post(sites::release),
        )
        .route("/workers/connect", get(workers::connect))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
        });
    let sites = ServeDir::new(state.sites_dir()).append_index_html_on_directories(true);
    let socketio = crate::socketio::layer(state.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/project/oss", get(compat::project))
        .route("/oss/get", get(compat::file))
        .nest("/api/v1", api)
        .nest_service("/sites", sites)
        .with_state(state)
        // Last: a layer added before a later merge or nest would not see `/socket.io/`.
        .layer(socketio)
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "workers": state.scheduler.worker_count() }))
}
