//! Tiny blocking HTTP helpers for tests (they are called from sync code).

use anyhow::Result;

/// Tiny blocking HTTP helpers over reqwest's async client (tests call them from sync code).
pub(crate) mod reqwest {
    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    pub(crate) fn blocking_get_text(url: &str) -> anyhow::Result<String> {
        runtime().block_on(async { Ok(::reqwest::get(url).await?.text().await?) })
    }
}

/// GET a URL and parse JSON (sending `Accept: application/json`).
pub fn get_json(url: &str) -> Result<serde_json::Value> {
    reqwest::runtime().block_on(async {
        let resp = ::reqwest::Client::new().get(url).header("accept", "application/json").send().await?;
        Ok(resp.json().await?)
    })
}

/// Any request with an optional JSON body; returns status and parsed body (Null if not JSON).
pub fn request(method: &str, url: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
    reqwest::runtime().block_on(async {
        let client = ::reqwest::Client::new();
        let mut req = client.request(method.parse().expect("method"), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    })
}

/// GET a URL; returns status, the value of one header, and the body text.
pub fn get_with_header(url: &str, header: &str) -> (u16, Option<String>, String) {
    reqwest::runtime().block_on(async {
        let resp = ::reqwest::get(url).await.expect("get");
        let value = resp.headers().get(header).and_then(|v| v.to_str().ok()).map(str::to_owned);
        (resp.status().as_u16(), value, resp.text().await.unwrap_or_default())
    })
}

/// GET a URL; returns status and body text.
pub fn get_text(url: &str) -> (u16, String) {
    reqwest::runtime().block_on(async {
        let resp = ::reqwest::get(url).await.expect("get");
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    })
}
