//! A project's members and settings, edited from its page by its maintainers: thin form
//! handlers over `domain::projects` (which asks the policy, audits, and keeps a maintainer).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use cloudbuild_proto::project::{EditProject, Visibility};
use cloudbuild_proto::user::ProjectRole;
use serde::Deserialize;

use super::pages::{path_of, refused};
use super::session::{Checked, WithCsrf};
use super::CsrfForm;
use crate::domain::policy::ProjectAction;
use crate::domain::projects;
use crate::state::AppState;

/// Back to the project's page, at its members and settings.
fn back(name: &str) -> Response {
    Redirect::to(&format!("/projects/{}#manage", path_of(name))).into_response()
}

#[derive(Deserialize)]
pub struct MemberForm {
    csrf: String,
    user: String,
    role: ProjectRole,
}

impl WithCsrf for MemberForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /projects/{name}/members`: adds a member or changes their role (maintainers).
pub async fn set_member(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Checked(viewer, form): Checked<MemberForm>,
) -> Response {
    match projects::set_member(&state, &viewer.caller, &name, form.user.trim(), form.role).await {
        Ok(_) => back(&name),
        Err(e) => refused(e),
    }
}

/// `POST /projects/{name}/members/{user}/remove` (maintainers; the last maintainer stays).
pub async fn remove_member(
    State(state): State<Arc<AppState>>,
    Path((name, user)): Path<(String, String)>,
    Checked(viewer, _): Checked<CsrfForm>,
) -> Response {
    match projects::remove_member(&state, &viewer.caller, &name, &user).await {
        Ok(_) => back(&name),
        Err(e) => refused(e),
    }
}

#[derive(Deserialize)]
pub struct SettingsForm {
    csrf: String,
    repo: String,
    default_branch: String,
    visibility: Visibility,
}

impl WithCsrf for SettingsForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /projects/{name}/settings`: the repository, default branch and visibility
/// (maintainers; what changed is validated by the domain as through the API).
pub async fn settings(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Checked(viewer, form): Checked<SettingsForm>,
) -> Response {
    let now = match projects::get(&state, &viewer.caller, &name, ProjectAction::Read).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    // Only what the form changed: an unchanged repository is not checked against today's rules
    // again (nor its stored spelling rewritten) because the visibility changed.
    let changed = |new: &str, old: &str| (new.trim() != old).then(|| new.trim().to_owned());
    let edit = EditProject {
        repo: changed(&form.repo, &now.repo),
        default_branch: changed(&form.default_branch, &now.default_branch),
        visibility: (form.visibility != now.visibility).then_some(form.visibility),
        triggers: None,
        approvals: None,
    };
    match projects::edit(&state, &viewer.caller, &name, edit).await {
        Ok(_) => back(&name),
        Err(e) => refused(e),
    }
}
