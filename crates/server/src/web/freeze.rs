//! The dashboard's release gates: the freeze page (every window that applies, global ones and
//! a project's own with `?project=`, whether it holds now and until when, its next close and
//! open, and whether test, prod and previews are frozen now; windows are changed with the CLI
//! or the API), and a build's approve and reject buttons.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::format::when;
use super::i18n::Lang;
use super::pages::refused;
use super::session::{Checked, Viewer, WithCsrf};
use super::{html, Chrome};
use crate::api::extract::TaskIdParam;
use crate::domain::{approvals, freeze};
use crate::state::AppState;

struct WindowRow {
    id: String,
    scope: String,
    reason: String,
    environments: String,
    /// The range, or the expressions with their zone.
    schedule: String,
    /// While it holds: when it opens (empty otherwise).
    active_until: String,
    active: bool,
    next_closes: String,
    next_opens: String,
    rollbacks: bool,
}

struct EnvRow {
    environment: String,
    frozen: bool,
    until: String,
    reasons: String,
    next_closes: String,
}

#[derive(Template)]
#[template(path = "freeze.html")]
struct FreezePage {
    lang: Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    project: String,
    windows: Vec<WindowRow>,
    environments: Vec<EnvRow>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FreezeFilter {
    #[serde(default)]
    project: String,
}

/// `GET /freeze[?project=NAME]` (signed in; a project's windows for its readers).
pub async fn page(
    State(state): State<Arc<AppState>>,
    lang: Lang,
    viewer: Viewer,
    Query(f): Query<FreezeFilter>,
) -> Response {
    let project = Some(f.project.as_str()).filter(|p| !p.is_empty());
    let (views, status) = match (
        freeze::list(&state, &viewer.caller, project).await,
        freeze::status(&state, &viewer.caller, project).await,
    ) {
        (Ok(v), Ok(s)) => (v, s),
        (Err(e), _) | (_, Err(e)) => return refused(e),
    };
    let at = |t: Option<cloudbuild_proto::time::Timestamp>| t.map(|t| when(&lang, t)).unwrap_or_default();
    let windows = views
        .into_iter()
        .map(|v| {
            let w = &v.window.when;
            let schedule = match (&w.from, &w.to, &w.start_cron) {
                (Some(from), Some(to), _) => format!("{} → {}", when(&lang, *from), when(&lang, *to)),
                (_, _, Some(start)) => {
                    let end = match (&w.end_cron, w.duration_secs) {
                        (Some(e), _) => format!("→ {e}"),
                        (None, Some(d)) => format!("+ {}s", d),
                        _ => String::new(),
                    };
                    format!("{start} {end} ({})", w.timezone.as_deref().unwrap_or("UTC"))
                }
                _ => String::new(),
            };
            WindowRow {
                id: v.window.id.clone(),
                scope: v.window.project.clone().unwrap_or_default(),
                reason: v.window.reason.clone(),
                environments: v.window.environments.join(", "),
                schedule,
                active_until: at(v.active_until),
                active: v.active,
                next_closes: at(v.next_closes),
                next_opens: at(v.next_opens),
                rollbacks: v.window.rollbacks,
            }
        })
        .collect();
    let environments = status
        .environments
        .into_iter()
        .map(|e| EnvRow {
            until: at(e.opens),
            reasons: e.reasons.join("; "),
            next_closes: at(e.next_closes),
            frozen: e.frozen,
            environment: e.environment,
        })
        .collect();
    let Chrome { lang, who, signed_in, csrf, admin } = Chrome::of(lang, Some(&viewer));
    let project = f.project;
    html(FreezePage { lang, who, signed_in, csrf, admin, project, windows, environments }.render())
}

/// The approve and reject forms: the reason (optional to approve, required to reject).
#[derive(Debug, Deserialize)]
pub struct DecisionForm {
    csrf: String,
    #[serde(default)]
    reason: String,
}

impl WithCsrf for DecisionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /tasks/{id}/approve`: back to the build's page.
pub async fn approve(
    State(state): State<Arc<AppState>>,
    TaskIdParam(id): TaskIdParam,
    Checked(viewer, form): Checked<DecisionForm>,
) -> Response {
    let reason = Some(form.reason.as_str()).filter(|r| !r.trim().is_empty());
    match approvals::approve(&state, &viewer.caller, id, reason).await {
        Ok(_) => Redirect::to(&format!("/tasks/{id}")).into_response(),
        Err(e) => refused(e),
    }
}

/// `POST /tasks/{id}/reject`: back to the build's page.
pub async fn reject(
    State(state): State<Arc<AppState>>,
    TaskIdParam(id): TaskIdParam,
    Checked(viewer, form): Checked<DecisionForm>,
) -> Response {
    match approvals::reject(&state, &viewer.caller, id, &form.reason).await {
        Ok(_) => Redirect::to(&format!("/tasks/{id}")).into_response(),
        Err(e) => refused(e),
    }
}
