//! `ApiError`: every error an HTTP client sees, as JSON `{code, message}` with a status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudbuild_proto::validate::ValidationError;
use cloudbuild_proto::ApiErrorBody;
use cloudbuild_store::StoreError;

/// An HTTP error. Internal details are logged, never sent.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {err}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error while {context}; see the server log"),
        )
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("task {id} does not exist"))
            }
            StoreError::Stale { .. } => ApiError::new(StatusCode::CONFLICT, "stale_attempt", e.to_string()),
            StoreError::NotHolder { .. } => ApiError::new(StatusCode::FORBIDDEN, "not_lease_holder", e.to_string()),
            StoreError::Terminal(_) => ApiError::new(StatusCode::CONFLICT, "already_finished", e.to_string()),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Unavailable(_) => {
                tracing::warn!("{e}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the server cannot reach its store right now; try again shortly",
                )
            }
            StoreError::Database(_) => ApiError::internal("accessing the store", e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ApiErrorBody { code: self.code.to_owned(), message: self.message })).into_response()
    }
}
