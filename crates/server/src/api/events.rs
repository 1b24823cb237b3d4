//! `GET /api/v1/tasks/{id}/events?after=N`: the task's event log as SSE, WebSocket or JSON
//! (see `domain::follow`). The stream ends after the `end` event. No keep-alive comments are
//! interleaved, since they would make streams differ; WebSocket pings keep sockets alive instead.
//! A follower only costs its place in the task's shared feed: one that reads slowly is paced by
//! TCP and slows nobody; a WebSocket follower that makes no room for [`STALL_LIMIT`] is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cloudbuild_proto::task::TaskId;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::TaskIdParam;
use crate::domain::callers::Caller;
use crate::domain::policy::ProjectAction;
use crate::socketio::STALL_LIMIT;
use crate::state::AppState;

/// Events taken from a task's log at a time.
const READ_BATCH: usize = 256;

/// The largest message a WebSocket follower may send (it has nothing to say but pongs).
const FOLLOWER_FRAME_BYTES: usize = 4 << 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Send events with a sequence number above this (0: from the start).
    #[serde(default)]
    after: u64,
    /// Keep the stream open until the task ends (default); `false` stops at the current end.
    follow: Option<bool>,
}

/// `GET /api/v1/tasks/{id}/events`
pub async fn events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    TaskIdParam(id): TaskIdParam,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // 404 before any upgrade or stream, also for a task of a project the caller may not read.
    let task = crate::domain::tasks::get(&state, &caller, id, ProjectAction::Read).await?;
    // An ended task's log is read from the store as it is sent, not through a feed.
    let follow = p.follow.unwrap_or(true) && !task.state.is_terminal();

    if headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        let (mut parts, _) = req.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        // A follower only reads: what it may send (pongs, a close) is small, and a larger
        // frame ends the connection instead of being held in memory.
        let ws = ws.max_message_size(FOLLOWER_FRAME_BYTES).max_frame_size(FOLLOWER_FRAME_BYTES);
        let follower = crate::domain::follow::follow(&state, &caller, &task.name, id, p.after, follow);
        return Ok(ws.on_upgrade(move |socket| ws_follow(id, follower, socket)));
    }

    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json") && !v.contains("text/event-stream"));
    if wants_json {
        let events = crate::domain::follow::stored(&state, id, p.after, 100_000).await?;
        let body: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                let data: serde_json::Value = serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null);
                serde_json::json!({ "seq": e.seq, "event": e.kind, "data": data })
            })
            .collect();
        return Ok(Json(body).into_response());
    }

    let follower = crate::domain::follow::follow(&state, &caller, &task.name, id, p.after, follow);
    let batches = futures_util::stream::unfold(follower, |mut f| async move {
        let events = f.next(READ_BATCH).await?;
        Some((futures_util::stream::iter(events.into_iter().map(|e| Ok::<_, std::convert::Infallible>(e.sse()))), f))
    });
    let stream = futures_util::StreamExt::flatten(batches);
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

async fn ws_follow(id: TaskId, mut follower: crate::domain::follow::Follower, mut socket: WebSocket) {
    let every = Duration::from_secs(20);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // Frames from the client interrupt the wait for events, so access is checked here too.
    let recheck = crate::domain::follow::RECHECK_EVERY;
    let mut access = tokio::time::interval_at(tokio::time::Instant::now() + recheck, recheck);
    'follow: loop {
        tokio::select! {
            events = follower.next(READ_BATCH) => match events {
                Some(events) => for ev in events {
                    let text = Utf8Bytes::try_from(ev.ws_text()).unwrap_or_default();
                    match tokio::time::timeout(STALL_LIMIT, socket.send(Message::Text(text))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::info!(task = id, "WebSocket follower made no room for {} s; disconnected", STALL_LIMIT.as_secs());
                            return;
                        }
                    }
                },
                None => break 'follow,
            },
            _ = ping.tick() => if socket.send(Message::Ping(Default::default())).await.is_err() { return },
            _ = access.tick() => if !follower.still_allowed().await { break 'follow },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    // Complete the close handshake: dropping the socket right after our Close would reset the
    // connection and could discard events the client has not read yet.
    if socket.send(Message::Close(None)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(msg)) = socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}
