//! The worker's side of the worker protocol: connect, say hello, run assignments, heartbeat,
//! and reconnect with backoff when the connection drops.
//!
//! Outgoing messages go through one channel that lives as long as the worker, so events that
//! running tasks report while the connection is down are sent once it is back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::worker::{ServerMessage, TaskAttempt, WorkerMessage, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::cancel::{CancelHandle, CancelToken};
use crate::executor::{Executor, Reporter, TaskContext};
use crate::publish::Uploader;

/// How a worker connects and what it offers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Server base URL, `http://host:port`.
    pub server: String,
    pub token: String,
    /// Unique among the server's workers; also its id.
    pub name: String,
    pub slots: u32,
    pub labels: Vec<String>,
    /// Root of the per-task work directories.
    pub work_root: PathBuf,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid server URL `{0}`: use http://host:port")]
    BadUrl(String),
    #[error("cannot create the work directory {0}: {1}")]
    WorkDir(String, std::io::Error),
}

type Running = HashMap<TaskAttempt, CancelHandle>;

/// Runs the worker until `shutdown` turns true; then cancels what is running and returns.
pub async fn run(
    cfg: WorkerConfig,
    executor: Arc<dyn Executor>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let base = cfg.server.trim_end_matches('/').to_owned();
    let ws_url = match base.strip_prefix("http://") {
        Some(rest) => format!("ws://{rest}/api/v1/workers/connect"),
        None => match base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}/api/v1/workers/connect"),
            None => return Err(WorkerError::BadUrl(cfg.server.clone())),
        },
    };
    std::fs::create_dir_all(&cfg.work_root)
        .map_err(|e| WorkerError::WorkDir(cfg.work_root.display().to_string(), e))?;
    // Builds left running by a previous life of this worker (killed with SIGKILL, machine
    // crash) are killed before any new work starts.
    let root = cfg.work_root.clone();
    let reaped = tokio::task::spawn_blocking(move || crate::process::reap_orphans(&root)).await.unwrap_or(0);
    if reaped > 0 {
        tracing::warn!("killed {reaped} build process group(s) left by a previous run of this worker");
    }
    let uploader = Uploader { client: reqwest::Client::new(), base, token: cfg.token.clone().into() };
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<WorkerMessage>();
    let mut running: Running = HashMap::new();
    // Finished tasks tell the loop to forget their cancel handle.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<TaskAttempt>();
    let mut backoff = Duration::from_millis(100);
    let mut pending: Option<WorkerMessage> = None;

    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut request = match ws_url.as_str().into_client_request() {
            Ok(r) => r,
            Err(_) => return Err(WorkerError::BadUrl(cfg.server.clone())),
        };
        if let Ok(v) = format!("Bearer {}", cfg.token).parse() {
            request.headers_mut().insert("authorization", v);
        }
        let socket = tokio::select! {
            r = tokio_tungstenite::connect_async(request) => r,
            _ = shutdown.changed() => break,
        };
        let (mut sink, mut stream) = match socket {
            Ok((s, _)) => s.split(),
            Err(e) => {
                tracing::warn!("cannot connect to {ws_url}: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let hello = WorkerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            name: cfg.name.clone(),
            slots: cfg.slots,
            labels: cfg.labels.clone(),
        };
        if sink.send(Message::Text(to_json(&hello).into())).await.is_err() {
            continue;
        }
        let heartbeat_secs = match stream.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMessage>(&t) {
                Ok(ServerMessage::Welcome { heartbeat_secs, worker_id }) => {
                    tracing::info!(%worker_id, "connected to {ws_url}");
                    heartbeat_secs
                }
                _ => continue,
            },
            _ => {
                tracing::warn!("the server closed the connection after hello (is the name `{}` taken?)", cfg.name);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut heartbeat = tokio::time::interval(Duration::from_secs(heartbeat_secs.max(1)));
        loop {
            if let Some(msg) = pending.take() {
                if sink.send(Message::Text(to_json(&msg).into())).await.is_err() {
                    pending = Some(msg);
                    break;
                }
            }
            tokio::select! {
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMessage>(&t) {
                        Ok(msg) => on_server_message(msg, &cfg, &executor, &uploader, &out_tx, &done_tx, &mut running),
                        Err(e) => tracing::warn!("unreadable server message: {e}"),
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                Some(msg) = out_rx.recv() => pending = Some(msg),
                Some(done) = done_rx.recv() => { running.remove(&done); }
                _ = heartbeat.tick() => {
                    pending = Some(WorkerMessage::Heartbeat { running: running.keys().copied().collect() });
                }
                _ = shutdown.changed() => break,
            }
        }
        if *shutdown.borrow() {
            break;
        }
        tracing::warn!("connection to the server lost; reconnecting");
    }
    for (task, handle) in &running {
        tracing::info!(task = task.task_id, "stopping task: worker shutting down");
        handle.cancel();
    }
    // Wait for the stopped tasks to kill their process groups (SIGTERM, then SIGKILL after the
    // kill grace), so nothing outlives the worker. Their tasks stay `running` on the server and
    // are requeued when their leases expire.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
    while !running.is_empty() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(done)) => {
                running.remove(&done);
            }
            _ => break,
        }
    }
    Ok(())
}

/// Longest wait at shutdown for running tasks to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

fn to_json(msg: &WorkerMessage) -> String {
    serde_json::to_string(msg).unwrap_or_default()
}

fn on_server_message(
    msg: ServerMessage,
    cfg: &WorkerConfig,
    executor: &Arc<dyn Executor>,
    uploader: &Uploader,
    out_tx: &mpsc::UnboundedSender<WorkerMessage>,
    done_tx: &mpsc::UnboundedSender<TaskAttempt>,
    running: &mut Running,
) {
    match msg {
        ServerMessage::Welcome { .. } => {}
        ServerMessage::Assign { assignment } => {
            let task = assignment.task;
            let (handle, cancel) = CancelToken::new();
            running.insert(task, handle);
            let ctx = TaskContext {
                reporter: Reporter::new(task, out_tx.clone()),
                assignment: *assignment,
                cancel,
                work_root: cfg.work_root.clone(),
                uploader: uploader.clone(),
            };
            let executor = executor.clone();
            let out_tx = out_tx.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                tracing::info!(task = task.task_id, attempt = task.attempt, "task started");
                let outcome = executor.run(ctx).await;
                tracing::info!(task = task.task_id, ?outcome, "task finished");
                let _ = out_tx.send(WorkerMessage::Finished { task, outcome });
                let _ = done_tx.send(task);
            });
        }
        ServerMessage::Cancel { task } => {
            if let Some(h) = running.get(&task) {
                tracing::info!(task = task.task_id, "cancel requested");
                h.cancel();
            }
        }
        ServerMessage::Refused { task, reason } => {
            if let Some(h) = running.get(&task) {
                tracing::warn!(task = task.task_id, "server refused our work on this task: {reason}; stopping it");
                h.cancel();
            }
        }
    }
}
