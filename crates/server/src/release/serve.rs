//! Serves the local targets: `/sites/<env>/<name>/…` (the current release) and
//! `/releases/<env>/<name>/<version>/<task>/…` (one immutable release).
//!
//! A request for the current release resolves the `current` link once, so each response comes
//! entirely from one release. A non-HTML file missing from the current release is looked up in
//! the previous one: a page loaded just before a switch can still fetch its fingerprinted assets.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use cloudbuild_proto::task::Environment;
use cloudbuild_proto::validate::{ProjectName, RelPath, Version};
use tower::ServiceExt;
use tower_http::services::ServeDir;

use super::headers::{cache_control, content_type, is_html};
use crate::state::AppState;

fn not_found(why: &str) -> Response {
    (StatusCode::NOT_FOUND, why.to_owned()).into_response()
}

/// Splits `<name>/<rest>` where a scoped name takes two segments.
fn split_name(path: &str) -> Option<(ProjectName, &str)> {
    let mut parts = path.splitn(3, '/');
    let first = parts.next()?;
    let (name, rest) = if first.starts_with('@') {
        let second = parts.next()?;
        (format!("{first}/{second}"), parts.next().unwrap_or(""))
    } else {
        let rest = &path[first.len()..];
        (first.to_owned(), rest.strip_prefix('/').unwrap_or(rest))
    };
    Some((ProjectName::parse(&name).ok()?, rest))
}

/// The local root of an environment, the project and the rest of a served path; or why not.
fn locate<'p>(state: &AppState, env: &str, path: &'p str) -> Result<(PathBuf, ProjectName, &'p str), &'static str> {
    let env = Environment::parse(env).ok_or("unknown environment")?;
    let root = state
        .targets
        .get(env)
        .local_root()
        .map(PathBuf::from)
        .ok_or("this environment publishes to object storage; use its CDN URL")?;
    let (name, rest) = split_name(path).ok_or("not a project path")?;
    Ok((root, name, rest))
}

/// Serves `rest` from `dir` with ServeDir (types, ranges, ETags, `index.html` for directories).
async fn serve_from(dir: PathBuf, rest: &str, method: &axum::http::Method) -> Response {
    let uri: Uri = match format!("/{rest}").parse() {
        Ok(u) => u,
        Err(_) => return not_found("bad path"),
    };
    let req = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap_or_default();
    match ServeDir::new(dir).append_index_html_on_directories(true).oneshot(req).await {
        Ok(resp) => resp.into_response(),
        Err(_) => not_found("not found"),
    }
}

fn file_of(rest: &str) -> String {
    if rest.is_empty() || rest.ends_with('/') {
        format!("{rest}index.html")
    } else {
        rest.to_owned()
    }
}

/// `GET /sites/{env}/{*path}`
pub async fn site(
    State(state): State<Arc<AppState>>,
    Path((env, path)): Path<(String, String)>,
    req: Request<Body>,
) -> Response {
    let (root, name, rest) = match locate(&state, &env, &path) {
        Ok(found) => found,
        Err(why) => return not_found(why),
    };
    if rest.is_empty() && !req.uri().path().ends_with('/') {
        return Redirect::permanent(&format!("{}/", req.uri().path())).into_response();
    }
    if !rest.is_empty() && RelPath::parse(rest.trim_end_matches('/')).is_err() {
        return not_found("bad path");
    }
    let project = name.path_segments().iter().fold(root, |p, s| p.join(s));
    let mut resp = serve_from(project.join("current"), rest, req.method()).await;
    let file = file_of(rest);
    if resp.status() == StatusCode::NOT_FOUND && !is_html(&file) {
        resp = serve_from(project.join("previous"), rest, req.method()).await;
    }
    if resp.status().is_success() {
        set_headers(&mut resp, &file, cache_control(&file));
    }
    resp
}

/// The same Content-Type an S3 target gets, and the cache policy.
fn set_headers(resp: &mut Response, file: &str, cache: &'static str) {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(file)));
}

/// `GET /releases/{env}/{*path}`: `<name>/<version>/<task>/<file>` of one release.
pub async fn release(
    State(state): State<Arc<AppState>>,
    Path((env, path)): Path<(String, String)>,
    req: Request<Body>,
) -> Response {
    let (root, name, rest) = match locate(&state, &env, &path) {
        Ok(found) => found,
        Err(why) => return not_found(why),
    };
    let mut parts = rest.splitn(3, '/');
    let (Some(version), Some(task)) = (parts.next(), parts.next()) else { return not_found("not a release path") };
    if Version::parse(version).is_err() || task.is_empty() || !task.bytes().all(|b| b.is_ascii_digit()) {
        return not_found("not a release path");
    }
    let rest = parts.next().unwrap_or("");
    if !rest.is_empty() && RelPath::parse(rest.trim_end_matches('/')).is_err() {
        return not_found("bad path");
    }
    let dir = name.path_segments().iter().fold(root, |p, s| p.join(s)).join(version).join(task);
    let mut resp = serve_from(dir, rest, req.method()).await;
    if resp.status().is_success() {
        // An immutable release never changes under its URL.
        set_headers(&mut resp, &file_of(rest), "public, max-age=31536000, immutable");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::split_name;

    #[test]
    fn names_are_split_from_paths() {
        let (n, rest) = split_name("app/assets/x.js").unwrap();
        assert_eq!((n.as_str(), rest), ("app", "assets/x.js"));
        let (n, rest) = split_name("@team/portal/").unwrap();
        assert_eq!((n.as_str(), rest), ("@team/portal", ""));
        assert_eq!(split_name("app").unwrap().1, "");
        assert!(split_name("../x").is_none());
        assert!(split_name("@team").is_none());
    }
}
