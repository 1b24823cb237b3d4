//! Published sites on local targets: addressed by host (`<site>.<env>.<domain>`) or by path
//! (`/sites/<env>/<name>/`), answered from a release's index as correctly as nginx serves a
//! folder, with compression.
//!
//! - [`serve`]: which release a request is for (host or path), and the links that find it.
//! - [`respond`]: the answer from a release index (paths, redirects, files, fallbacks, headers).
//! - [`index`]: the per-release record (files, `[site]` rules) and its cache.

pub mod index;
pub mod respond;
pub mod serve;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::Response;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::compression::predicate::{Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;

use respond::{respond, EncodedEtag, Site};

/// What the server keeps for serving sites.
#[derive(Debug, Default)]
pub struct Sites {
    /// The sites domain (`sites.example.com`, `localhost`): sites answer at
    /// `<site>.<env>.<domain>`. `None`: by path only.
    pub domain: Option<String>,
    /// The host of `public_url`, lower-cased: where the server's own routes answer.
    pub own_host: Option<String>,
    /// Custom domains of `prod` sites: host → project.
    pub custom_domains: std::collections::HashMap<String, cloudbuild_proto::validate::ProjectName>,
    pub indexes: index::IndexCache,
    /// Small files' bytes by content hash.
    pub bodies: Arc<index::BodyCache>,
    /// Site labels seen, with their project (one entry per project at most).
    pub labels: std::sync::Mutex<
        std::collections::HashMap<
            (cloudbuild_proto::task::Environment, String),
            cloudbuild_proto::validate::ProjectName,
        >,
    >,
}

impl Sites {
    /// Forgets the labels seen in `env` (a preview removed: its labels name nothing now).
    pub fn forget_labels(&self, env: cloudbuild_proto::task::Environment) {
        self.labels.lock().unwrap_or_else(|p| p.into_inner()).retain(|(e, _), _| *e != env);
    }
}

/// Answers a request by host: the whole path is the site's.
async fn compressed(site: Site, req: Request) -> Response {
    let raw = req.uri().path().to_owned();
    compressed_at(site, raw, req).await
}

/// Answers `req` for `site` (`raw`: the still-encoded path inside the site), compressing text
/// on the fly for clients that accept it, unless a precompressed sibling was sent.
async fn compressed_at(site: Site, raw: String, req: Request) -> Response {
    let site = Arc::new(site);
    // Without Accept-Encoding there is nothing to compress: skip the layer's set-up.
    if !req.headers().contains_key(header::ACCEPT_ENCODING) {
        let (parts, _) = req.into_parts();
        return respond(&site, &raw, &parts).await;
    }
    let inner = tower::service_fn(move |req: Request| {
        let (site, raw) = (site.clone(), raw.clone());
        let (parts, _) = req.into_parts();
        async move { Ok::<_, Infallible>(respond(&site, &raw, &parts).await) }
    });
    // Text only (media and archives are compressed already), and not tiny answers: the same
    // rule `respond` uses to choose the ETag.
    let text = |_: StatusCode, _: Version, headers: &HeaderMap, _: &Extensions| {
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(respond::compressible)
    };
    let worth = SizeAbove::new(256).and(text);
    let svc = ServiceBuilder::new().layer(CompressionLayer::new().compress_when(worth)).service(inner);
    let resp = match svc.oneshot(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(never) => match never {},
    };
    weaken_etag(resp)
}

/// An answer compressed on the fly is another representation of the file: its ETag becomes
/// weak (as nginx does), so that no cache takes it for the identity bytes.
fn weaken_etag(mut resp: Response) -> Response {
    let encoded_here =
        resp.headers().contains_key(header::CONTENT_ENCODING) && resp.extensions().get::<EncodedEtag>().is_none();
    if encoded_here {
        if let Some(tag) = resp.headers().get(header::ETAG).and_then(|v| v.to_str().ok()) {
            if !tag.starts_with("W/") {
                if let Ok(weak) = HeaderValue::from_str(&format!("W/{tag}")) {
                    resp.headers_mut().insert(header::ETAG, weak);
                }
            }
        }
    }
    resp
}
