//! HTTP client for the server's REST API and event stream, with errors users can act on.

use crate::i18n::tr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use backon::BackoffBuilder;
use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::ApiErrorBody;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

/// How long the server has to start answering a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// An error answer of the server: its message, stable code and HTTP status.
#[derive(Debug)]
pub(crate) struct ApiFailure {
    pub(crate) message: String,
    pub(crate) code: String,
    pub(crate) status: u16,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

/// A client bound to one server.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
}

/// The caller's IANA time zone: `TZ` when it names one (`Asia/Shanghai`, `:Europe/Berlin`),
/// else the system's.
pub(crate) fn local_zone() -> Option<String> {
    let from_env = std::env::var("TZ").ok().map(|z| z.trim_start_matches(':').to_owned());
    from_env
        .filter(|z| cloudbuild_proto::gate::zone_is_known(z))
        .or_else(|| iana_time_zone::get_timezone().ok().filter(|z| cloudbuild_proto::gate::zone_is_known(z)))
}

impl Client {
    /// The server's root URL (`http://host:port`).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// A client for `server` (`http://host:port`). Connecting gives up after 5 s.
    pub(crate) fn new(server: &str, token: Option<&str>) -> Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!(tr!("bad-server-url", server = server)));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!(tr!("bad-token")))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        // Times the server tells (when a freeze window opens) are then in the caller's zone.
        if let Some(zone) = local_zone().and_then(|z| reqwest::header::HeaderValue::from_str(&z).ok()) {
            headers.insert("time-zone", zone);
        }
        let http = reqwest::Client::builder().connect_timeout(ANSWER_TIMEOUT).default_headers(headers).build()?;
        Ok(Client { http, base })
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        // The whole-request timeout (30 s) of a server that started answering but stalled.
        let why = if e.is_timeout() { tr!("answer-stalled") } else { root_cause(&e) };
        self.unreachable_because(&why)
    }

    fn unreachable_because(&self, why: &str) -> anyhow::Error {
        anyhow!(tr!("unreachable", url = self.base, why = why))
    }

    /// Sends a request; the server must start answering within [`ANSWER_TIMEOUT`] (the body of
    /// an event stream may then take as long as the build).
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        match tokio::time::timeout(ANSWER_TIMEOUT, req.send()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.unreachable_because(&tr!("no-answer-within", seconds = ANSWER_TIMEOUT.as_secs()))),
        }
    }

    /// The answer of a server that does not speak cloudbuild's API (another web server, a
    /// proxy's error page): says so, and where the right URL comes from.
    fn not_cloudbuild(&self, status: reqwest::StatusCode) -> anyhow::Error {
        if status.is_server_error() {
            // A cloudbuild server answers its own failures in JSON: this one came from a proxy
            // in front of it (or a server that crashed mid-answer).
            return anyhow!(tr!("proxy-failed", url = self.base, status = status));
        }
        anyhow!(tr!("not-cloudbuild", url = self.base, status = status))
    }

    async fn decode<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|_| self.not_cloudbuild(status));
        }
        match serde_json::from_slice::<ApiErrorBody>(&bytes) {
            Ok(err) => Err(ApiFailure { message: err.message, code: err.code, status: status.as_u16() }.into()),
            Err(_) => Err(self.not_cloudbuild(status)),
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

    /// PUT JSON and decode the answer.
    pub(crate) async fn put<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T> {
        let req = self.http.put(format!("{}{path}", self.base)).timeout(Duration::from_secs(30)).json(body);
        let resp = self.send(req).await?;
        self.decode(resp).await
    }

    /// PATCH JSON and decode the answer.
    pub(crate) async fn patch<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T> {
        let req = self.http.patch(format!("{}{path}", self.base)).timeout(Duration::from_secs(30)).json(body);
        let resp = self.send(req).await?;
        self.decode(resp).await
    }

    /// DELETE a resource; success carries no body.
    pub(crate) async fn delete(&self, path: &str) -> Result<()> {
        self.no_content(self.http.delete(format!("{}{path}", self.base))).await
    }

    /// POST nothing; success carries no body (`/logout`).
    pub(crate) async fn post_empty(&self, path: &str) -> Result<()> {
        self.no_content(self.http.post(format!("{}{path}", self.base))).await
    }

    async fn no_content(&self, req: reqwest::RequestBuilder) -> Result<()> {
        let resp = self.send(req.timeout(Duration::from_secs(30))).await?;
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
        // Up to 10 tries a second apart; any event received starts the count again.
        let policy = backon::ConstantBuilder::default().with_delay(Duration::from_secs(1)).with_max_times(10);
        let mut delays = policy.build();
        loop {
            let url = format!("{}/api/v1/tasks/{task}/events?after={after}&follow={follow}", self.base);
            let resp = match self.send(self.http.get(&url).header("accept", "text/event-stream")).await {
                Ok(r) if r.status().is_success() && !is_event_stream(&r) => return Err(self.not_cloudbuild(r.status())),
                Ok(r) if r.status().is_success() => r,
                // The server's store is briefly unreachable (Redis restarting): wait for it.
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => match delays.next() {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    None => return self.decode::<serde_json::Value>(r).await.map(|_| ()),
                },
                Ok(r) => return self.decode::<serde_json::Value>(r).await.map(|_| ()),
                Err(e) => match delays.next() {
                    Some(delay) => {
                        tracing::debug!("event stream: {e}; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    None => return Err(e),
                },
            };
            // Server-sent events, parsed by `eventsource-stream`: `id` is the event's number,
            // `event` its kind, `data` its JSON.
            let mut events = resp.bytes_stream().eventsource();
            while let Some(Ok(sse)) = events.next().await {
                let (Ok(seq), Some(kind)) = (sse.id.parse::<u64>(), EventKind::parse(&sse.event)) else { continue };
                let ev = WireEvent { seq, kind, data: sse.data };
                after = ev.seq;
                delays = policy.build();
                on_event(&ev);
                if ev.kind == EventKind::End {
                    return Ok(());
                }
            }
            if !follow {
                return Ok(());
            }
            let Some(delay) = delays.next() else {
                return Err(anyhow!(tr!("lost-stream", id = task)));
            };
            tokio::time::sleep(delay).await;
        }
    }
}

/// Whether an answer is an event stream (what a cloudbuild server sends for `/events`).
fn is_event_stream(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Percent-encodes a query-string value (`percent-encoding`; everything but RFC 3986's
/// unreserved characters).
pub(crate) fn query_encode(s: &str) -> String {
    const VALUE: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(s, VALUE).to_string()
}
