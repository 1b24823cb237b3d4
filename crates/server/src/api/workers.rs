//! The worker endpoints: `GET /api/v1/workers/connect` (the server side of the worker
//! protocol, see `proto::worker`), `GET /api/v1/workers` (the registry), and the revocable
//! worker tokens under `/api/v1/worker-tokens`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use cloudbuild_proto::worker::{
    CreateWorkerToken, CreatedWorkerToken, ServerMessage, WorkerList, WorkerMessage, WorkerTokenList,
};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::extract::{ApiJson, Worker};
use crate::domain::callers::Caller;
use crate::domain::workers::{self, Hello, WorkerError};
use crate::state::AppState;

/// Upgrades an authorised worker connection.
pub async fn connect(
    // Authentication first, so an unauthenticated caller learns nothing else.
    Worker(token): Worker,
    State(state): State<Arc<AppState>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| {
        ApiError::bad_request(format!("the worker endpoint needs a WebSocket upgrade: {}", e.body_text()))
    })?;
    Ok(ws.max_message_size(16 * 1024 * 1024).on_upgrade(move |socket| serve_worker(state, socket, token)))
}

/// The first frame of a connection as a worker message.
fn first_message(msg: Option<Result<Message, axum::Error>>) -> Result<WorkerMessage, WorkerError> {
    let Some(Ok(Message::Text(text))) = msg else { return Err(WorkerError::BadHello("no hello".into())) };
    serde_json::from_str(&text).map_err(|e| WorkerError::BadHello(format!("unreadable hello: {e}")))
}

async fn serve_worker(state: Arc<AppState>, socket: WebSocket, token: String) {
    let (mut sink, mut stream) = socket.split();
    let hello = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap_or(None);
    let Hello { name, slots, labels } = match first_message(hello).and_then(workers::read_hello) {
        Ok(h) => h,
        Err(why) => {
            tracing::warn!("{why}");
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerMessage>();
    let worker_id = match workers::join(&state, Hello { name, slots, labels }, token, tx.clone()).await {
        Ok(id) => id,
        Err(why) => {
            tracing::warn!("{why}");
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };

    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let goodbye = matches!(msg, ServerMessage::Goodbye { .. });
            let text = serde_json::to_string(&msg).unwrap_or_default();
            if sink.send(Message::Text(text.into())).await.is_err() || goodbye {
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
        while !closing && batch.len() < workers::MAX_BATCH {
            match stream.next().now_or_never() {
                Some(msg) => closing = !take_message(msg, &mut batch, &worker_id),
                None => break,
            }
        }
        if workers::handle_batch(&state, &worker_id, &tx, batch).await.is_err() {
            // Not stored, so not acknowledged: closing makes the worker reconnect and resend.
            break;
        }
        if writer.is_finished() {
            break; // said goodbye (token revoked)
        }
    }
    workers::leave(&state, &worker_id).await;
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    tracing::info!(worker = %worker_id, "worker disconnected");
}

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

/// `GET /api/v1/workers`: the registry.
pub async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Json<WorkerList>, ApiError> {
    Ok(Json(WorkerList { workers: workers::list(&state, &caller).await? }))
}

/// `POST /api/v1/worker-tokens {name}`: a new worker token, its secret in this answer only.
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateWorkerToken>,
) -> Result<(StatusCode, Json<CreatedWorkerToken>), ApiError> {
    Ok((StatusCode::CREATED, Json(workers::create_token(&state, &caller, &req.name).await?)))
}

/// `GET /api/v1/worker-tokens`: names and dates, never secrets.
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<WorkerTokenList>, ApiError> {
    Ok(Json(WorkerTokenList { tokens: workers::list_tokens(&state, &caller).await? }))
}

/// `DELETE /api/v1/worker-tokens/{name}`: revokes a token and disconnects its workers.
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    workers::revoke_token(&state, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
