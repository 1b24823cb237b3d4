//! Answers one request for a site from a release index: path decoding and normalisation (as
//! nginx does), redirect rules, files, `index.html` in folders, the trailing-slash redirect
//! (inside the site), clean URLs, the single-page-app fallback, `404.html`, and the headers
//! (ETag from the content hash, Cache-Control by evidence, `[[site.headers]]`, `nosniff`).
//!
//! Whole small files come from the in-memory [`BodyCache`] (by content hash); everything else
//! (ranges, large files, precompressed `.br` / `.gz` siblings, `If-Unmodified-Since`) is sent
//! by tower-http's `ServeFile`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudbuild_proto::site::CacheClass;
use percent_encoding::percent_decode_str;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::index::{BodyCache, CachedBody, IndexedFile, ReleaseIndex, CACHED_FILE_BYTES};
use crate::targets::urls::encode_path;

/// What a request is answered from.
#[derive(Debug, Clone)]
pub struct Site {
    pub release: Arc<ReleaseIndex>,
    /// The release before the current one: a page loaded just before a switch can still fetch
    /// its assets (never used for HTML).
    pub previous: Option<Arc<ReleaseIndex>>,
    /// The public path before the site's own paths: `""` by host, `/sites/test/app` by path.
    pub prefix: String,
    /// An immutable release URL: nothing under it ever changes.
    pub immutable: bool,
    /// Small files' bytes, shared by every site.
    pub bodies: Arc<BodyCache>,
}

/// Marks a response whose ETag was chosen for the representation sent (identity, a
/// precompressed sibling, or weak for compression on the fly), so `weaken_etag` leaves it.
#[derive(Debug, Clone, Copy)]
pub struct EncodedEtag;

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut resp = (status, text).into_response();
    resp.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// A request path decoded and normalised: its segments, and whether it names a folder.
#[derive(Debug, PartialEq, Eq)]
pub struct SitePath {
    pub segments: Vec<String>,
    pub folder: bool,
}

impl SitePath {
    /// Percent-decodes `raw` (the path after the site's prefix), then resolves `.` and `..`
    /// and empty segments as nginx does. `None` for a path that is not UTF-8, holds NUL, or
    /// climbs above the site's root (nginx answers those 400).
    pub fn parse(raw: &str) -> Option<SitePath> {
        // Every `%` starts an escape of two hex digits (nginx answers 400 otherwise).
        let bytes = raw.as_bytes();
        let escapes_ok = bytes.iter().enumerate().filter(|(_, b)| **b == b'%').all(|(i, _)| {
            bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        });
        if !escapes_ok {
            return None;
        }
        let decoded = percent_decode_str(raw).decode_utf8().ok()?;
        if decoded.contains('\0') {
            return None;
        }
        let mut segments: Vec<String> = Vec::new();
        let mut folder = true;
        for seg in decoded.split('/') {
            match seg {
                "" => {}
                "." => folder = true,
                ".." => {
                    segments.pop()?;
                    folder = true;
                }
                s => {
                    segments.push(s.to_owned());
                    folder = false;
                }
            }
        }
        if decoded.ends_with('/') {
            folder = true;
        }
        Some(SitePath { segments, folder })
    }

    /// The key of the file in the release (`dir/a b.txt`).
    pub fn key(&self) -> String {
        self.segments.join("/")
    }

    /// The decoded path as rules see it: `/dir/a b.txt`, `/dir/`.
    pub fn rule_path(&self) -> String {
        let mut p = format!("/{}", self.key());
        if self.folder && !self.segments.is_empty() {
            p.push('/');
        }
        p
    }

    fn has_extension(&self) -> bool {
        self.segments.last().is_some_and(|s| s.contains('.'))
    }
}

/// Answers `req` for `site`; `raw_path` is the request path after the site's prefix, still
/// percent-encoded (`/`, `/assets/a%20b.js`).
pub async fn respond(site: &Site, raw_path: &str, req: &Parts) -> Response {
    if req.method != Method::GET && req.method != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "a site answers GET and HEAD only\n");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let Some(path) = SitePath::parse(raw_path) else {
        return plain(StatusCode::BAD_REQUEST, "bad path\n");
    };
    let index = &site.release;
    let query = req.uri.query().map(|q| format!("?{q}")).unwrap_or_default();

    if let Some((status, to)) = index.rules.redirect_for(&path.rule_path()) {
        let mut location = if to.starts_with('/') { format!("{}{to}", site.prefix) } else { to };
        if !location.contains('?') {
            location.push_str(&query);
        }
        return redirect(status, &location);
    }

    let key = path.key();
    let asked = path.rule_path();
    let dir_index = if key.is_empty() { "index.html".to_owned() } else { format!("{key}/index.html") };
    if path.folder {
        if let Some(f) = index.get(&dir_index) {
            return serve(site, index, &dir_index, f, &asked, req, None).await;
        }
    } else {
        if let Some(f) = index.get(&key) {
            return serve(site, index, &key, f, &asked, req, None).await;
        }
        if index.get(&dir_index).is_some() {
            // A folder without its slash: the same path with one, inside the site. Built from
            // the normalised path, never the raw one (`//evil.example/%2e%2e/docs` must not
            // become a redirect to another host).
            return redirect(301, &format!("{}/{}/{query}", site.prefix, encode_path(&key)));
        }
        if index.config.clean_urls {
            let html = format!("{key}.html");
            if let Some(f) = index.get(&html) {
                return serve(site, index, &html, f, &asked, req, None).await;
            }
        }
    }

    // Not in this release. Only fingerprinted assets come from the previous release (a page
    // loaded before the switch asks for them); anything else the current release dropped,
    // or a rollback meant to remove, stays gone.
    if let Some(prev) = &site.previous {
        if let Some(f) = prev.get(&key).filter(|f| f.cache == CacheClass::Fingerprinted) {
            return serve(site, prev, &key, f, &asked, req, None).await;
        }
    }
    if index.config.spa && !path.has_extension() && accepts_html(&req.headers) {
        if let Some(f) = index.get("index.html") {
            return serve(site, index, "index.html", f, &asked, req, Some(StatusCode::OK)).await;
        }
    }
    if let Some(f) = index.get("404.html") {
        return serve(site, index, "404.html", f, &asked, req, Some(StatusCode::NOT_FOUND)).await;
    }
    plain(StatusCode::NOT_FOUND, "not found\n")
}

fn redirect(status: u16, location: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut resp = plain(status, "");
            resp.headers_mut().insert(header::LOCATION, value);
            resp
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "bad redirect target\n"),
    }
}

fn accepts_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

/// Whether `If-None-Match` names `etag` (weak comparison, as RFC 9110 asks for this header).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    let Some(value) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else { return false };
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    value.trim() == "*" || value.split(',').any(|t| opaque(t) == opaque(etag))
}

/// The content codings a request accepts among those a site may send (`br`, `gzip`).
fn accepted(headers: &HeaderMap) -> (bool, bool) {
    let Some(value) = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()) else { return (false, false) };
    let takes = |coding: &str| {
        value.split(',').any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused =
                parts.any(|p| matches!(p.trim().replace(' ', "").as_str(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name.eq_ignore_ascii_case(coding) || name == "*") && !refused
        })
    };
    (takes("br"), takes("gzip"))
}

/// Sends one file. `fallback` is the status of an answer made from another file (the SPA's
/// `index.html`, `404.html`): conditional and range headers do not apply to those. `asked` is
/// the requested path, which `[[site.headers]]` rules match.
async fn serve(
    site: &Site,
    index: &ReleaseIndex,
    key: &str,
    f: &IndexedFile,
    asked: &str,
    req: &Parts,
    fallback: Option<StatusCode>,
) -> Response {
    let cache = if fallback.is_some() {
        CacheClass::Document.cache_control()
    } else if site.immutable {
        CacheClass::Fingerprinted.cache_control()
    } else {
        f.cache.cache_control()
    };
    // The representation this request gets: a precompressed sibling, the file compressed on
    // the fly (a weak ETag, as nginx gives), or the file as is. 304s and HEADs carry the same
    // ETag as the GET would (RFC 9110 §15.4.5).
    let br = if f.has_br { index.get(&format!("{key}.br")) } else { None };
    let gz = if f.has_gz { index.get(&format!("{key}.gz")) } else { None };
    let (takes_br, takes_gzip) = accepted(&req.headers);
    let sibling = if takes_br && br.is_some() {
        br
    } else if takes_gzip {
        gz
    } else {
        None
    };
    // A range is of the identity bytes (the compression layer leaves ranges alone).
    let ranged = req.headers.contains_key(header::RANGE) && fallback.is_none();
    let on_the_fly = sibling.is_none() && !ranged && f.compressible && f.size > 256 && (takes_br || takes_gzip);
    let etag = match sibling {
        Some(s) => s.etag.clone(),
        None if on_the_fly => format!("W/{}", f.etag),
        None => f.etag.clone(),
    };
    let vary = f.compressible || f.has_br || f.has_gz;
    if fallback.is_none() && none_match(&req.headers, &etag) {
        let mut resp = plain(StatusCode::NOT_MODIFIED, "");
        *resp.body_mut() = Body::empty();
        resp.headers_mut().remove(header::CONTENT_TYPE);
        finish(&mut resp, index, asked, &etag, cache, vary);
        return resp;
    }

    // A range applies only to the representation the client has: `If-Range` must name it by
    // its strong ETag, else the whole file goes (RFC 9110 §13.1.5). Several ranges are
    // answered with the whole file too (allowed; tower-http would refuse them).
    let range = req.headers.get(header::RANGE).filter(|r| {
        let single = r.to_str().is_ok_and(|r| !r.contains(','));
        let if_range = req.headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok());
        single && if_range.is_none_or(|tag| tag.trim() == etag && !etag.starts_with("W/"))
    });
    let range = if fallback.is_some() { None } else { range };
    let unmodified = req.headers.contains_key(header::IF_UNMODIFIED_SINCE);
    if f.size <= CACHED_FILE_BYTES && range.is_none() && !unmodified && sibling.is_none() {
        if let Some(body) = cached_body(site, index, key, f).await {
            let mut resp = from_memory(&body, req, fallback);
            if on_the_fly && req.method == Method::HEAD {
                // The GET's body would be compressed, to a length not known without doing so.
                resp.headers_mut().remove(header::CONTENT_LENGTH);
            }
            resp.headers_mut().insert(header::CONTENT_TYPE, f.content_type.clone());
            finish(&mut resp, index, asked, &etag, cache, vary);
            return resp;
        }
    }

    let mut inner = Request::builder().method(req.method.clone()).uri("/");
    if let Some(range) = range {
        inner = inner.header(header::RANGE, range);
    }
    for name in [header::ACCEPT_ENCODING, header::IF_MODIFIED_SINCE, header::IF_UNMODIFIED_SINCE] {
        let conditional = name != header::ACCEPT_ENCODING;
        // If-None-Match, when sent, decides alone (RFC 9110 §13.2.2).
        if conditional
            && (fallback.is_some()
                || (name == header::IF_MODIFIED_SINCE && req.headers.contains_key(header::IF_NONE_MATCH)))
        {
            continue;
        }
        if let Some(v) = req.headers.get(&name) {
            inner = inner.header(name, v);
        }
    }
    let Ok(inner) = inner.body(Body::empty()) else { return plain(StatusCode::BAD_REQUEST, "bad request\n") };
    let mime = f
        .content_type
        .to_str()
        .ok()
        .and_then(|t| t.parse::<mime_guess::mime::Mime>().ok())
        .unwrap_or(mime_guess::mime::APPLICATION_OCTET_STREAM);
    let mut file = ServeFile::new_with_mime(index.dir.join(key), &mime);
    if br.is_some() && takes_br {
        file = file.precompressed_br();
    }
    if gz.is_some() && takes_gzip {
        file = file.precompressed_gzip();
    }
    let mut resp = match file.oneshot(inner).await {
        Ok(r) => r.map(Body::new),
        Err(e) => {
            tracing::warn!(file = key, "serving a site file failed: {e}");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "the file could not be read\n");
        }
    };
    if resp.status() == StatusCode::NOT_FOUND {
        // Listed but missing on disk: the release directory was damaged or pruned under us.
        tracing::warn!(file = key, dir = %index.dir.display(), "a listed file is missing");
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    // A precompressed sibling is its own representation, with its own content hash.
    let etag = match resp.headers().get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        Some("br") => br.map(|s| s.etag.clone()).unwrap_or(etag),
        Some("gzip") => gz.map(|s| s.etag.clone()).unwrap_or(etag),
        _ => etag,
    };
    if resp.headers().contains_key(header::CONTENT_ENCODING) {
        resp.extensions_mut().insert(EncodedEtag);
    }
    if let Some(status) = fallback {
        *resp.status_mut() = status;
    }
    resp.headers_mut().insert(header::CONTENT_TYPE, f.content_type.clone());
    finish(&mut resp, index, asked, &etag, cache, vary);
    resp
}

/// The bytes of a small file: from the cache, else read (off the async threads) and kept.
async fn cached_body(site: &Site, index: &ReleaseIndex, key: &str, f: &IndexedFile) -> Option<Arc<CachedBody>> {
    if let Some(body) = site.bodies.get(&f.hash) {
        return Some(body);
    }
    let path = index.dir.join(key);
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<CachedBody> {
        let bytes = std::fs::read(&path)?;
        let modified = std::fs::metadata(&path)?.modified()?;
        Ok(CachedBody { bytes: bytes.into(), modified })
    });
    match read.await {
        // Cached by hash for every site: only bytes that are what the record says they are.
        Ok(Ok(body)) if blake3::hash(&body.bytes).to_hex().as_str() == f.hash => {
            let body = Arc::new(body);
            site.bodies.put(&f.hash, body.clone());
            Some(body)
        }
        Ok(Ok(_)) => {
            tracing::warn!(file = key, dir = %index.dir.display(), "a published file does not match its recorded hash");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(file = key, dir = %index.dir.display(), "reading a published file failed: {e}");
            None
        }
        Err(e) => {
            tracing::warn!(file = key, "reading a published file failed: {e}");
            None
        }
    }
}

/// A whole-file answer from memory, with what `ServeFile` would send: `Last-Modified`,
/// `Accept-Ranges`, `If-Modified-Since` (unless `If-None-Match` was sent, RFC 9110 §13.2.2),
/// no body for `HEAD`.
fn from_memory(body: &CachedBody, req: &Parts, fallback: Option<StatusCode>) -> Response {
    let modified = httpdate::fmt_http_date(body.modified);
    if fallback.is_none() && !req.headers.contains_key(header::IF_NONE_MATCH) {
        let since = req.headers.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok());
        if let Some(since) = since.and_then(|s| httpdate::parse_http_date(s).ok()) {
            // HTTP dates have whole seconds.
            let secs =
                |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            if secs(body.modified) <= secs(since) {
                let mut resp = plain(StatusCode::NOT_MODIFIED, "");
                resp.headers_mut().remove(header::CONTENT_TYPE);
                resp.headers_mut().remove(header::CONTENT_LENGTH);
                if let Ok(v) = HeaderValue::from_str(&modified) {
                    resp.headers_mut().insert(header::LAST_MODIFIED, v);
                }
                return resp;
            }
        }
    }
    let len = body.bytes.len();
    let mut resp = if req.method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(body.bytes.clone()))
    };
    *resp.status_mut() = fallback.unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    resp
}

/// Headers every file answer carries, then the site's own rules for the requested path (which
/// may override them).
fn finish(resp: &mut Response, index: &ReleaseIndex, asked: &str, etag: &str, cache: &'static str, vary: bool) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if vary {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    for (name, value) in index.rules.headers_for(asked) {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            h.insert(n, v);
        }
    }
}

/// Types worth compressing (text); media and archives are compressed already.
pub fn compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type.starts_with("application/json")
        || content_type.starts_with("application/manifest+json")
        || content_type.starts_with("application/xml")
        || content_type.starts_with("image/svg+xml")
        || content_type.starts_with("application/wasm")
}

#[cfg(test)]
mod tests {
    use super::SitePath;

    fn p(raw: &str) -> Option<(String, bool)> {
        SitePath::parse(raw).map(|p| (p.key(), p.folder))
    }

    #[test]
    fn paths_are_decoded_and_normalised_like_nginx() {
        assert_eq!(p("/"), Some((String::new(), true)));
        assert_eq!(p(""), Some((String::new(), true)));
        assert_eq!(p("/a%20b%23c%3F%25.txt"), Some(("a b#c?%.txt".into(), false)));
        assert_eq!(p("/%E4%B8%AD%E6%96%87/"), Some(("中文".into(), true)));
        assert_eq!(p("//a/./b/../c"), Some(("a/c".into(), false)));
        assert_eq!(p("/a/.."), Some((String::new(), true)));
        assert_eq!(p("/docs"), Some(("docs".into(), false)));
        assert_eq!(p("/.."), None);
        assert_eq!(p("/a/%2e%2e/%2e%2e/x"), None);
        assert_eq!(p("/%ff"), None);
        assert_eq!(p("/a%00b"), None);
        assert_eq!(p("/100%.txt"), None, "a bare % is not an escape");
        assert_eq!(p("/%zz"), None);
        assert_eq!(p("/a%2"), None);
    }
}
