//! Several servers on one store: sends this server's notices to the others and acts on theirs.
//!
//! Notices are wake-ups, never state: events are in the store, and everything a notice
//! triggers also happens without it, only later (followers re-read the store every two
//! seconds, the scheduler ticks every second and re-sends pending cancels). So a notice lost
//! while Redis restarts costs latency, not correctness.

use std::sync::Arc;

use cloudbuild_proto::worker::TaskAttempt;
use cloudbuild_store::Notice;
use tokio::sync::mpsc;

use crate::state::AppState;

/// Runs until shutdown: drains `outbox` into the store's channel and handles incoming notices.
pub async fn run(state: Arc<AppState>, mut outbox: mpsc::UnboundedReceiver<Notice>) {
    let Some(mut incoming) = state.store.notices() else { return };
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            Some(notice) = outbox.recv() => {
                if let Err(e) = state.store.announce(notice).await {
                    tracing::debug!("cannot tell the other servers: {e}");
                }
            }
            received = incoming.recv() => match received {
                Ok(notice) => handle(&state, notice),
                // Fell behind: wake everything that could be waiting.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => state.scheduler.task_queued(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

fn handle(state: &AppState, notice: Notice) {
    match notice {
        Notice::Events { task, last_seq, ended } => state.hub.remote(task, last_seq, ended),
        Notice::Queued => state.scheduler.task_queued(),
        Notice::Cancel { task, attempt, worker } => {
            if state.scheduler.is_connected(&worker) {
                state.scheduler.cancel(Some(&worker), TaskAttempt { task_id: task, attempt });
            }
        }
        Notice::TokenRevoked { name } => state.scheduler.revoke(&name),
    }
}
