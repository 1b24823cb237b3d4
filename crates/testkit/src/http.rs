//! Tiny blocking HTTP helpers for tests (they are called from sync code). Every client
//! resolves `*.localhost` to loopback, as browsers and curl do, so site URLs
//! (`http://app.test.localhost:PORT/`) work in tests whatever the machine's resolver says.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Result;

/// Resolves `localhost` and `*.localhost` to 127.0.0.1 (RFC 6761), other names as usual.
#[derive(Debug)]
struct LocalhostResolver;

impl ::reqwest::dns::Resolve for LocalhostResolver {
    fn resolve(&self, name: ::reqwest::dns::Name) -> ::reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = if host == "localhost" || host.ends_with(".localhost") {
                vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))]
            } else {
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect()
            };
            Ok(Box::new(addrs.into_iter()) as ::reqwest::dns::Addrs)
        })
    }
}

/// A reqwest client for tests: `*.localhost` on loopback, no proxy, redirects followed.
pub fn client() -> ::reqwest::Client {
    ::reqwest::Client::builder().dns_resolver(Arc::new(LocalhostResolver)).no_proxy().build().expect("http client")
}

/// Like [`client`], but redirects are answers to look at, not to follow.
pub fn raw_client() -> ::reqwest::Client {
    ::reqwest::Client::builder()
        .dns_resolver(Arc::new(LocalhostResolver))
        .redirect(::reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("http client")
}

/// Tiny blocking HTTP helpers over reqwest's async client (tests call them from sync code).
pub(crate) mod reqwest {
    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    pub(crate) fn blocking_get_text(url: &str) -> anyhow::Result<String> {
        runtime().block_on(async { Ok(super::client().get(url).send().await?.text().await?) })
    }
}

/// GET a URL and parse JSON (sending `Accept: application/json`).
pub fn get_json(url: &str) -> Result<serde_json::Value> {
    reqwest::runtime().block_on(async {
        let resp = client().get(url).header("accept", "application/json").send().await?;
        Ok(resp.json().await?)
    })
}

/// Any request with an optional JSON body; returns status and parsed body (Null if not JSON).
pub fn request(method: &str, url: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
    request_as(method, url, None, body)
}

/// [`request`] with `Authorization: Bearer <token>` when a token is given.
pub fn request_as(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    reqwest::runtime().block_on(async {
        let client = client();
        let mut req = client.request(method.parse().expect("method"), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    })
}

/// POST `body` as JSON with extra headers (a forge's webhook delivery); returns status and
/// parsed body (Null if not JSON).
pub fn post_with_headers(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, serde_json::Value) {
    reqwest::runtime().block_on(async {
        let mut req = client().post(url).header("content-type", "application/json").body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("post");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    })
}

/// GET a URL; returns status, the value of one header, and the body text.
pub fn get_with_header(url: &str, header: &str) -> (u16, Option<String>, String) {
    reqwest::runtime().block_on(async {
        let resp = client().get(url).send().await.expect("get");
        let value = resp.headers().get(header).and_then(|v| v.to_str().ok()).map(str::to_owned);
        (resp.status().as_u16(), value, resp.text().await.unwrap_or_default())
    })
}

/// GET a URL; returns status and body text.
pub fn get_text(url: &str) -> (u16, String) {
    reqwest::runtime().block_on(async {
        let resp = client().get(url).send().await.expect("get");
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    })
}
