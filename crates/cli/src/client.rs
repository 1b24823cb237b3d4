//! HTTP client for the server's REST API and event stream, with errors users can act on.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::ApiErrorBody;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

/// How long the server has to start answering a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A client bound to one server.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client for `server` (`http://host:port`). Connecting gives up after 5 s.
    pub(crate) fn new(server: &str, token: Option<&str>) -> Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!("--server must be an http:// or https:// URL, not `{server}`"));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("the API token contains characters that cannot be sent in a header"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder().connect_timeout(ANSWER_TIMEOUT).default_headers(headers).build()?;
        Ok(Client { http, base })
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        // The whole-request timeout (30 s) of a server that started answering but stalled.
        let why = if e.is_timeout() { "the answer stalled".to_string() } else { root_cause(&e) };
        self.unreachable_because(&why)
    }

    fn unreachable_because(&self, why: &str) -> anyhow::Error {
        anyhow!(
            "cannot reach the cloudbuild server at {} ({why}); is `cloudbuild server` running there? \
             (set --server or CLOUDBUILD_SERVER)",
            self.base
        )
    }

    /// Sends a request; the server must start answering within [`ANSWER_TIMEOUT`] (the body of
    /// an event stream may then take as long as the build).
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        match tokio::time::timeout(ANSWER_TIMEOUT, req.send()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.unreachable_because(&format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()))),
        }
    }

    async fn decode<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {}", self.base));
        }
        match serde_json::from_slice::<ApiErrorBody>(&bytes) {
            Ok(err) => Err(anyhow!("{} ({}, HTTP {})", err.message, err.code, status.as_u16())),
            Err(_) => Err(anyhow!("the server answered HTTP {status}: {}", String::from_utf8_lossy(&bytes))),
        }
    }

    /// GET a JSON resource.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let req = self.http.get(format!("{}{path}", self.base)).timeout(Duration::from_secs(30));
        let resp = self.send(req).await?;
        self.decode(resp).await
    }

    /// POST JSON (or nothing) and decode the answer.
    pub(crate) async fn post<T: DeserializeOwned>(&self, path: &str, body: Option<&serde_json::Value>) -> Result<T> {
        let mut req = self.http.post(format!("{}{path}", self.base)).timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = self.send(req).await?;
        self.decode(resp).await
    }

    /// DELETE a resource; success carries no body.
    pub(crate) async fn delete(&self, path: &str) -> Result<()> {
        let req = self.http.delete(format!("{}{path}", self.base)).timeout(Duration::from_secs(30));
        let resp = self.send(req).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        self.decode::<serde_json::Value>(resp).await.map(|_| ())
    }

    /// Streams a task's events from `after` to `on_event` until its `end` event (or, without
    /// `follow`, until the current end of the log). A dropped stream is resumed from the last
    /// event received, so nothing is shown twice or skipped.
    pub(crate) async fn follow(
        &self,
        task: i64,
        mut after: u64,
        follow: bool,
        on_event: &mut dyn FnMut(&WireEvent),
    ) -> Result<()> {
        let mut failures = 0u32;
        loop {
            let url = format!("{}/api/v1/tasks/{task}/events?after={after}&follow={follow}", self.base);
            let resp = match self.send(self.http.get(&url).header("accept", "text/event-stream")).await {
                Ok(r) if r.status().is_success() => r,
                // The server's store is briefly unreachable (Redis restarting): wait for it.
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && failures < 10 => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Ok(r) => return self.decode::<serde_json::Value>(r).await.map(|_| ()),
                Err(e) if failures < 10 => {
                    failures += 1;
                    tracing::debug!("event stream: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut parser = SseParser::default();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                for ev in parser.push(&chunk) {
                    after = ev.seq;
                    failures = 0;
                    on_event(&ev);
                    if ev.kind == EventKind::End {
                        return Ok(());
                    }
                }
            }
            if !follow {
                return Ok(());
            }
            failures += 1;
            if failures > 10 {
                return Err(anyhow!(
                    "lost the event stream of task {task}; follow it again with `cloudbuild logs {task} --follow`"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Percent-encodes a query-string value.
pub(crate) fn query_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Incremental parser of the server's SSE frames (`id`, `event`, `data` lines).
#[derive(Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the complete events.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<WireEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&frame);
            let (mut seq, mut kind, mut data) = (None, None, String::new());
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    seq = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = EventKind::parse(v);
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if let (Some(seq), Some(kind)) = (seq, kind) {
                out.push(WireEvent { seq, kind, data });
            }
        }
        out
    }
}
