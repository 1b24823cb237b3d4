//! `ApiError`: every error an HTTP client sees, as JSON `{code, message}` with a status, and
//! the mapping of each domain error to its status and stable code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudbuild_proto::validate::ValidationError;
use cloudbuild_proto::ApiErrorBody;
use cloudbuild_store::StoreError;

use crate::domain::audit::AuditError;
use crate::domain::callers::AuthError;
use crate::domain::freeze::FreezeError;
use crate::domain::policy::{Denied, PolicyError};
use crate::domain::projects::ProjectError;
use crate::domain::releases::lock::LockError;
use crate::domain::releases::ReleaseError;
use crate::domain::secrets::SecretError;
use crate::domain::tasks::TaskError;
use crate::domain::users::UserError;
use crate::domain::workers::WorkerError;

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

    /// A failure of the server itself: logged with its whole chain of causes, answered with
    /// what the server was doing only.
    pub fn internal(context: &str, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = err.to_string();
        let mut cause = err.source();
        while let Some(c) = cause {
            // Messages that already show their source (`…: {source}`) are not repeated.
            let text = c.to_string();
            if !chain.contains(&text) {
                chain.push_str(&format!(": {text}"));
            }
            cause = c.source();
        }
        tracing::error!("{context}: {chain}");
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
        let message = e.to_string();
        match e {
            StoreError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            StoreError::Stale { .. } => ApiError::new(StatusCode::CONFLICT, "stale_attempt", message),
            StoreError::NotHolder { .. } => ApiError::new(StatusCode::FORBIDDEN, "not_lease_holder", message),
            StoreError::Terminal(_) => ApiError::new(StatusCode::CONFLICT, "already_finished", message),
            StoreError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            StoreError::Contended(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "contended", message),
            StoreError::Unavailable { .. } => {
                tracing::warn!("{message}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the server cannot reach its store right now; try again shortly",
                )
            }
            StoreError::Database { .. } | StoreError::Corrupt(_) | StoreError::InvalidChange(_) => {
                ApiError::internal("accessing the store", &e)
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(s) => s.into(),
            _ => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Denied(d @ Denied::Hidden(_)) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", d.to_string())
            }
            PolicyError::Denied(d @ Denied::Forbidden(_)) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", d.to_string())
            }
            PolicyError::Store(s) => s.into(),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        let message = e.to_string();
        match e {
            UserError::Invalid(v) => v.into(),
            UserError::Policy(p) => p.into(),
            UserError::BadCredentials | UserError::Setup(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "bad_credentials", message)
            }
            UserError::TooManyAttempts(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", message),
            UserError::NotFound(_) | UserError::NoSuchToken(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            UserError::Exists(_) | UserError::TokenExists(_) => ApiError::new(StatusCode::CONFLICT, "exists", message),
            UserError::Refused(_) => ApiError::new(StatusCode::CONFLICT, "refused", message),
            UserError::Contended(_) => ApiError::new(StatusCode::CONFLICT, "contended", message),
            UserError::Random(_) | UserError::Hashing(_) => ApiError::internal("signing in", &e),
            UserError::Store(s) => s.into(),
        }
    }
}

impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> Self {
        let message = e.to_string();
        match e {
            SecretError::Invalid(v) => v.into(),
            SecretError::NotFound { .. } | SecretError::NoProject(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            SecretError::Vault(ref v) => ApiError::internal("project secrets", v),
            SecretError::Policy(p) => p.into(),
            SecretError::Store(s) => s.into(),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Invalid(v) => v.into(),
            AuditError::Policy(p) => p.into(),
            AuditError::Store(s) => s.into(),
        }
    }
}

impl From<crate::domain::hooks::HookError> for ApiError {
    fn from(e: crate::domain::hooks::HookError) -> Self {
        use crate::domain::hooks::HookError;
        let message = e.to_string();
        match e {
            HookError::UnsupportedEvent(_) => ApiError::new(StatusCode::BAD_REQUEST, "unsupported_event", message),
            HookError::Payload(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_payload", message),
            HookError::Unsigned(_) | HookError::Sha1Only | HookError::NotVerified => {
                ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", message)
            }
            HookError::Project(p) => p.into(),
            HookError::Task(t) => t.into(),
            HookError::Preview(p) => p.into(),
            HookError::Store(s) => s.into(),
        }
    }
}

impl From<crate::domain::previews::PreviewError> for ApiError {
    fn from(e: crate::domain::previews::PreviewError) -> Self {
        use crate::domain::previews::PreviewError;
        let message = e.to_string();
        match e {
            PreviewError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            PreviewError::Target(_) => {
                tracing::error!("{message}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "removing the preview failed; see the server's log",
                )
            }
            PreviewError::Invalid(v) => v.into(),
            PreviewError::Project(p) => p.into(),
            PreviewError::Task(t) => t.into(),
            PreviewError::Release(r) => r.into(),
            PreviewError::Store(s) => s.into(),
        }
    }
}

impl From<crate::domain::schedules::ScheduleError> for ApiError {
    fn from(e: crate::domain::schedules::ScheduleError) -> Self {
        use crate::domain::schedules::ScheduleError;
        let message = e.to_string();
        match e {
            ScheduleError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            ScheduleError::Exists { .. } => ApiError::new(StatusCode::CONFLICT, "schedule_exists", message),
            ScheduleError::TooMany(_) => ApiError::new(StatusCode::CONFLICT, "too_many_schedules", message),
            ScheduleError::Project(p) => p.into(),
            ScheduleError::Task(t) => t.into(),
        }
    }
}

impl From<ProjectError> for ApiError {
    fn from(e: ProjectError) -> Self {
        let message = e.to_string();
        match e {
            ProjectError::Invalid(v) => v.into(),
            ProjectError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            ProjectError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "project_exists", message),
            ProjectError::Contended(_) => ApiError::new(StatusCode::CONFLICT, "contended", message),
            ProjectError::OtherRepository { .. } | ProjectError::Moved { .. } => {
                ApiError::new(StatusCode::CONFLICT, "project_repository_mismatch", message)
            }
            ProjectError::NotRegistered(_) | ProjectError::Unregistered(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "project_not_registered", message)
            }
            ProjectError::LastMaintainer(_) => ApiError::new(StatusCode::CONFLICT, "last_maintainer", message),
            ProjectError::NoSuchUser(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            ProjectError::BadTriggers(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_triggers", message),
            ProjectError::Vault(_) => {
                tracing::error!("{message}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server could not open its key file")
            }
            ProjectError::Previews(_) => {
                tracing::error!("{message}");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "target_failed",
                    "removing the project's previews failed; nothing was changed",
                )
            }
            ProjectError::Policy(p) => p.into(),
            ProjectError::Store(s) => s.into(),
        }
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        let message = e.to_string();
        match e {
            TaskError::Invalid(v) => v.into(),
            TaskError::Refused(_) | TaskError::InternalHost { .. } => ApiError::bad_request(message),
            TaskError::AlreadyFinished { .. } => ApiError::new(StatusCode::CONFLICT, "already_finished", message),
            TaskError::NotQueued { .. } => ApiError::new(StatusCode::CONFLICT, "not_queued", message),
            TaskError::NotFinished { .. } => ApiError::new(StatusCode::CONFLICT, "not_finished", message),
            TaskError::Release(r) => r.into(),
            TaskError::Project(p) => p.into(),
            TaskError::Policy(p) => p.into(),
            TaskError::Gate(g) => (*g).into(),
            TaskError::Store(s) => s.into(),
        }
    }
}

impl From<FreezeError> for ApiError {
    fn from(e: FreezeError) -> Self {
        let message = e.to_string();
        match e {
            FreezeError::Invalid(v) => v.into(),
            FreezeError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            FreezeError::TooMany(_) => ApiError::new(StatusCode::CONFLICT, "too_many_windows", message),
            FreezeError::Frozen(_) => ApiError::new(StatusCode::CONFLICT, "frozen", message),
            FreezeError::OverrideDenied(_) => ApiError::new(StatusCode::FORBIDDEN, "override_denied", message),
            FreezeError::NotGated { .. } => ApiError::new(StatusCode::CONFLICT, "not_gated", message),
            FreezeError::Random(_) => ApiError::internal("adding a freeze window", &e),
            FreezeError::Project(p) => p.into(),
            FreezeError::Store(s) => s.into(),
        }
    }
}

impl From<crate::domain::approvals::ApprovalError> for ApiError {
    fn from(e: crate::domain::approvals::ApprovalError) -> Self {
        use crate::domain::approvals::ApprovalError;
        let message = e.to_string();
        match e {
            ApprovalError::Invalid(v) => v.into(),
            ApprovalError::NotAwaiting { .. } => ApiError::new(StatusCode::CONFLICT, "not_awaiting_approval", message),
            ApprovalError::OwnTask { .. } => ApiError::new(StatusCode::FORBIDDEN, "own_task", message),
            ApprovalError::Policy(p) => p.into(),
            ApprovalError::Gate(g) => g.into(),
            ApprovalError::Store(s) => s.into(),
        }
    }
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        let message = e.to_string();
        match e {
            WorkerError::Invalid(v) => v.into(),
            WorkerError::BadHello(_) => ApiError::bad_request(message),
            WorkerError::NoSuchToken(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            WorkerError::Random(_) => ApiError::internal("making a token", &e),
            WorkerError::Policy(p) => p.into(),
            WorkerError::Store(s) => s.into(),
        }
    }
}

impl From<LockError> for ApiError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Busy(_) => ApiError::new(StatusCode::CONFLICT, "switch_busy", format!("{e}; try again")),
            LockError::Lost(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "lock_lost",
                format!("{e}; nothing was switched, try again"),
            ),
            LockError::Store(s) => s.into(),
        }
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        let message = e.to_string();
        match e {
            ReleaseError::Invalid(v) => v.into(),
            ReleaseError::BadUpload(_) => ApiError::bad_request(message),
            ReleaseError::UnreadablePlan(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_json", message),
            ReleaseError::StaleAttempt { .. } => ApiError::new(StatusCode::CONFLICT, "stale_attempt", message),
            ReleaseError::NotLeaseHolder { .. } => ApiError::new(StatusCode::FORBIDDEN, "not_lease_holder", message),
            ReleaseError::VersionExists { .. } => ApiError::new(StatusCode::CONFLICT, "version_exists", message),
            ReleaseError::NoSuchVersion { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            ReleaseError::NothingToRollBack { .. } | ReleaseError::NoReleases { .. } => {
                ApiError::new(StatusCode::CONFLICT, "nothing_to_roll_back_to", message)
            }
            ReleaseError::AlreadyCurrent { .. } => ApiError::new(StatusCode::CONFLICT, "already_current", message),
            ReleaseError::PreviewClosed(_) => ApiError::new(StatusCode::CONFLICT, "preview_closed", message),
            ReleaseError::Target(_) => ApiError::new(StatusCode::BAD_GATEWAY, "target_failed", message),
            ReleaseError::FileTooLarge(_) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", message),
            ReleaseError::Lock(l) => l.into(),
            ReleaseError::Gate(g) => (*g).into(),
            ReleaseError::Store(s) => s.into(),
            ReleaseError::Project(p) => p.into(),
            ReleaseError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                tracing::error!("{message}");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "no_space",
                    "no space left on the server's disk; nothing was published, try again once space is freed",
                )
            }
            ReleaseError::Io { context, ref source } => ApiError::internal(context, source),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ApiErrorBody { code: self.code.to_owned(), message: self.message })).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_not_a_bare_internal_error() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let e = ApiError::from(ReleaseError::Io { context: "staging a file", source: full });
        assert_eq!((e.status, e.code), (StatusCode::INSUFFICIENT_STORAGE, "no_space"));
        assert!(e.message.contains("no space left on the server"), "{}", e.message);
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = ApiError::from(ReleaseError::Io { context: "staging a file", source: other });
        assert_eq!((e.status, e.code), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
    }
}
