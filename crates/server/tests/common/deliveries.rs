//! Forge deliveries as the forges send them, for the webhook and commit status tests.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tower::ServiceExt;

use super::Api;

pub(crate) fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A GitHub push payload (the documented fields cloudbuild reads).
pub(crate) fn github_push(reference: &str, after: &str, message: &str) -> Value {
    json!({
        "ref": reference, "before": "0".repeat(40), "after": after, "deleted": after.chars().all(|c| c == '0'),
        "repository": {"clone_url": "https://example.com/site.git", "ssh_url": "git@example.com:site.git",
                       "html_url": "https://example.com/site"},
        "pusher": {"name": "octocat", "email": "octocat@example.com"},
        "head_commit": {"id": after, "message": message},
        "commits": [{"id": after, "message": message, "added": ["src/new.js"], "modified": [], "removed": []}],
    })
}

pub(crate) async fn post(api: &Api, uri: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, Value) {
    let mut req =
        Request::post(uri).header(header::HOST, "127.0.0.1:7001").header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = api.app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A GitHub delivery signed with `secret`.
pub(crate) async fn github(api: &Api, secret: &str, event: &str, id: &str, payload: &Value) -> (StatusCode, Value) {
    let body = payload.to_string().into_bytes();
    let signature = format!("sha256={}", hmac_hex(secret, &body));
    let headers = [("x-github-event", event), ("x-github-delivery", id), ("x-hub-signature-256", signature.as_str())];
    post(api, "/api/v1/hooks/github", &headers, body).await
}
