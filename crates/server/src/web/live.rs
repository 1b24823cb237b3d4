//! A build's log for the dashboard: rendered once on the server into escaped, numbered HTML
//! lines (the tail of a finished log; the raw log has all), and live over SSE while the build
//! runs. Each message's id is where its open (unfinished) line began (`log::Resume`), and a
//! message carries that line as it stands: a reconnect (`Last-Event-ID`) renders the line again
//! and the page replaces it by its id, so nothing is repeated, skipped or split.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::task::{Stage, Task, TaskId, TaskState};
use serde::Deserialize;
use serde_json::Value;

use super::log::{LogHtml, Resume};
use super::pages::refused;
use super::session::Viewer;
use crate::api::extract::TaskIdParam;
use crate::domain::follow;
use crate::domain::policy::ProjectAction;
use crate::domain::tasks;
use crate::state::AppState;

/// Events read from the store at a time.
const PAGE: u32 = 1_000;

/// A log rendered for the build page.
#[derive(Debug, Default)]
pub struct Rendered {
    /// The last `keep` lines' HTML.
    pub html: String,
    /// Lines before those, and after them (not rendered into the page).
    pub skipped_lines: u64,
    pub later_lines: u64,
    /// Where the live stream starts: at the open line, which is in `html` as it stands.
    pub resume: Resume,
    /// Each stage's first event: `(stage, µs)`.
    pub stages: Vec<(String, i64)>,
}

/// Adds one event to the log's HTML, leaving out the first `skip` bytes of its output (where
/// a resumed view starts); returns the lines it completed. Notes the first event of each stage
/// in `stages`.
fn render(log: &mut LogHtml, ev: &WireEvent, stages: &mut Vec<(String, i64)>, skip: usize) -> String {
    let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
    let text = data["text"].as_str().unwrap_or_default();
    // A resume point inside a character (a hand-made one) starts at that character.
    let skip = (0..=skip.min(text.len())).rev().find(|at| text.is_char_boundary(*at)).unwrap_or(0);
    log.at_event(ev.seq, skip);
    match ev.kind {
        EventKind::Building => log.push(&text[skip..]),
        EventKind::Build => {
            let action = data["data"]["action"].as_str().unwrap_or_default();
            let message = data["data"]["payload"]["message"].as_str().unwrap_or_default();
            let at = data["meta"]["timestamp"].as_i64().unwrap_or_default() * 1000;
            if Stage::ALL.iter().any(|s| s.action() == action) && !stages.iter().any(|(s, _)| s == action) {
                stages.push((action.to_owned(), at));
            }
            log.stage(&format!("==> {action}: {message}"))
        }
        EventKind::Truncated => log.stage(data["message"].as_str().unwrap_or_default()),
        EventKind::End => {
            let mut out = log.finish();
            let state = data["state"].as_str().unwrap_or_default();
            let reason = data["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
            out.push_str(&log.stage(&format!("==> {state}{reason}")));
            out
        }
    }
}

/// Reads the stored log of `task` and renders `keep` lines of it: from line `from`, or its
/// last ones. A first pass counts the lines (no HTML), the second renders only the window, so
/// a 200,000-line log costs the HTML of `keep` lines. Reads up to event `until` (the first
/// pass's end), so both passes agree. The unfinished last line of a running build is rendered
/// as open (`class="l open"`), for the live stream to replace.
pub async fn render_all(
    state: &AppState,
    task: &Task,
    keep: u64,
    from: Option<u64>,
) -> Result<Rendered, crate::domain::tasks::TaskError> {
    let mut counter = LogHtml::rendering_from(u64::MAX);
    let until = read(state, task.id, u64::MAX, |ev| {
        render(&mut counter, ev, &mut Vec::new(), 0);
    })
    .await?;
    counter.finish();
    let total = counter.next_line - 1;
    let tail_from = (total + 1).saturating_sub(keep).max(1);
    let render_from = from.map_or(tail_from, |f| f.clamp(1, tail_from));
    let mut log = LogHtml::rendering_window(render_from, render_from + keep);
    let (mut html, mut stages) = (String::new(), Vec::new());
    read(state, task.id, until, |ev| html.push_str(&render(&mut log, ev, &mut stages, 0))).await?;
    let resume = log.open_at();
    if task.state.is_terminal() {
        html.push_str(&log.finish());
    } else {
        html.push_str(&log.open_html());
    }
    let later_lines = total.saturating_sub(render_from + keep - 1);
    Ok(Rendered { html, skipped_lines: render_from - 1, later_lines, resume, stages })
}

/// Hands every stored event of `task` up to event `until` to `each`, page by page; returns
/// the last event's number.
async fn read(
    state: &AppState,
    task: TaskId,
    until: u64,
    mut each: impl FnMut(&WireEvent),
) -> Result<u64, crate::domain::tasks::TaskError> {
    let mut after = 0;
    loop {
        let page = follow::stored(state, task, after, PAGE).await?;
        for ev in page.iter().take_while(|e| e.seq <= until) {
            each(ev);
            after = ev.seq;
        }
        if (page.len() as u32) < PAGE || after >= until {
            return Ok(after);
        }
    }
}

#[derive(Deserialize)]
pub struct LiveQuery {
    after: Option<u64>,
    skip: Option<usize>,
    line: Option<u64>,
    style: Option<u8>,
}

/// How long a live log stays silent before a comment keeps proxies from closing it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /tasks/{id}/live?after=SEQ&skip=K&line=N&style=S`: the log's HTML lines from event
/// `SEQ + 1` (less its first `K` bytes of output), numbered from `N`, starting in colours `S`, as SSE `log` messages until the
/// build ends; then one `end` message, `{"state": "succeeded", "text": <in the page's
/// language>}`. Each message ends with the open line as it stands; its id is where that line
/// began (`SEQ.K.N.S`). `Last-Event-ID` wins over the query, for the browser's own reconnects.
/// A comment is sent after [`KEEP_ALIVE`] of silence.
pub async fn live(
    State(state): State<Arc<AppState>>,
    lang: super::i18n::Lang,
    viewer: Viewer,
    TaskIdParam(id): TaskIdParam,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
) -> Response {
    let task = match tasks::get(&state, &viewer.caller, id, ProjectAction::Read).await {
        Ok(t) => t,
        Err(e) => return refused(e),
    };
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let asked = Resume {
        after: q.after.unwrap_or(0),
        skip: q.skip.unwrap_or(0),
        line: q.line.unwrap_or(1),
        style: q.style.unwrap_or(0),
    };
    let at = resume.unwrap_or(asked);
    let follower = follow::follow(&state, &viewer.caller, &task.name, id, at.after, !task.state.is_terminal());
    let log = LogHtml::resuming(at);
    let store = state.clone();
    let end_frame = move |state: TaskState| {
        let text = lang.t(&format!("state-{}", state.as_str()));
        format!("event: end\ndata: {}\n\n", serde_json::json!({"state": state.as_str(), "text": text}))
    };
    let stream =
        futures_util::stream::unfold((follower, log, at.skip, false), move |(mut f, mut log, mut skip, done)| {
            let (store, end_frame) = (store.clone(), end_frame.clone());
            async move {
                if done {
                    return None;
                }
                let Ok(next) = tokio::time::timeout(KEEP_ALIVE, f.next(256)).await else {
                    return Some((Ok(": keep-alive\n\n".to_owned()), (f, log, skip, false)));
                };
                let Some(events) = next else {
                    // Nothing more to send without an `end` (the page asked after the log's end, or the
                    // viewer's access ended): say how the task stands, so the page stops reconnecting.
                    let state = store.store.get_task(id).await.map(|t| t.state).ok()?;
                    let frame = if state.is_terminal() { end_frame(state) } else { String::new() };
                    return Some((Ok(frame), (f, log, 0, true)));
                };
                let mut frames = String::new();
                let mut stages = Vec::new();
                let mut ended = None;
                let mut html = String::new();
                for ev in &events {
                    html.push_str(&render(&mut log, &ev.event, &mut stages, std::mem::take(&mut skip)));
                    if ev.event.kind == EventKind::End {
                        let data: Value = serde_json::from_str(&ev.event.data).unwrap_or(Value::Null);
                        ended = data["state"].as_str().and_then(TaskState::parse);
                    }
                }
                html.push_str(&log.open_html());
                if !html.is_empty() {
                    frames.push_str(&format!("id: {}\nevent: log\n", log.open_at()));
                    for l in html.lines() {
                        frames.push_str("data: ");
                        frames.push_str(l);
                        frames.push('\n');
                    }
                    frames.push('\n');
                }
                if let Some(state) = ended {
                    frames.push_str(&end_frame(state));
                }
                Some((Ok::<_, std::convert::Infallible>(frames), (f, log, 0, ended.is_some())))
            }
        });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// `GET /tasks/{id}/raw`: the build's output as plain text (a download), streamed page by page
/// of events as it is read, so a 20 MB log is never held whole. A store failure halfway ends
/// the download early (the body is cut; the error is logged).
pub async fn raw(State(state): State<Arc<AppState>>, viewer: Viewer, TaskIdParam(id): TaskIdParam) -> Response {
    if let Err(e) = tasks::get(&state, &viewer.caller, id, ProjectAction::Read).await {
        return refused(e);
    }
    let pages = futures_util::stream::unfold(Some(0), move |after| {
        let state = state.clone();
        async move {
            let page = match follow::stored(&state, id, after?, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(task = id, "reading the raw log: {e}");
                    return Some((Err(std::io::Error::other("the log could not be read")), None));
                }
            };
            let next = (page.len() as u32 == PAGE).then(|| page.last().map_or(0, |e| e.seq));
            let mut text = String::new();
            for ev in page.iter().filter(|e| e.kind == EventKind::Building) {
                let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                text.push_str(data["text"].as_str().unwrap_or_default());
            }
            Some((Ok(text), next))
        }
    });
    let disposition = format!("attachment; filename=\"task-{id}.log\"");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        Body::from_stream(pages),
    )
        .into_response()
}

/// The most matching lines a search of a log shows.
pub const MAX_MATCHES: usize = 500;

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    lang: super::i18n::Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    id: TaskId,
    title: String,
    q: String,
    /// `(line, text, the page it is on)`.
    hits: Vec<(u64, String, u64)>,
    capped: bool,
}

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

/// `GET /tasks/{id}/search?q=`: the lines of the whole log that contain `q` (ignoring case),
/// searched on the server (the page holds only a window of a long log), each linking to its
/// line in the page of lines around it; at most [`MAX_MATCHES`].
pub async fn search(
    State(state): State<Arc<AppState>>,
    lang: super::i18n::Lang,
    viewer: Viewer,
    TaskIdParam(id): TaskIdParam,
    Query(query): Query<SearchQuery>,
) -> Response {
    if let Err(e) = tasks::get(&state, &viewer.caller, id, ProjectAction::Read).await {
        return refused(e);
    }
    let q = query.q.unwrap_or_default().trim().to_owned();
    let needle = q.to_lowercase();
    let (mut hits, mut capped, mut log) = (Vec::new(), false, LogHtml::plain());
    let mut take = |lines: String, hits: &mut Vec<(u64, String, u64)>| {
        for (n, text) in lines.lines().filter_map(|l| l.split_once('\t')) {
            if hits.len() == MAX_MATCHES {
                capped = true;
                return;
            }
            if text.to_lowercase().contains(&needle) {
                let n: u64 = n.parse().unwrap_or_default();
                hits.push((n, text.to_owned(), n.saturating_sub(super::pages::PAGE_LINES / 2).max(1)));
            }
        }
    };
    if !needle.is_empty() {
        let read = read(&state, id, u64::MAX, |ev| take(render(&mut log, ev, &mut Vec::new(), 0), &mut hits)).await;
        if let Err(e) = read {
            return refused(e);
        }
        take(log.finish(), &mut hits);
    }
    let title = lang.t1("build-title", "id", id);
    let super::Chrome { lang, who, signed_in, csrf, admin } = super::Chrome::of(lang, Some(&viewer));
    super::html(SearchPage { lang, who, signed_in, csrf, admin, id, title, q, hits, capped }.render())
}
