//! Workers: the hello a worker opens with, the messages it sends about its tasks (stored,
//! then acknowledged), heartbeats and leases, the registry, and revocable worker tokens.

use std::collections::BTreeMap;

use cloudbuild_proto::event::EventBody;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::validate::{self, ValidationError};
use cloudbuild_proto::worker::{
    CreatedWorkerToken, Outcome, ServerMessage, TaskAttempt, WorkerEvent, WorkerInfo, WorkerMessage, WorkerState,
    WorkerToken, PROTOCOL_VERSION,
};
use cloudbuild_store::{Change, Finish, Notice, StoreError, WorkerOp};
use tokio::sync::mpsc;

use super::callers::Caller;
use crate::secrets::random_hex;
use crate::state::AppState;

/// Why a worker operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The first message was not an acceptable hello; the reason is for the server's log.
    #[error("worker refused: {0}")]
    BadHello(String),
    #[error("no live worker token named `{0}`")]
    NoSuchToken(String),
    #[error("no randomness for a token: {0}")]
    Random(#[from] getrandom::Error),
    #[error(transparent)]
    Policy(#[from] super::policy::PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a worker's hello says about it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: String,
    pub slots: u32,
    pub labels: Vec<String>,
}

/// Checks a worker's first message: the protocol version, 1 to 256 slots, a valid name and
/// labels.
pub fn read_hello(msg: WorkerMessage) -> Result<Hello, WorkerError> {
    match msg {
        WorkerMessage::Hello { protocol, name, slots, labels } => {
            if protocol != PROTOCOL_VERSION {
                return Err(WorkerError::BadHello(format!(
                    "protocol {protocol}; this server speaks {PROTOCOL_VERSION} (upgrade the worker)"
                )));
            }
            if slots == 0 || slots > 256 {
                return Err(WorkerError::BadHello(format!("{slots} slots (1 to 256)")));
            }
            let name = validate::identifier("worker name", &name)?;
            let labels = validate::labels(&labels)?;
            Ok(Hello { name, slots, labels })
        }
        other => Err(WorkerError::BadHello(format!("expected hello, got {other:?}"))),
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

/// Registers a worker that said hello on this server: refused when a worker of that name is
/// connected here or to another server; else welcomed over `tx` (the worker's outgoing
/// messages), recorded in the registry and given to the scheduler. Returns the worker's id (its
/// own name, so a worker that reconnects keeps its leases).
pub async fn join(
    state: &AppState,
    hello: Hello,
    token: String,
    tx: mpsc::UnboundedSender<ServerMessage>,
) -> Result<String, WorkerError> {
    let Hello { name, slots, labels } = hello;
    if state.scheduler.is_connected(&name) || connected_elsewhere(state, &name).await {
        return Err(WorkerError::BadHello(format!("a worker named `{name}` is already connected")));
    }
    let welcome = ServerMessage::Welcome { worker_id: name.clone(), heartbeat_secs: state.settings.heartbeat_secs };
    if tx.send(welcome).is_err() {
        return Err(WorkerError::BadHello("the connection closed before the welcome".into()));
    }
    tracing::info!(worker = %name, slots, ?labels, %token, "worker connected");
    let now = Timestamp::now();
    let info = WorkerInfo {
        name: name.clone(),
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
        tracing::warn!(worker = %name, "cannot record the worker: {e}");
    }
    state.scheduler.join(info, tx);
    Ok(name)
}

/// A worker's connection to this server ended: the scheduler forgets it and the registry shows
/// it disconnected (its leases expire on their own if it does not come back).
pub async fn leave(state: &AppState, worker: &str) {
    let last = state.scheduler.snapshot(worker);
    state.scheduler.leave(worker);
    if let Some(info) = last {
        let gone = WorkerInfo { state: WorkerState::Disconnected, running: Vec::new(), ..info };
        let _ = state.store.put_worker(&gone).await;
    }
}

/// Messages applied in one store transaction at most.
pub const MAX_BATCH: usize = 256;

/// Stores a batch of worker messages and acknowledges them; `Err` when the store failed (the
/// messages are then neither stored nor acknowledged).
pub async fn handle_batch(
    state: &AppState,
    worker: &str,
    tx: &mpsc::UnboundedSender<ServerMessage>,
    batch: Vec<WorkerMessage>,
) -> Result<(), StoreError> {
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
                    // Checked like a client's: it names a release's directory.
                    WorkerEvent::Version { version } => match cloudbuild_proto::validate::Version::parse(&version) {
                        Ok(v) => Change::Version(v.to_string()),
                        // Still applied in its place (messages are numbered), as a line saying so.
                        Err(e) => Change::Append(EventBody::Output {
                            stream: cloudbuild_proto::event::OutputStream::Stderr,
                            text: format!("[cloudbuild] the worker reported an invalid version: {e}\n"),
                        }),
                    },
                    WorkerEvent::Cache { report } => Change::Cache(report),
                };
                ops.push(WorkerOp { task: task_id, attempt, worker: worker.to_owned(), seq, change });
            }
            WorkerMessage::Finished { task, seq, outcome } => {
                let finish = match outcome {
                    Outcome::Succeeded { url } => Finish::Succeeded { url },
                    Outcome::Skipped { reason } => Finish::Skipped { reason },
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
            return Err(e);
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
            let staged = crate::uploads::staging_dir(state, task.task_id, task.attempt);
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

/// Every registered worker, newest state. A worker registered as connected whose heartbeats
/// stopped for longer than a lease is shown as `lost`.
pub async fn list(state: &AppState, caller: &Caller) -> Result<Vec<WorkerInfo>, WorkerError> {
    super::policy::require_admin(caller, "the worker registry")?;
    let lease = state.settings.lease_secs as i64 * 1_000_000;
    let now = Timestamp::now();
    let mut workers = state.store.list_workers().await?;
    for w in &mut workers {
        if w.state == WorkerState::Connected && now.0 - w.last_heartbeat.0 > lease {
            w.state = WorkerState::Lost;
        }
    }
    Ok(workers)
}

/// A new worker token. The secret is in the answer only; the store keeps its blake3 hash.
pub async fn create_token(state: &AppState, caller: &Caller, name: &str) -> Result<CreatedWorkerToken, WorkerError> {
    let result = make_token(state, caller, name).await;
    super::audit::record(state, caller, "worker_token.create", format!("worker token {name}"), None, &result).await;
    result
}

async fn make_token(state: &AppState, caller: &Caller, name: &str) -> Result<CreatedWorkerToken, WorkerError> {
    super::policy::require_admin(caller, "managing worker tokens")?;
    let name = validate::identifier("token name", name)?;
    let token = format!("cbw_{}", random_hex(32)?);
    let hash = blake3::hash(token.as_bytes()).to_hex().to_string();
    state.store.create_worker_token(&name, &hash).await?;
    tracing::info!(token = %name, by = %caller.name, "worker token created");
    Ok(CreatedWorkerToken { name, token })
}

/// Names and dates of the revocable worker tokens, never secrets.
pub async fn list_tokens(state: &AppState, caller: &Caller) -> Result<Vec<WorkerToken>, WorkerError> {
    super::policy::require_admin(caller, "managing worker tokens")?;
    Ok(state.store.list_worker_tokens().await?)
}

/// Revokes a token; connected workers using it are disconnected (on every server) and cannot
/// reconnect. Their tasks are requeued when their leases expire.
pub async fn revoke_token(state: &AppState, caller: &Caller, name: &str) -> Result<(), WorkerError> {
    let result = drop_token(state, caller, name).await;
    super::audit::record(state, caller, "worker_token.revoke", format!("worker token {name}"), None, &result).await;
    result
}

async fn drop_token(state: &AppState, caller: &Caller, name: &str) -> Result<(), WorkerError> {
    super::policy::require_admin(caller, "managing worker tokens")?;
    let name = validate::identifier("token name", name)?;
    if !state.store.revoke_worker_token(&name).await? {
        return Err(WorkerError::NoSuchToken(name));
    }
    state.scheduler.revoke(&name);
    state.hub.announce(Notice::TokenRevoked { name: name.clone() });
    tracing::info!(token = %name, by = %caller.name, "worker token revoked");
    Ok(())
}
