//! Driving the dashboard's pages in-process: a request with a session cookie (and a form),
//! the page's status, headers and body, and the CSRF token of its forms.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use tower::ServiceExt;

use super::Api;

/// A response's status, headers and body text.
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: String,
}

impl Page {
    pub(crate) fn header(&self, name: &str) -> String {
        self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join("\n")
    }

    /// The CSRF token of the page's forms.
    pub(crate) fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
        self.body[at..at + 64].to_owned()
    }
}

pub(crate) async fn send(
    api: &Api,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    extra: &[(&str, &str)],
) -> Page {
    let mut req = Request::builder().method(method).uri(uri).header(header::HOST, "127.0.0.1:7001");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let body = match form {
        Some(f) => {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(f.to_owned())
        }
        None => Body::empty(),
    };
    let resp = api.app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
    Page { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

pub(crate) fn session(name: &str) -> String {
    format!("cb_session=cbp_{name}")
}
