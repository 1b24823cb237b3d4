//! Event following: a task's stored event log, from any event on, optionally live.
//!
//! Every follower (SSE, WebSocket, JSON, socket.io) reads what the store holds, in order, from
//! `after + 1`; live following just waits for the hub to say the log grew and reads the store
//! again. So a follower that connects late, or reconnects with `after=<last seq seen>`,
//! receives exactly the bytes a follower from the start received.

use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::task::TaskId;
use cloudbuild_store::StoreError;
use tokio::sync::mpsc;

use crate::state::AppState;

/// Events read from the store at a time.
const PAGE: u32 = 500;

/// Up to `limit` stored events of a task after event `after`, for readers that do not follow.
pub async fn stored(state: &AppState, task: TaskId, after: u64, limit: u32) -> Result<Vec<WireEvent>, StoreError> {
    state.store.events_after(task, after, limit).await
}

/// Streams stored events into `tx` from `after`, following the live log when `follow`.
/// Returns when the `end` event was sent, when not following and the log is exhausted, when the
/// receiver is gone, or at server shutdown.
pub async fn pump(state: Arc<AppState>, task: TaskId, mut after: u64, follow: bool, tx: mpsc::Sender<WireEvent>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        // Subscribe before reading, so growth between the read and the wait is not missed.
        let mut signal = state.hub.subscribe(task);
        let events = match state.store.events_after(task, after, PAGE).await {
            Ok(ev) => ev,
            // The store is down for a moment (Redis restarting): keep the stream, try again.
            Err(e @ StoreError::Unavailable { .. }) => {
                tracing::warn!(task, "event follower waits for the store: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.changed() => return,
                    _ = tx.closed() => return,
                }
            }
            Err(e) => return tracing::error!(task, "event follower: {e}"),
        };
        let n = events.len();
        for ev in events {
            after = ev.seq;
            let is_end = ev.kind == EventKind::End;
            if tx.send(ev).await.is_err() || is_end {
                return;
            }
        }
        if n == PAGE as usize {
            continue;
        }
        if !follow {
            return;
        }
        tokio::select! {
            _ = async {
                match signal.as_mut() {
                    // The timeout re-reads the store even if a wake-up from another server
                    // was lost (its notices are not stored).
                    Some(rx) => { let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await; }
                    // No live signal: the task ended or has not announced yet; re-read soon.
                    None => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            } => {}
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
        }
    }
}
