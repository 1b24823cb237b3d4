//! The web dashboard at `/`: server-rendered pages (askama templates compiled into the
//! binary) over the same domain services and policy as the API, with the live log streamed
//! by SSE (htmx and its SSE extension, vendored under `assets/`). A third adapter beside
//! `api` and `socketio`: handlers are thin, access is `domain::policy`'s.
//!
//! - `session`: who looks (the `cb_session` cookie, a personal token), CSRF tokens.
//! - `i18n`: en-US / zh-CN (Fluent), the request's language.
//! - `pages`: projects, project, build page; `live`: the build's log as HTML, live;
//!   `settings`: a project's members and settings, edited by its maintainers;
//!   `admin`: workers, the audit log, a user's API tokens.
//! - `log`: a log's text as escaped, coloured, numbered HTML lines; `format`: dates, rows.

pub mod admin;
pub mod format;
pub mod freeze;
pub mod i18n;
pub mod live;
pub mod log;
pub mod pages;
pub mod session;
pub mod settings;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::domain::users::{self, UserError};
use crate::state::AppState;
use i18n::Lang;
use session::{Checked, Viewer, SESSION_COOKIE};

/// The dashboard's routes (merged into the server's router), each answer with the headers
/// of [`guard`].
pub fn router() -> Router<Arc<AppState>> {
    dashboard_routes().layer(axum::middleware::from_fn(guard))
}

/// Refuses a form posted from another origin (`Origin` not this server's `Host`: the login
/// form too, against signing a victim into an attacker's account), and tells browsers never to
/// frame a dashboard page or guess its types.
async fn guard(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST && !same_origin(req.headers()) {
        return (StatusCode::FORBIDDEN, "a form of another site was refused").into_response();
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("content-security-policy", HeaderValue::from_static("frame-ancestors 'none'"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    resp
}

/// Whether a request's `Origin` (when it has one; browsers send it on every POST) is the host
/// it was sent to (`Host`, or `X-Forwarded-Host` behind a reverse proxy that rewrites `Host`).
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, h)| h).unwrap_or_default();
    ["host", "x-forwarded-host"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .any(|host| !host.is_empty() && origin_host.eq_ignore_ascii_case(host))
}

fn dashboard_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/projects") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/projects", get(pages::projects))
        .route("/projects/{name}", get(pages::project))
        .route("/projects/{name}/rollback", post(pages::rollback))
        .route("/projects/{name}/settings", post(settings::settings))
        .route("/projects/{name}/members", post(settings::set_member))
        .route("/projects/{name}/members/{user}/remove", post(settings::remove_member))
        .route("/tasks/{id}", get(pages::task))
        .route("/tasks/{id}/cancel", post(pages::cancel))
        .route("/tasks/{id}/retry", post(pages::retry))
        .route("/tasks/{id}/approve", post(freeze::approve))
        .route("/tasks/{id}/reject", post(freeze::reject))
        .route("/tasks/{id}/live", get(live::live))
        .route("/tasks/{id}/raw", get(live::raw))
        .route("/tasks/{id}/search", get(live::search))
        .route("/workers", get(admin::workers))
        .route("/users", get(admin::users).post(admin::create_user))
        .route("/users/{name}", post(admin::change_user))
        .route("/audit", get(admin::audit))
        .route("/freeze", get(freeze::page))
        .route("/tokens", get(admin::tokens).post(admin::create_token))
        .route("/tokens/{name}/revoke", post(admin::revoke_token))
        .route("/assets/{file}", get(asset))
}

/// The vendored and own static files, compiled in.
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "htmx-2.0.11.min.js" => (include_bytes!("../../assets/htmx-2.0.11.min.js"), "text/javascript"),
        "htmx-ext-sse-2.2.4.min.js" => (include_bytes!("../../assets/htmx-ext-sse-2.2.4.min.js"), "text/javascript"),
        "log.js" => (include_bytes!("../../assets/log.js"), "text/javascript"),
        "app.css" => (include_bytes!("../../assets/app.css"), "text/css"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    // Versioned vendor files never change; the own ones change with the server.
    let cache = if file.starts_with("htmx") { "public, max-age=31536000, immutable" } else { "no-cache" };
    let kind = format!("{kind}; charset=utf-8");
    ([(header::CONTENT_TYPE, kind.as_str()), (header::CACHE_CONTROL, cache)], body).into_response()
}

/// A page with the `Content-Type` of HTML, or a 500 when a template fails (it cannot, for
/// compiled templates with owned data, but the error is not swallowed).
pub(crate) fn html(page: Result<String, askama::Error>) -> Response {
    match page {
        Ok(body) => {
            let mut resp = body.into_response();
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            resp
        }
        Err(e) => {
            tracing::error!("rendering a dashboard page: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The chrome every page shares: its language, who is signed in, the CSRF token.
pub(crate) struct Chrome {
    pub(crate) lang: Lang,
    pub(crate) who: Option<String>,
    pub(crate) signed_in: bool,
    pub(crate) csrf: String,
    /// Whether to show the admins' links (workers).
    pub(crate) admin: bool,
}

impl Chrome {
    pub(crate) fn of(lang: Lang, viewer: Option<&Viewer>) -> Self {
        Chrome {
            lang,
            who: viewer.map(|v| v.caller.name.clone()),
            signed_in: viewer.is_some_and(|v| v.caller.token.is_some()),
            csrf: viewer.map(|v| v.csrf.clone()).unwrap_or_default(),
            admin: viewer.is_some_and(|v| v.caller.is_admin()),
        }
    }
}

#[derive(askama::Template)]
#[template(path = "login.html")]
struct LoginPage {
    lang: Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    next: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Where to go after signing in: a path of this site only (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Printable ASCII only: a tab or newline a browser strips could make `/\t/evil` `//evil`.
        Some(n)
            if n.starts_with('/') && !n.starts_with("//") && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_owned()
        }
        _ => "/projects".to_owned(),
    }
}

async fn login_page(lang: Lang, axum::extract::Query(q): axum::extract::Query<NextQuery>) -> Response {
    login_form(lang, safe_next(q.next.as_deref()), None)
}

/// The login page, with the error of a failed attempt.
fn login_form(lang: Lang, next: String, error: Option<String>) -> Response {
    let page = LoginPage { lang, who: None, signed_in: false, csrf: String::new(), admin: false, next, error };
    html(askama::Template::render(&page))
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    next: Option<String>,
}

/// The login form: a password for a personal token (named `web`), kept in an `HttpOnly`,
/// `SameSite=Lax` cookie (`Secure` when the server is reached over https).
async fn login(
    State(state): State<Arc<AppState>>,
    lang: Lang,
    crate::api::extract::Peer(peer): crate::api::extract::Peer,
    headers: axum::http::HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let req =
        cloudbuild_proto::user::Login { user: form.user, password: form.password, token_name: Some("web".into()) };
    match users::login(&state, peer, req).await {
        Ok(made) => {
            // The session this one replaces (same browser) is revoked, not left to expire.
            if let Some(old) = i18n::cookie(&headers, SESSION_COOKIE).filter(|t| !t.is_empty()) {
                if let Ok(caller) = crate::domain::callers::identify(&state, Some(old)).await {
                    let _ = users::logout(&state, &caller).await;
                }
            }
            let secure = if state.public_url.starts_with("https://") { "; Secure" } else { "" };
            let max_age = i64::from(users::LOGIN_TOKEN_DAYS) * 86_400;
            let cookie =
                format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}", made.secret);
            ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
        }
        Err(e) => {
            let error = match e {
                UserError::TooManyAttempts(s) => lang.t1("login-limited", "seconds", s),
                UserError::BadCredentials | UserError::Invalid(_) => lang.t("login-failed"),
                other => {
                    tracing::warn!("dashboard sign-in: {other}");
                    lang.t("login-failed")
                }
            };
            let mut resp = login_form(lang, next, Some(error));
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            resp
        }
    }
}

/// A form with nothing but its CSRF token (a button).
#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

impl session::WithCsrf for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Signing out revokes the session's token and clears the cookie.
async fn logout(State(state): State<Arc<AppState>>, Checked(viewer, _): Checked<CsrfForm>) -> Response {
    if let Err(e) = users::logout(&state, &viewer.caller).await {
        tracing::info!("dashboard sign-out: {e}");
    }
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    ([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response()
}

/// `?locale=` also sets the language cookie, so the choice sticks on the next pages.
pub async fn remember_locale(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let chosen = i18n::query_locale(&parts).and_then(|l| Lang::negotiate(&l)).map(|l| l.tag());
    let mut resp = next.run(axum::extract::Request::from_parts(parts, body)).await;
    if let Some(tag) = chosen {
        let cookie = format!("{}={tag}; Path=/; SameSite=Lax; Max-Age=31536000", i18n::LOCALE_COOKIE);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_sites_paths_are_followed_after_signing_in() {
        assert_eq!(safe_next(Some("/tasks/12#L3")), "/tasks/12#L3");
        for bad in ["//evil.example/", "/\t/evil.example", "/\\evil.example", "https://evil.example/", "/a b", ""] {
            assert_eq!(safe_next(Some(bad)), "/projects", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/projects");
    }

    #[test]
    fn forms_are_taken_from_this_origin_only() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = axum::http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&headers(&[("host", "ci.example:7001")])), "no Origin: not a cross-site browser form");
        assert!(same_origin(&headers(&[("host", "ci.example:7001"), ("origin", "https://ci.example:7001")])));
        assert!(!same_origin(&headers(&[("host", "ci.example:7001"), ("origin", "https://evil.example")])));
        assert!(!same_origin(&headers(&[("host", "ci.example:7001"), ("origin", "null")])));
        let proxied =
            [("host", "127.0.0.1:7001"), ("x-forwarded-host", "ci.example"), ("origin", "https://ci.example")];
        assert!(same_origin(&headers(&proxied)));
    }
}
