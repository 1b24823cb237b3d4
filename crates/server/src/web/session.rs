//! Who is looking at a dashboard page: a signed-in session (the `cb_session` cookie holds a
//! personal token made by the login form, so revocation, expiry and the audit log work as for
//! any token), or the anonymous admin of a loopback server; a guest is sent to the login page.
//! Every form carries a CSRF token bound to the session.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::i18n::cookie;
use crate::domain::callers::{self, constant_time_eq, Caller};
use crate::state::AppState;

/// The cookie holding a dashboard session's personal token.
pub const SESSION_COOKIE: &str = "cb_session";

/// The caller of a page, with the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
}

/// The CSRF token of a session, which a page of another site can neither read nor compute: a
/// key derived from the session's own token (so it survives restarts and holds on every
/// server of a cluster), or, without a session (the anonymous admin), a hash keyed with this
/// server's random key.
pub fn csrf_token(state: &AppState, session: Option<&str>) -> String {
    match session {
        Some(token) => blake3::Hash::from(blake3::derive_key("cloudbuild 2026 dashboard csrf", token.as_bytes()))
            .to_hex()
            .to_string(),
        None => blake3::keyed_hash(&state.csrf_key, b"anonymous").to_hex().to_string(),
    }
}

impl Viewer {
    /// Whether a form's `csrf` field is this session's.
    pub fn csrf_ok(&self, given: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), given.as_bytes())
    }
}

/// Where a guest goes: the login page, back to `path` after signing in.
pub fn to_login(path: &str) -> Response {
    let next: String = url_encode(path);
    Redirect::to(&format!("/login?next={next}")).into_response()
}

/// What a query value keeps unencoded: RFC 3986's unreserved characters and `/`.
const QUERY_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// What a path segment keeps unencoded: the same but `/`.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &QUERY_VALUE.add(b'/');

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// Percent-encodes one path segment (a scoped project name's `/` too).
pub fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

/// A form that carries a CSRF token (its `csrf` field).
pub trait WithCsrf {
    fn csrf(&self) -> &str;
}

/// A form posted by a viewer, its CSRF token checked: the extractor of every state-changing
/// dashboard route. A forged or missing token is refused (403) before the handler runs.
pub struct Checked<T>(pub Viewer, pub T);

impl<T: serde::de::DeserializeOwned + WithCsrf + Send> axum::extract::FromRequest<Arc<AppState>> for Checked<T> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let Ok(lang) = super::i18n::Lang::from_request_parts(&mut parts, state).await;
        let req = axum::extract::Request::from_parts(parts, body);
        let axum::Form(form) = axum::Form::<T>::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        if !viewer.csrf_ok(form.csrf()) {
            return Err((StatusCode::FORBIDDEN, lang.t("csrf-refused")).into_response());
        }
        Ok(Checked(viewer, form))
    }
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let session = cookie(&parts.headers, SESSION_COOKIE).filter(|t| !t.is_empty()).map(str::to_owned);
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        match callers::identify(state, session.as_deref()).await {
            Ok(mut caller) => {
                caller.address =
                    parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
                Ok(Viewer { csrf: csrf_token(state, session.as_deref()), caller })
            }
            Err(callers::AuthError::Store(e)) => {
                tracing::warn!("a dashboard page could not identify its caller: {e}");
                Err((StatusCode::SERVICE_UNAVAILABLE, "the server cannot reach its store right now; try again shortly")
                    .into_response())
            }
            Err(_) => Err(to_login(&path)),
        }
    }
}
