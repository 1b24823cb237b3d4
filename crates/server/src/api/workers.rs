//! `GET /api/v1/workers/connect`: the server side of the worker protocol (see `proto::worker`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use cloudbuild_proto::event::EventBody;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::worker::{Outcome, ServerMessage, TaskAttempt, WorkerEvent, WorkerMessage, PROTOCOL_VERSION};
use cloudbuild_store::{Finish, WorkerOp};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::auth::{bearer, constant_time_eq};
use super::error::ApiError;
use crate::state::AppState;

/// Checks `Authorization: Bearer <token>` against the configured worker tokens, in constant time.
pub fn authorize_worker(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = bearer(headers)
        .ok_or_else(|| ApiError::unauthorized("a worker token is required (Authorization: Bearer <token>)"))?;
    let ok = state
        .settings
        .worker_tokens
        .iter()
        .fold(false, |acc, t| acc | constant_time_eq(t.as_bytes(), given.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized("unknown worker token"))
    }
}

/// Upgrades an authorised worker connection.
pub async fn connect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Authentication first, so an unauthenticated caller learns nothing else.
    authorize_worker(&state, &headers)?;
    let ws = ws.map_err(|e| {
        ApiError::bad_request(format!("the worker endpoint needs a WebSocket upgrade: {}", e.body_text()))
    })?;
    Ok(ws.max_message_size(16 * 1024 * 1024).on_upgrade(move |socket| serve_worker(state, socket)))
}

async fn serve_worker(state: Arc<AppState>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let hello = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    let (name, slots) = match hello {
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<WorkerMessage>(&text) {
            Ok(WorkerMessage::Hello { protocol, name, slots, .. }) if protocol == PROTOCOL_VERSION && slots > 0 => {
                (name, slots)
            }
            other => {
                tracing::warn!("worker refused: expected hello with protocol {PROTOCOL_VERSION}, got {other:?}");
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
        },
        _ => return,
    };
    // The worker's own name is its id, so a worker that reconnects keeps its leases.
    let worker_id = name;
    if state.scheduler.is_connected(&worker_id) {
        tracing::warn!(worker = %worker_id, "refused: a worker with this name is already connected");
        let _ = sink.send(Message::Close(None)).await;
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerMessage>();
    let welcome =
        ServerMessage::Welcome { worker_id: worker_id.clone(), heartbeat_secs: state.settings.heartbeat_secs };
    if tx.send(welcome).is_err() {
        return;
    }
    tracing::info!(worker = %worker_id, slots, "worker connected");
    state.scheduler.join(&worker_id, slots, tx.clone());

    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let text = serde_json::to_string(&msg).unwrap_or_default();
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });

    let mut shutdown = state.shutdown.clone();
    let mut closing = false;
    while !closing {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = shutdown.changed() => break,
        };
        let mut batch = Vec::new();
        closing = !take_message(msg, &mut batch, &worker_id);
        // Everything already received joins this batch: one transaction instead of one each.
        while !closing && batch.len() < MAX_BATCH {
            match stream.next().now_or_never() {
                Some(msg) => closing = !take_message(msg, &mut batch, &worker_id),
                None => break,
            }
        }
        handle_batch(&state, &worker_id, &tx, batch).await;
    }
    state.scheduler.leave(&worker_id);
    drop(tx);
    writer.abort();
    tracing::info!(worker = %worker_id, "worker disconnected");
}

/// Messages applied in one store transaction at most.
const MAX_BATCH: usize = 256;

/// Adds a received frame to the batch; false when the connection is closing.
fn take_message(msg: Option<Result<Message, axum::Error>>, batch: &mut Vec<WorkerMessage>, worker: &str) -> bool {
    match msg {
        Some(Ok(Message::Text(text))) => {
            match serde_json::from_str::<WorkerMessage>(&text) {
                Ok(m) => batch.push(m),
                Err(e) => tracing::warn!(%worker, "unreadable worker message: {e}"),
            }
            true
        }
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => false,
        Some(Ok(_)) => true,
    }
}

async fn handle_batch(
    state: &AppState,
    worker: &str,
    tx: &mpsc::UnboundedSender<ServerMessage>,
    batch: Vec<WorkerMessage>,
) {
    let mut ops = Vec::with_capacity(batch.len());
    for msg in batch {
        match msg {
            WorkerMessage::Hello { .. } => {}
            WorkerMessage::Heartbeat { running } => heartbeat(state, worker, tx, running).await,
            WorkerMessage::Event { task, event } => {
                let TaskAttempt { task_id, attempt } = task;
                ops.push(match event {
                    // Start and success both carry the stage's action, as in the original protocol.
                    WorkerEvent::Stage { stage, message, .. } => WorkerOp::Append {
                        task: task_id,
                        attempt,
                        body: EventBody::Stage { action: stage.action().to_owned(), message },
                    },
                    WorkerEvent::Output { stream, text } => {
                        WorkerOp::Append { task: task_id, attempt, body: EventBody::Output { stream, text } }
                    }
                    WorkerEvent::Commit { sha } => WorkerOp::Commit { task: task_id, attempt, sha },
                });
            }
            WorkerMessage::Finished { task, outcome } => {
                let finish = match outcome {
                    Outcome::Succeeded { url } => Finish::Succeeded { url },
                    Outcome::Failed { stage, reason } => Finish::Failed { stage, reason },
                    Outcome::Cancelled { stage } => Finish::Cancelled { stage, reason: "cancelled by request".into() },
                    Outcome::TimedOut { stage, reason } => Finish::TimedOut { stage: Some(stage), reason },
                };
                ops.push(WorkerOp::Finish { task: task.task_id, attempt: task.attempt, finish });
            }
        }
    }
    if ops.is_empty() {
        return;
    }
    let keys: Vec<(TaskAttempt, bool)> = ops
        .iter()
        .map(|op| match op {
            WorkerOp::Append { task, attempt, .. } | WorkerOp::Commit { task, attempt, .. } => {
                (TaskAttempt { task_id: *task, attempt: *attempt }, false)
            }
            WorkerOp::Finish { task, attempt, .. } => (TaskAttempt { task_id: *task, attempt: *attempt }, true),
        })
        .collect();
    let results = match state.store.apply_worker_ops(ops).await {
        Ok(r) => r,
        Err(e) => {
            // The worker keeps running; its task's lease decides what happens next.
            tracing::error!(%worker, "cannot store worker messages: {e}");
            return;
        }
    };
    for ((task, finished), res) in keys.into_iter().zip(results) {
        match res {
            Ok(events) => state.hub.published(task.task_id, &events),
            Err(e) => {
                let _ = tx.send(ServerMessage::Refused { task, reason: e.to_string() });
            }
        }
        if finished {
            state.scheduler.slot_freed(worker, task);
            // Contents a failed or cancelled publish staged are not needed any more.
            let staged = crate::release::staging(state, task.task_id, task.attempt);
            tokio::spawn(async move {
                let _ = tokio::fs::remove_dir_all(staged).await;
            });
        }
    }
}

async fn heartbeat(
    state: &AppState,
    worker: &str,
    tx: &mpsc::UnboundedSender<ServerMessage>,
    running: Vec<TaskAttempt>,
) {
    let until = Timestamp(Timestamp::now().0 + state.settings.lease_secs as i64 * 1_000_000);
    for t in running {
        match state.store.extend_lease(t.task_id, t.attempt, worker, until).await {
            Ok(true) => {}
            Ok(false) => {
                let _ =
                    tx.send(ServerMessage::Refused { task: t, reason: "this worker no longer holds the task".into() });
            }
            Err(e) => tracing::error!("heartbeat: {e}"),
        }
    }
}
