//! The worker endpoints: `GET /api/v1/workers/connect` (the server side of the worker
//! protocol, see `proto::worker`), `GET /api/v1/workers` (the registry), and the revocable
//! worker tokens under `/api/v1/worker-tokens`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use cloudbuild_proto::event::EventBody;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::validate;
use cloudbuild_proto::worker::{CreateWorkerToken, CreatedWorkerToken, WorkerList, WorkerTokenList};
use cloudbuild_proto::worker::{
    Outcome, ServerMessage, TaskAttempt, WorkerEvent, WorkerInfo, WorkerMessage, WorkerState, PROTOCOL_VERSION,
};
use cloudbuild_store::{Change, Finish, Notice, WorkerOp};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::collections::BTreeMap;
use tokio::sync::mpsc;

use super::auth::{bearer, constant_time_eq, Caller};
use super::error::ApiError;
use super::tasks::ApiJson;
use crate::state::AppState;

/// Checks `Authorization: Bearer <token>` against the configured worker tokens (in constant
/// time) and the revocable ones in the store (by blake3 hash); returns the token's name.
pub async fn authorize_worker(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let given = bearer(headers)
        .ok_or_else(|| ApiError::unauthorized("a worker token is required (Authorization: Bearer <token>)"))?;
    let configured = state.settings.worker_tokens.iter().fold(None, |found, (name, token)| {
        let hit = constant_time_eq(token.as_bytes(), given.as_bytes());
        found.or(hit.then(|| name.clone()))
    });
    if let Some(name) = configured {
        return Ok(name);
    }
    let hash = blake3::hash(given.as_bytes()).to_hex().to_string();
    state.store.worker_token_name(&hash).await?.ok_or_else(|| ApiError::unauthorized("unknown or revoked worker token"))
}

/// Upgrades an authorised worker connection.
pub async fn connect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Authentication first, so an unauthenticated caller learns nothing else.
    let token = authorize_worker(&state, &headers).await?;
    let ws = ws.map_err(|e| {
        ApiError::bad_request(format!("the worker endpoint needs a WebSocket upgrade: {}", e.body_text()))
    })?;
    Ok(ws.max_message_size(16 * 1024 * 1024).on_upgrade(move |socket| serve_worker(state, socket, token)))
}

/// A hello's name, slots and labels, validated; the reason when it is refused.
fn read_hello(msg: Option<Result<Message, axum::Error>>) -> Result<(String, u32, Vec<String>), String> {
    let Some(Ok(Message::Text(text))) = msg else { return Err("no hello".into()) };
    match serde_json::from_str::<WorkerMessage>(&text) {
        Ok(WorkerMessage::Hello { protocol, name, slots, labels }) => {
            if protocol != PROTOCOL_VERSION {
                return Err(format!("protocol {protocol}; this server speaks {PROTOCOL_VERSION} (upgrade the worker)"));
            }
            if slots == 0 || slots > 256 {
                return Err(format!("{slots} slots (1 to 256)"));
            }
            let name = validate::identifier("worker name", &name).map_err(|e| e.to_string())?;
            let labels = validate::labels(&labels).map_err(|e| e.to_string())?;
            Ok((name, slots, labels))
        }
        other => Err(format!("expected hello, got {other:?}")),
    }
}

/// Whether another server has a live worker of this name (its registry entry is fresh).
async fn connected_elsewhere(state: &AppState, name: &str) -> bool {
    let lease = state.settings.lease_secs as i64 * 1_000_000;
    let Ok(workers) = state.store.list_workers().await else { return false };
    let server = state.public_url.clone();
    workers.iter().any(|w| {
        w.name == name
            && w.state == WorkerState::Connected
            && w.server != server
            && Timestamp::now().0 - w.last_heartbeat.0 < lease
    })
}

async fn serve_worker(state: Arc<AppState>, socket: WebSocket, token: String) {
    let (mut sink, mut stream) = socket.split();
    let hello = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap_or(None);
    let (name, slots, labels) = match read_hello(hello) {
        Ok(h) => h,
        Err(why) => {
            tracing::warn!("worker refused: {why}");
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    // The worker's own name is its id, so a worker that reconnects keeps its leases.
    let worker_id = name;
    if state.scheduler.is_connected(&worker_id) || connected_elsewhere(&state, &worker_id).await {
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
    tracing::info!(worker = %worker_id, slots, ?labels, %token, "worker connected");
    let now = Timestamp::now();
    let info = WorkerInfo {
        name: worker_id.clone(),
        state: WorkerState::Connected,
        slots,
        labels,
        running: Vec::new(),
        token,
        server: state.public_url.clone(),
        connected_at: now,
        last_heartbeat: now,
    };
    if let Err(e) = state.store.put_worker(&info).await {
        tracing::warn!(worker = %worker_id, "cannot record the worker: {e}");
    }
    state.scheduler.join(info, tx.clone());

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
        while !closing && batch.len() < MAX_BATCH {
            match stream.next().now_or_never() {
                Some(msg) => closing = !take_message(msg, &mut batch, &worker_id),
                None => break,
            }
        }
        if handle_batch(&state, &worker_id, &tx, batch).await.is_err() {
            // Not stored, so not acknowledged: closing makes the worker reconnect and resend.
            break;
        }
        if writer.is_finished() {
            break; // said goodbye (token revoked)
        }
    }
    let last = state.scheduler.snapshot(&worker_id);
    state.scheduler.leave(&worker_id);
    if let Some(info) = last {
        let gone = WorkerInfo { state: WorkerState::Disconnected, running: Vec::new(), ..info };
        let _ = state.store.put_worker(&gone).await;
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
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

/// Stores a batch of worker messages and acknowledges them; `Err` when the store failed (the
/// messages are then neither stored nor acknowledged).
async fn handle_batch(
    state: &AppState,
    worker: &str,
    tx: &mpsc::UnboundedSender<ServerMessage>,
    batch: Vec<WorkerMessage>,
) -> Result<(), ()> {
    let mut ops = Vec::with_capacity(batch.len());
    for msg in batch {
        match msg {
            WorkerMessage::Hello { .. } => {}
            WorkerMessage::Heartbeat { running } => heartbeat(state, worker, tx, running).await,
            WorkerMessage::Event { task, seq, event } => {
                let TaskAttempt { task_id, attempt } = task;
                let change = match event {
                    // Start and success both carry the stage's action, as in the original protocol.
                    WorkerEvent::Stage { stage, message, .. } => {
                        Change::Append(EventBody::Stage { action: stage.action().to_owned(), message })
                    }
                    WorkerEvent::Output { stream, text } => Change::Append(EventBody::Output { stream, text }),
                    WorkerEvent::Commit { sha } => Change::Commit(sha),
                };
                ops.push(WorkerOp { task: task_id, attempt, worker: worker.to_owned(), seq, change });
            }
            WorkerMessage::Finished { task, seq, outcome } => {
                let finish = match outcome {
                    Outcome::Succeeded { url } => Finish::Succeeded { url },
                    Outcome::Failed { stage, reason } => Finish::Failed { stage, reason },
                    Outcome::Cancelled { stage } => Finish::Cancelled { stage, reason: "cancelled by request".into() },
                    Outcome::TimedOut { stage, reason } => Finish::TimedOut { stage: Some(stage), reason },
                };
                let change = Change::Finish(finish);
                ops.push(WorkerOp {
                    task: task.task_id,
                    attempt: task.attempt,
                    worker: worker.to_owned(),
                    seq,
                    change,
                });
            }
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    let keys: Vec<(TaskAttempt, u64, bool)> = ops
        .iter()
        .map(|op| {
            let finished = matches!(op.change, Change::Finish(_));
            (TaskAttempt { task_id: op.task, attempt: op.attempt }, op.seq, finished)
        })
        .collect();
    let results = match state.store.apply_worker_ops(ops).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(%worker, "cannot store worker messages: {e}");
            return Err(());
        }
    };
    // Everything handled is acknowledged, refused messages too (they are final).
    let mut acks: BTreeMap<TaskAttempt, u64> = BTreeMap::new();
    for ((task, seq, finished), res) in keys.into_iter().zip(results) {
        let ack = acks.entry(task).or_default();
        *ack = (*ack).max(seq);
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
    for (task, seq) in acks {
        let _ = tx.send(ServerMessage::Ack { task, seq });
    }
    Ok(())
}

async fn heartbeat(
    state: &AppState,
    worker: &str,
    tx: &mpsc::UnboundedSender<ServerMessage>,
    running: Vec<TaskAttempt>,
) {
    let until = Timestamp(Timestamp::now().0 + state.settings.lease_secs as i64 * 1_000_000);
    if let Some(info) = state.scheduler.heartbeat(worker, &running) {
        if let Err(e) = state.store.put_worker(&info).await {
            tracing::debug!(%worker, "cannot record the heartbeat: {e}");
        }
    }
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

/// `GET /api/v1/workers`: every registered worker, newest state. A worker registered as
/// connected whose heartbeats stopped for longer than a lease is shown as `lost`.
pub async fn list(State(state): State<Arc<AppState>>, _caller: Caller) -> Result<Json<WorkerList>, ApiError> {
    let lease = state.settings.lease_secs as i64 * 1_000_000;
    let now = Timestamp::now();
    let mut workers = state.store.list_workers().await?;
    for w in &mut workers {
        if w.state == WorkerState::Connected && now.0 - w.last_heartbeat.0 > lease {
            w.state = WorkerState::Lost;
        }
    }
    Ok(Json(WorkerList { workers }))
}

/// `POST /api/v1/worker-tokens {name}`: a new worker token. The secret is in this answer only;
/// the store keeps its blake3 hash.
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateWorkerToken>,
) -> Result<(StatusCode, Json<CreatedWorkerToken>), ApiError> {
    let name = validate::identifier("token name", &req.name)?;
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes).map_err(|e| ApiError::internal("making a token", e))?;
    let token = format!("cbw_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let hash = blake3::hash(token.as_bytes()).to_hex().to_string();
    state.store.create_worker_token(&name, &hash).await?;
    tracing::info!(token = %name, by = %caller.0, "worker token created");
    Ok((StatusCode::CREATED, Json(CreatedWorkerToken { name, token })))
}

/// `GET /api/v1/worker-tokens`: names and dates, never secrets.
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<WorkerTokenList>, ApiError> {
    Ok(Json(WorkerTokenList { tokens: state.store.list_worker_tokens().await? }))
}

/// `DELETE /api/v1/worker-tokens/{name}`: revokes a token; connected workers using it are
/// disconnected (on every server) and cannot reconnect. Their tasks are requeued when their
/// leases expire.
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = validate::identifier("token name", &name)?;
    if !state.store.revoke_worker_token(&name).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no live worker token named `{name}`")));
    }
    state.scheduler.revoke(&name);
    state.hub.announce(Notice::TokenRevoked { name: name.clone() });
    tracing::info!(token = %name, by = %caller.0, "worker token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Fills `buf` from the operating system's random source (`getrandom`).
pub(crate) fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buf).map_err(std::io::Error::other)
}
