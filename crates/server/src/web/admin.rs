//! The dashboard's pages about the server rather than one project: workers and worker tokens
//! (admins), users (admins), the audit log (admins: all; maintainers: their projects), and a
//! user's own API tokens. Access is `domain::policy`'s, through the same services as the API.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::format::when;
use super::i18n::Lang;
use super::pages::refused;
use super::session::{url_encode, Checked, Viewer, WithCsrf};
use super::{html, Chrome, CsrfForm};
use crate::domain::{audit, users, workers};
use crate::state::AppState;
use cloudbuild_proto::user::{EditUser, GlobalRole};

struct WorkerRow {
    name: String,
    state: String,
    slots: u32,
    labels: String,
    running: Vec<i64>,
    heartbeat: String,
}

#[derive(Template)]
#[template(path = "workers.html")]
struct WorkersPage {
    lang: Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    workers: Vec<WorkerRow>,
    tokens: Vec<String>,
}

/// `GET /workers` (admins): each worker's state, slots, labels, running tasks, last heartbeat;
/// the worker tokens.
pub async fn workers(State(state): State<Arc<AppState>>, lang: Lang, viewer: Viewer) -> Response {
    let list = match workers::list(&state, &viewer.caller).await {
        Ok(l) => l,
        Err(e) => return refused(e),
    };
    let tokens = workers::list_tokens(&state, &viewer.caller).await.unwrap_or_default();
    let rows = list
        .into_iter()
        .map(|w| WorkerRow {
            state: serde_json::to_value(w.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            slots: w.slots,
            labels: w.labels.join(", "),
            running: w.running.iter().map(|a| a.task_id).collect(),
            heartbeat: when(&lang, w.last_heartbeat),
            name: w.name,
        })
        .collect();
    let tokens = tokens
        .into_iter()
        .map(|t| match t.revoked_at {
            Some(r) => format!("{} (revoked {})", t.name, when(&lang, r)),
            None => format!("{} ({})", t.name, when(&lang, t.created_at)),
        })
        .collect();
    let Chrome { lang, who, signed_in, csrf, admin } = Chrome::of(lang, Some(&viewer));
    html(WorkersPage { lang, who, signed_in, csrf, admin, workers: rows, tokens }.render())
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    lang: Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    project: String,
    actor: String,
    action: String,
    /// The filters as a URL query (for the next page's link).
    query: String,
    /// `(when, who, from, action, target, outcome)`.
    entries: Vec<(String, String, String, String, String, String)>,
    next: Option<i64>,
}

#[derive(Deserialize)]
pub struct AuditQuery {
    project: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    before: Option<i64>,
}

/// `GET /audit?project=&actor=&action=&before=`: newest first, 50 a page.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    lang: Lang,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    let some = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    let filter = audit::AuditFilter {
        project: some(&q.project),
        actor: some(&q.actor),
        action: some(&q.action),
        before: q.before,
        limit: Some(50),
    };
    let page = match audit::list(&state, &viewer.caller, filter).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let entries = page
        .entries
        .into_iter()
        .map(|e| (when(&lang, e.at), e.actor, e.address.unwrap_or_default(), e.action, e.target, e.outcome))
        .collect();
    let Chrome { lang, who, signed_in, csrf, admin } = Chrome::of(lang, Some(&viewer));
    let page = AuditPage {
        lang,
        who,
        signed_in,
        csrf,
        admin,
        query: ["project", "actor", "action"]
            .iter()
            .zip([&q.project, &q.actor, &q.action])
            .map(|(k, v)| format!("{k}={}", url_encode(v.as_deref().unwrap_or_default())))
            .collect::<Vec<_>>()
            .join("&"),
        project: q.project.unwrap_or_default(),
        actor: q.actor.unwrap_or_default(),
        action: q.action.unwrap_or_default(),
        entries,
        next: page.next_before,
    };
    html(page.render())
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    lang: Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    /// `(name, created, expires, last used, name for the URL)`.
    tokens: Vec<(String, String, String, String, String)>,
    secret: Option<String>,
}

async fn tokens_page(state: &AppState, lang: Lang, viewer: &Viewer, secret: Option<String>) -> Response {
    let list = match users::list_tokens(state, &viewer.caller).await {
        Ok(l) => l,
        Err(e) => return refused(e),
    };
    let never = lang.t("tokens-never");
    let at = |t: Option<cloudbuild_proto::time::Timestamp>| t.map_or_else(|| never.clone(), |t| when(&lang, t));
    let tokens = list
        .into_iter()
        .map(|t| (t.name.clone(), when(&lang, t.created_at), at(t.expires_at), at(t.last_used_at), t.name))
        .collect();
    let shown = secret.is_some();
    let Chrome { lang, who, signed_in, csrf, admin } = Chrome::of(lang, Some(viewer));
    let mut resp = html(TokensPage { lang, who, signed_in, csrf, admin, tokens, secret }.render());
    if shown {
        // The secret is in this page once: not kept by caches or the browser's history.
        resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    }
    resp
}

/// `GET /tokens`: the signed-in user's API tokens.
pub async fn tokens(State(state): State<Arc<AppState>>, lang: Lang, viewer: Viewer) -> Response {
    tokens_page(&state, lang, &viewer, None).await
}

#[derive(Deserialize)]
pub struct NewToken {
    csrf: String,
    name: String,
    days: Option<String>,
}

impl WithCsrf for NewToken {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /tokens`: a new token, its secret shown on the page this once.
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    lang: Lang,
    Checked(viewer, form): Checked<NewToken>,
) -> Response {
    let days = form.days.as_deref().map(str::trim).filter(|d| !d.is_empty());
    let expires_in_days = match days.map(str::parse::<u32>).transpose() {
        Ok(d) => d,
        Err(_) => return refused(users::UserError::Refused("days must be a whole number".into())),
    };
    let req = cloudbuild_proto::user::CreateApiToken { name: form.name, expires_in_days };
    match users::create_token(&state, &viewer.caller, req).await {
        Ok(made) => tokens_page(&state, lang, &viewer, Some(made.secret)).await,
        Err(e) => refused(e),
    }
}

/// `POST /tokens/{name}/revoke`.
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Checked(viewer, _): Checked<CsrfForm>,
) -> Response {
    match users::revoke_token(&state, &viewer.caller, &name).await {
        // Revoking the session's own token signs it out: the next page asks to sign in.
        Ok(()) => Redirect::to("/tokens").into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    lang: Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    /// `(name, role, disabled, created)`.
    users: Vec<(String, String, bool, String)>,
}

/// `GET /users` (admins): every user, with buttons to disable or enable them and change their
/// role, and a form for a new one.
pub async fn users(State(state): State<Arc<AppState>>, lang: Lang, viewer: Viewer) -> Response {
    let list = match users::list(&state, &viewer.caller).await {
        Ok(l) => l,
        Err(e) => return refused(e),
    };
    let users = list.into_iter().map(|u| (u.name, u.role.to_string(), u.disabled, when(&lang, u.created_at))).collect();
    let Chrome { lang, who, signed_in, csrf, admin } = Chrome::of(lang, Some(&viewer));
    html(UsersPage { lang, who, signed_in, csrf, admin, users }.render())
}

#[derive(Deserialize)]
pub struct NewUser {
    csrf: String,
    name: String,
    password: String,
    admin: Option<String>,
}

impl WithCsrf for NewUser {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /users` (admins).
pub async fn create_user(State(state): State<Arc<AppState>>, Checked(viewer, form): Checked<NewUser>) -> Response {
    let role = if form.admin.is_some() { GlobalRole::Admin } else { GlobalRole::User };
    let req = cloudbuild_proto::user::CreateUser { name: form.name, password: form.password, role: Some(role) };
    match users::create(&state, &viewer.caller, req).await {
        Ok(_) => Redirect::to("/users").into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Deserialize)]
pub struct ChangeUser {
    csrf: String,
    /// `enable`, `disable`, `admin` or `user`.
    change: String,
}

impl WithCsrf for ChangeUser {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /users/{name}` (admins): enable, disable, or change the role.
pub async fn change_user(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Checked(viewer, form): Checked<ChangeUser>,
) -> Response {
    let edit = match form.change.as_str() {
        "enable" => EditUser { disabled: Some(false), ..Default::default() },
        "disable" => EditUser { disabled: Some(true), ..Default::default() },
        "admin" => EditUser { role: Some(GlobalRole::Admin), ..Default::default() },
        "user" => EditUser { role: Some(GlobalRole::User), ..Default::default() },
        other => return refused(users::UserError::Refused(format!("unknown change `{other}`"))),
    };
    match users::edit(&state, &viewer.caller, &name, edit).await {
        Ok(_) => Redirect::to("/users").into_response(),
        Err(e) => refused(e),
    }
}
