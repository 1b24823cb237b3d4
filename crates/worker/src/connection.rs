//! The worker's side of the worker protocol: connect, say hello, run assignments, heartbeat,
//! and reconnect with backoff when the connection drops.
//!
//! Outgoing messages go through one channel that lives as long as the worker, so events that
//! running tasks report while the connection is down are sent once it is back. Each task
//! message gets its number here and stays in the [`Outbox`] until the server acknowledges it;
//! after a reconnect (the server restarted, the network broke) everything unacknowledged is
//! sent again, and the server skips what it had already stored.

use backon::BackoffBuilder;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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

/// How a worker connects and what it offers. Its `Debug` form hides the token.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Server base URL, `http://host:port`.
    pub server: String,
    /// The worker token (`Authorization: Bearer`).
    pub token: String,
    /// Unique among the server's workers; also its id.
    pub name: String,
    pub slots: u32,
    pub labels: Vec<String>,
    /// Root of the per-task work directories.
    pub work_root: PathBuf,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("server", &self.server)
            .field("token", &"***")
            .field("name", &self.name)
            .field("slots", &self.slots)
            .field("labels", &self.labels)
            .field("work_root", &self.work_root)
            .finish()
    }
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid server URL `{0}`: use http://host:port")]
    BadUrl(String),
    #[error("cannot create the work directory {0}: {1}")]
    WorkDir(String, std::io::Error),
    #[error("the server refused the worker token (revoked or unknown): {0}")]
    Unauthorized(String),
}

/// Numbered task messages not yet acknowledged by the server, per task attempt.
#[derive(Debug, Default)]
struct Outbox {
    next: HashMap<TaskAttempt, u64>,
    unacked: BTreeMap<TaskAttempt, VecDeque<(u64, String)>>,
    finished: HashSet<TaskAttempt>,
}

impl Outbox {
    /// Numbers a task message and keeps it until acknowledged; returns the text to send.
    fn number(&mut self, msg: WorkerMessage) -> String {
        let (task, numbered) = match msg {
            WorkerMessage::Event { task, event, .. } => {
                let seq = self.bump(task);
                (task, WorkerMessage::Event { task, seq, event })
            }
            WorkerMessage::Finished { task, outcome, .. } => {
                let seq = self.bump(task);
                self.finished.insert(task);
                (task, WorkerMessage::Finished { task, seq, outcome })
            }
            other => return to_json(&other),
        };
        let text = to_json(&numbered);
        let seq = self.next[&task];
        self.unacked.entry(task).or_default().push_back((seq, text.clone()));
        text
    }

    fn bump(&mut self, task: TaskAttempt) -> u64 {
        let n = self.next.entry(task).or_insert(0);
        *n += 1;
        *n
    }

    /// The server stored this task's messages up to `seq`.
    fn ack(&mut self, task: TaskAttempt, seq: u64) {
        if let Some(q) = self.unacked.get_mut(&task) {
            while q.front().is_some_and(|(s, _)| *s <= seq) {
                q.pop_front();
            }
            if q.is_empty() && self.finished.contains(&task) {
                self.forget(task);
            }
        }
    }

    /// Drops everything about a task (finished and acknowledged, or refused by the server).
    fn forget(&mut self, task: TaskAttempt) {
        self.next.remove(&task);
        self.unacked.remove(&task);
        self.finished.remove(&task);
    }

    /// Every unacknowledged message, in order within each task.
    fn unacknowledged(&self) -> Vec<String> {
        self.unacked.values().flat_map(|q| q.iter().map(|(_, t)| t.clone())).collect()
    }
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
    let mut delays = crate::retry::reconnect().build();
    let mut outbox = Outbox::default();

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
            // No Nagle: small messages (events one way, acks the other) would otherwise wait for
            // the peer's delayed ACK, ~40 ms each.
            r = tokio_tungstenite::connect_async_with_config(request, None, true) => r,
            _ = shutdown.changed() => break,
        };
        let (mut sink, mut stream) = match socket {
            Ok((s, _)) => s.split(),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 401 => {
                let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
                return Err(WorkerError::Unauthorized(body));
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!("cannot connect to {ws_url}: {e}; retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break,
                }
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
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                continue;
            }
        };
        delays = crate::retry::reconnect().build();
        // The heartbeat (first tick is immediate) renews the leases of what still runs; then
        // whatever the server did not acknowledge before the break goes again.
        let mut heartbeat = tokio::time::interval(Duration::from_secs(heartbeat_secs.max(1)));
        heartbeat.tick().await;
        let mut resend = vec![to_json(&WorkerMessage::Heartbeat { running: running.keys().copied().collect() })];
        resend.extend(outbox.unacknowledged());
        if resend.len() > 1 {
            tracing::info!("resending {} unacknowledged message(s)", resend.len() - 1);
        }
        let mut connected = true;
        for text in resend {
            if sink.send(Message::Text(text.into())).await.is_err() {
                connected = false;
                break;
            }
        }
        while connected {
            let text = tokio::select! {
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMessage>(&t) {
                        Ok(ServerMessage::Ack { task, seq }) => { outbox.ack(task, seq); continue }
                        Ok(ServerMessage::Goodbye { reason }) => {
                            for handle in running.values() {
                                handle.cancel();
                            }
                            return Err(WorkerError::Unauthorized(reason));
                        }
                        Ok(msg) => {
                            if let ServerMessage::Refused { task, .. } = &msg {
                                outbox.forget(*task);
                            }
                            on_server_message(msg, &cfg, &executor, &uploader, &out_tx, &done_tx, &mut running);
                            continue
                        }
                        Err(e) => { tracing::warn!("unreadable server message: {e}"); continue }
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                },
                Some(msg) = out_rx.recv() => outbox.number(msg),
                Some(done) = done_rx.recv() => { running.remove(&done); continue }
                _ = heartbeat.tick() => to_json(&WorkerMessage::Heartbeat { running: running.keys().copied().collect() }),
                _ = shutdown.changed() => break,
            };
            // A failed send is not lost: the message stays in the outbox until acknowledged.
            connected = sink.send(Message::Text(text.into())).await.is_ok();
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
        ServerMessage::Welcome { .. } | ServerMessage::Ack { .. } | ServerMessage::Goodbye { .. } => {}
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
                let _ = out_tx.send(WorkerMessage::Finished { task, seq: 0, outcome });
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

#[cfg(test)]
mod tests {
    use super::*;
    use cloudbuild_proto::event::OutputStream;
    use cloudbuild_proto::worker::{Outcome, WorkerEvent};

    fn event(task: TaskAttempt, text: &str) -> WorkerMessage {
        WorkerMessage::Event {
            task,
            seq: 0,
            event: WorkerEvent::Output { stream: OutputStream::Stdout, text: text.into() },
        }
    }

    #[test]
    fn outbox_numbers_per_attempt_and_keeps_until_acknowledged() {
        let a = TaskAttempt { task_id: 1, attempt: 1 };
        let b = TaskAttempt { task_id: 2, attempt: 1 };
        let mut out = Outbox::default();
        for text in ["a1", "a2", "a3"] {
            out.number(event(a, text));
        }
        let first_b = out.number(event(b, "b1"));
        assert!(first_b.contains("\"seq\":1"), "each attempt counts from 1: {first_b}");
        out.ack(a, 2);
        let pending = out.unacknowledged();
        assert_eq!(pending.len(), 2, "a3 and b1 wait for their acks: {pending:?}");
        assert!(pending[0].contains("a3") && pending[0].contains("\"seq\":3"));
        let fin =
            out.number(WorkerMessage::Finished { task: a, seq: 0, outcome: Outcome::Succeeded { url: "u".into() } });
        assert!(fin.contains("\"seq\":4"), "the finish is numbered after the events: {fin}");
        out.ack(a, 4);
        assert!(!out.next.contains_key(&a), "a finished, acknowledged task is forgotten");
        out.forget(b);
        assert!(out.unacknowledged().is_empty());
        // Heartbeats are not numbered nor kept.
        out.number(WorkerMessage::Heartbeat { running: vec![a] });
        assert!(out.unacknowledged().is_empty());
    }
}
