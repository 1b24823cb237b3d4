//! Finds the release a site request is for, by host (`<site>.<env>.<domain>`,
//! `<site>---<task>.<env>.<domain>`, a preview's `pr-<N>--<site>.preview.<domain>`) or by path
//! (`/sites/<env>/<name>/…`, `/releases/<env>/<name>/<version>/<task>/…`, a preview's
//! `/sites/preview/<name>/pr-<N>/…`), then answers it with [`respond`].
//!
//! The links it follows are those of [`crate::targets::layout`]. `current` and `previous` are
//! read once per request, so each answer comes from one release. Links are read with plain
//! system calls on the async thread: a `readlink` on a local disk takes microseconds, far less
//! than a hop to the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cloudbuild_proto::site::{parse_label, HostLabel};
use cloudbuild_proto::task::{parse_pull_request, Environment};
use cloudbuild_proto::validate::{ProjectName, Version};
use percent_encoding::percent_decode_str;

use super::index::ReleaseIndex;
use super::respond::Site;
use crate::state::AppState;
use crate::targets::layout::{name_of_label_link, project_dir, read_record, SiteRecord, LABELS_DIR, RELEASES_DIR};

/// Why no site answers: a plain-text 404.
#[derive(Debug, Clone, Copy)]
struct NotFound(&'static str);

impl IntoResponse for NotFound {
    fn into_response(self) -> Response {
        let mut resp = (StatusCode::NOT_FOUND, format!("{}\n", self.0)).into_response();
        resp.headers_mut()
            .insert(axum::http::header::X_CONTENT_TYPE_OPTIONS, axum::http::HeaderValue::from_static("nosniff"));
        resp
    }
}

fn not_found(why: &'static str) -> NotFound {
    NotFound(why)
}

/// Which site the `Host` of a request names, when it is under the sites domain.
fn host_site<'h>(host: &'h str, domain: &str) -> Option<Result<(Environment, HostLabel<'h>), ()>> {
    let host = host.trim_end_matches('.');
    let rest = host.strip_suffix(domain)?.strip_suffix('.')?;
    let Some((label, env)) = rest.split_once('.') else { return Some(Err(())) };
    if env == "preview" {
        // `pr-<N>--<site label>`: the number, then any site's label (which may hold `--` too).
        // A DNS label is at most 63 characters, the whole of it.
        let found = (label.len() <= 63)
            .then_some(label)
            .and_then(|l| l.strip_prefix("pr-"))
            .and_then(|l| l.split_once("--"))
            .and_then(|(n, site)| Some((Environment::Preview(parse_pull_request(n)?), parse_label(site)?)));
        return Some(found.ok_or(()));
    }
    let found = Environment::parse(env).filter(|e| e.pull_request().is_none()).zip(parse_label(label));
    Some(found.ok_or(()))
}

/// The host name a request was sent to, lower-cased, without its port.
/// The host of a request: the request line's authority when it has one (RFC 9112 §3.2.2), else
/// the `Host` header, parsed as an authority (so `a.test@evil.com` is `evil.com`).
fn request_host(req: &Request) -> Option<String> {
    if let Some(host) = req.uri().host() {
        return Some(host.trim_end_matches('.').to_ascii_lowercase());
    }
    let raw = req.headers().get(header::HOST)?.to_str().ok()?;
    let authority: axum::http::uri::Authority = raw.parse().ok()?;
    Some(authority.host().trim_end_matches('.').to_ascii_lowercase())
}

/// Whether a host name is this machine's: `localhost`, `*.localhost`, a loopback address.
fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host` may reach the server's own routes (API, event streams, socket.io). Always
/// for the host of `public_url`; and, while anonymous requests are accepted, for loopback names
/// only, so that a web page cannot reach the API through a name of its own that resolves here
/// (DNS rebinding). Never for a host under the sites domain: that is a site's origin.
fn serves_api(state: &AppState, host: &str) -> bool {
    if let Some(domain) = state.sites.domain.as_deref() {
        if host.ends_with(&format!(".{domain}")) {
            return false;
        }
    }
    own_host(state) == Some(host) || !state.settings.allow_anonymous || is_loopback_host(host)
}

/// The host of `public_url` (worked out at start).
fn own_host(state: &AppState) -> Option<&str> {
    state.sites.own_host.as_deref()
}

/// A browser's cross-site WebSocket (no CORS applies to them) from a page that is not the
/// server's own: any site, any other web page. Clients outside browsers send no `Origin`.
fn foreign_websocket(state: &AppState, req: &Request) -> bool {
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return false;
    }
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = origin.parse::<axum::http::Uri>().ok().and_then(|u| u.host().map(str::to_ascii_lowercase));
    !host.is_some_and(|h| serves_api(state, &h) && (is_loopback_host(&h) || own_host(state) == Some(h.as_str())))
}

/// Middleware: a request for `<site>.<env>.<domain>` or for a custom domain is a site's,
/// whatever its path (a site can have an `/api/` folder of its own); everything else goes on to
/// the server's routes.
pub async fn by_host(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(host) = request_host(&req) else { return next.run(req).await };
    let not_api = |why: &'static str| (StatusCode::FORBIDDEN, why).into_response();
    if let Some(name) = state.sites.custom_domains.get(host.trim_end_matches('.')) {
        let root = match local_root(&state, Environment::Prod) {
            Ok(root) => root,
            Err(missing) => return missing.into_response(),
        };
        return match current_site(&state, Environment::Prod, name, &project_dir(&root, name), String::new()).await {
            Ok(site) => super::compressed(site, req).await,
            Err(missing) => missing.into_response(),
        };
    }
    let api = |req: Request| async {
        if !serves_api(&state, &host) {
            return not_api("this server answers its API at loopback addresses and its public_url only\n");
        }
        if foreign_websocket(&state, &req) {
            return not_api("WebSocket connections from other web pages are refused\n");
        }
        next.run(req).await
    };
    let Some(domain) = state.sites.domain.as_deref() else { return api(req).await };
    match host_site(&host, domain) {
        None => api(req).await,
        Some(Err(())) => not_found("no site has this address").into_response(),
        Some(Ok((env, label))) => {
            let site = site_for_label(&state, env, &label).await;
            match site {
                Ok(site) => super::compressed(site, req).await,
                Err(missing) => missing.into_response(),
            }
        }
    }
}

async fn site_for_label(state: &AppState, env: Environment, label: &HostLabel<'_>) -> Result<Site, NotFound> {
    let root = local_root(state, env)?;
    // A label always names the same project (it is made from the name), so what a link said
    // once stays true: remembered, without a system call per request.
    let known =
        state.sites.labels.lock().unwrap_or_else(|p| p.into_inner()).get(&(env, label.site.to_owned())).cloned();
    let name = match known {
        Some(name) => name,
        None => {
            let link = root.join(LABELS_DIR).join(label.site);
            let name = std::fs::read_link(&link)
                .ok()
                .and_then(|target| name_of_label_link(&target))
                .ok_or_else(|| not_found("no site has this address"))?;
            let mut labels = state.sites.labels.lock().unwrap_or_else(|p| p.into_inner());
            labels.insert((env, label.site.to_owned()), name.clone());
            name
        }
    };
    let project = project_dir(&root, &name);
    match label.task {
        None => current_site(state, env, &name, &project, String::new()).await,
        Some(task) => {
            let dir = project.join(RELEASES_DIR).join(task.to_string());
            let target = std::fs::read_link(&dir).map_err(|_| not_found("no such release"))?;
            release_site(state, env, &name, project.join(RELEASES_DIR).join(target), String::new()).await
        }
    }
}

fn local_root(state: &AppState, env: Environment) -> Result<PathBuf, NotFound> {
    state
        .targets
        .get(env)
        .local_root()
        .map(Path::to_path_buf)
        .ok_or_else(|| not_found("this environment publishes to object storage; use its CDN URL"))
}

async fn current_site(
    state: &AppState,
    env: Environment,
    name: &ProjectName,
    project: &Path,
    prefix: String,
) -> Result<Site, NotFound> {
    let current = std::fs::read_link(project.join("current")).map_err(|e| {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(project = %project.display(), "reading the current release's link failed: {e}");
        }
        not_found("no such site")
    })?;
    let release = load(state, env, name, project.join(current)).await.ok_or_else(|| not_found("no such site"))?;
    // The previous release may have been pruned since its index was cached.
    let previous = match std::fs::read_link(project.join("previous")) {
        Ok(prev) if project.join(&prev).exists() => load(state, env, name, project.join(prev)).await,
        _ => None,
    };
    Ok(Site { release, previous, prefix, immutable: false, bodies: state.sites.bodies.clone() })
}

async fn release_site(
    state: &AppState,
    env: Environment,
    name: &ProjectName,
    dir: PathBuf,
    prefix: String,
) -> Result<Site, NotFound> {
    // A pruned release may still be in the index cache: its directory says it is gone.
    if !dir.exists() {
        return Err(not_found("no such release"));
    }
    let release = load(state, env, name, dir).await.ok_or_else(|| not_found("no such release"))?;
    Ok(Site { release, previous: None, prefix, immutable: true, bodies: state.sites.bodies.clone() })
}

/// The index of the release in `dir`: cached, else its record, else (a release published
/// before records existed) the store's file list with default `[site]` settings.
async fn load(state: &AppState, env: Environment, name: &ProjectName, dir: PathBuf) -> Option<Arc<ReleaseIndex>> {
    let dir = normalise(&dir);
    if let Some(index) = state.sites.indexes.get(&dir) {
        return Some(index);
    }
    let record = match read_record(&dir).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            let task: i64 = dir.file_name()?.to_str()?.parse().ok()?;
            let releases = match state.store.list_releases(Some(env), name.as_str()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%name, "listing releases for a site without a record failed: {e}");
                    return None;
                }
            };
            let release = releases.into_iter().find(|r| r.task_id == task && !r.pruned)?;
            let files = match state.store.release_files(release.id).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(%name, release = release.id, "reading a release's files failed: {e}");
                    return None;
                }
            };
            SiteRecord { site: Default::default(), files }
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "reading a release's site record failed: {e}");
            return None;
        }
    };
    if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
        return None;
    }
    let index = Arc::new(ReleaseIndex::new(dir, record));
    state.sites.indexes.put(index.clone());
    Some(index)
}

/// Resolves `..` left by following a relative link (`…/.releases/../1.0.0/42`), lexically:
/// link targets are written by the server and never point through other links.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Splits `<name>/<rest>` off a raw (still encoded) path, where a scoped name takes two
/// segments. `rest` keeps its leading `/` (empty when the path ends at the name).
fn split_name(raw: &str) -> Option<(ProjectName, &str)> {
    let decode = |s: &str| percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned());
    let first_end = raw.find('/').unwrap_or(raw.len());
    let first = decode(&raw[..first_end])?;
    let (name, end) = if first.starts_with('@') {
        let after = raw.get(first_end + 1..)?;
        let second_end = after.find('/').unwrap_or(after.len());
        (format!("{first}/{}", decode(&after[..second_end])?), first_end + 1 + second_end)
    } else {
        (first, first_end)
    };
    Some((ProjectName::parse(&name).ok()?, &raw[end..]))
}

/// The environment, project and the raw rest of a path under `/<kind>/`: `<env>/<name>/…`, or
/// a preview's `preview/<name>/pr-<N>/…`. The rest keeps its leading `/` (empty when the path
/// ends at the site); the prefix is the path up to it.
fn site_path<'p>(path: &'p str, kind: &str) -> Option<(Environment, ProjectName, &'p str, String)> {
    let rest = path.strip_prefix('/')?.strip_prefix(kind)?.strip_prefix('/')?;
    let (env, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let (name, raw) = split_name(rest)?;
    let (env, raw) = match env {
        "test" | "prod" => (Environment::parse(env)?, raw),
        "preview" => {
            let after = raw.strip_prefix("/pr-")?;
            let end = after.find('/').unwrap_or(after.len());
            (Environment::Preview(parse_pull_request(&after[..end])?), &after[end..])
        }
        _ => return None,
    };
    let prefix = match env.pull_request() {
        Some(n) => format!("/{kind}/preview/{}/pr-{n}", name.as_str()),
        None => format!("/{kind}/{}/{}", env.as_str(), name.as_str()),
    };
    Some((env, name, raw, prefix))
}

/// `GET /sites/{env}/{name}/…`: the current release by path.
pub async fn site_by_path(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some((env, name, raw, prefix)) = site_path(&path, "sites") else {
        return not_found("not a site path").into_response();
    };
    if raw.is_empty() {
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        return axum::response::Redirect::permanent(&format!("{prefix}/{query}")).into_response();
    }
    let root = match local_root(&state, env) {
        Ok(root) => root,
        Err(missing) => return missing.into_response(),
    };
    let raw = raw.to_owned();
    let resp = match current_site(&state, env, &name, &project_dir(&root, &name), prefix).await {
        Ok(site) => super::compressed_at(site, raw, req).await,
        Err(missing) => missing.into_response(),
    };
    sandboxed(&state, resp)
}

/// A site served by path shares the server's origin with the dashboard, whose sessions are
/// cookies: on a server where people sign in, its pages run in a sandbox (an opaque origin:
/// no access to the dashboard's cookies or pages, scripts still run), and its files may be
/// fetched from there (`Access-Control-Allow-Origin: *`: they are public). Sites by host
/// (`<site>.<env>.<domain>`) are their own origin and need none of this.
fn sandboxed(state: &AppState, mut resp: Response) -> Response {
    if !state.settings.allow_anonymous {
        let h = resp.headers_mut();
        h.insert(
            "content-security-policy",
            HeaderValue::from_static("sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"),
        );
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    }
    resp
}

/// `GET /releases/{env}/{name}/{version}/{task}/…`: one immutable release by path.
pub async fn release_by_path(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some((env, name, raw, prefix)) = site_path(&path, "releases") else {
        return not_found("not a release path").into_response();
    };
    let mut parts = raw.trim_start_matches('/').splitn(3, '/');
    let (Some(version), Some(task)) = (parts.next(), parts.next()) else {
        return not_found("not a release path").into_response();
    };
    if Version::parse(version).is_err() || task.is_empty() || !task.bytes().all(|b| b.is_ascii_digit()) {
        return not_found("not a release path").into_response();
    }
    let prefix = format!("{prefix}/{version}/{task}");
    let raw = match parts.next() {
        Some(r) => format!("/{r}"),
        None if raw.ends_with('/') => "/".to_owned(),
        None => {
            let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
            return axum::response::Redirect::permanent(&format!("{prefix}/{query}")).into_response();
        }
    };
    let root = match local_root(&state, env) {
        Ok(root) => root,
        Err(missing) => return missing.into_response(),
    };
    let dir = project_dir(&root, &name).join(version).join(task);
    let resp = match release_site(&state, env, &name, dir, prefix).await {
        Ok(site) => super::compressed_at(site, raw, req).await,
        Err(missing) => missing.into_response(),
    };
    sandboxed(&state, resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_from_raw_paths() {
        let (n, rest) = split_name("app/assets/x.js").unwrap();
        assert_eq!((n.as_str(), rest), ("app", "/assets/x.js"));
        let (n, rest) = split_name("@team/portal/").unwrap();
        assert_eq!((n.as_str(), rest), ("@team/portal", "/"));
        let (n, rest) = split_name("%40team/portal").unwrap();
        assert_eq!((n.as_str(), rest), ("@team/portal", ""));
        assert_eq!(split_name("app").unwrap().1, "");
        assert!(split_name("../x").is_none());
        assert!(split_name("@team").is_none());
    }

    #[test]
    fn hosts_name_sites_under_the_domain_only() {
        fn ok(h: &str) -> Option<Result<(Environment, HostLabel<'_>), ()>> {
            host_site(h, "localhost")
        }
        assert_eq!(ok("app.test.localhost"), Some(Ok((Environment::Test, HostLabel { site: "app", task: None }))));
        assert_eq!(
            ok("team--admin---42.prod.localhost."),
            Some(Ok((Environment::Prod, HostLabel { site: "team--admin", task: Some(42) })))
        );
        assert_eq!(ok("localhost"), None);
        assert_eq!(ok("127.0.0.1"), None);
        assert_eq!(ok("evil-localhost"), None);
        assert_eq!(ok("app.staging.localhost"), Some(Err(())));
        assert_eq!(ok("test.localhost"), Some(Err(())));
        assert_eq!(
            ok("pr-12--team--admin---42.preview.localhost"),
            Some(Ok((Environment::Preview(12), HostLabel { site: "team--admin", task: Some(42) })))
        );
        assert_eq!(
            ok("pr-3--pr-4--x.preview.localhost"),
            Some(Ok((Environment::Preview(3), HostLabel { site: "pr-4--x", task: None })))
        );
        for bad in ["app.preview.localhost", "pr-0--app.preview.localhost", "pr-01--app.preview.localhost"] {
            assert_eq!(ok(bad), Some(Err(())), "{bad}");
        }
    }

    #[test]
    fn preview_paths_name_their_pull_request() {
        let (env, name, raw, prefix) = site_path("/sites/preview/@team/portal/pr-12/a.js", "sites").unwrap();
        assert_eq!(
            (env, name.as_str(), raw, prefix.as_str()),
            (Environment::Preview(12), "@team/portal", "/a.js", "/sites/preview/@team/portal/pr-12")
        );
        assert_eq!(site_path("/sites/preview/app/pr-3", "sites").unwrap().2, "");
        assert_eq!(site_path("/sites/test/app/x", "sites").unwrap().3, "/sites/test/app");
        for bad in
            ["/sites/preview/app/", "/sites/preview/app/pr-0/", "/sites/preview/pr-1/app/", "/sites/staging/app/"]
        {
            assert!(site_path(bad, "sites").is_none(), "{bad}");
        }
    }
}
