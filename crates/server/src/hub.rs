//! Wakes event followers when a task's log grows.
//!
//! The log itself lives in the store; the hub only carries "task N now ends at seq S" so that
//! followers re-read the store. Followers therefore always send stored bytes, whether live or
//! replayed, and a missed wake-up costs latency, never an event.

use std::collections::HashMap;
use std::sync::Mutex;

use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::task::TaskId;
use tokio::sync::watch;

/// Per-task "last seq" signals for live tasks.
#[derive(Debug, Default)]
pub struct EventHub {
    tasks: Mutex<HashMap<TaskId, watch::Sender<u64>>>,
}

impl EventHub {
    /// Announces newly stored events. An `end` event closes the task's signal, which wakes every
    /// follower a last time.
    pub fn published(&self, task: TaskId, events: &[WireEvent]) {
        let Some(last) = events.last() else { return };
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if events.iter().any(|e| e.kind == EventKind::End) {
            if let Some(tx) = tasks.remove(&task) {
                tx.send_replace(last.seq);
            }
        } else {
            tasks.entry(task).or_insert_with(|| watch::channel(0).0).send_replace(last.seq);
        }
    }

    /// A receiver that changes when the task's log grows; `None` once the task has ended or
    /// before its first event was announced (the follower then relies on what the store has).
    pub fn subscribe(&self, task: TaskId) -> Option<watch::Receiver<u64>> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.get(&task).map(watch::Sender::subscribe)
    }
}
