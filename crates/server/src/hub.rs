//! Wakes event followers when a task's log grows, on this server and on the others.
//!
//! The log itself lives in the store; the hub only carries "task N now ends at seq S" so that
//! followers re-read the store. Followers therefore always send stored bytes, whether live or
//! replayed, and a missed wake-up costs latency, never an event. With a shared store (Redis)
//! every announcement also goes to the other servers as a `Notice::Events`, and theirs arrive
//! through [`EventHub::remote`], so a follower on any server sees every task's events live.

use std::collections::HashMap;
use std::sync::Mutex;

use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::task::TaskId;
use cloudbuild_store::Notice;
use tokio::sync::{mpsc, watch};

/// Per-task "last seq" signals for live tasks.
#[derive(Debug, Default)]
pub struct EventHub {
    tasks: Mutex<HashMap<TaskId, watch::Sender<u64>>>,
    /// Announcements for the other servers (drained by `crate::cluster`); none for one server.
    outbox: Option<mpsc::UnboundedSender<Notice>>,
}

impl EventHub {
    /// A hub that also tells the other servers, through `outbox`.
    pub fn with_outbox(outbox: mpsc::UnboundedSender<Notice>) -> Self {
        EventHub { tasks: Mutex::default(), outbox: Some(outbox) }
    }

    /// Announces newly stored events. An `end` event closes the task's signal, which wakes every
    /// follower a last time.
    pub fn published(&self, task: TaskId, events: &[WireEvent]) {
        let Some(last) = events.last() else { return };
        let ended = events.iter().any(|e| e.kind == EventKind::End);
        self.wake(task, last.seq, ended);
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(Notice::Events { task, last_seq: last.seq, ended });
        }
    }

    /// Tells the other servers sharing the store (nothing happens on a single server).
    pub fn announce(&self, notice: Notice) {
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(notice);
        }
    }

    /// Another server stored events of `task` up to `last_seq`.
    pub fn remote(&self, task: TaskId, last_seq: u64, ended: bool) {
        self.wake(task, last_seq, ended);
    }

    fn wake(&self, task: TaskId, last_seq: u64, ended: bool) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if ended {
            if let Some(tx) = tasks.remove(&task) {
                tx.send_replace(last_seq);
            }
        } else {
            let tx = tasks.entry(task).or_insert_with(|| watch::channel(0).0);
            // Notices from several servers can arrive out of order; the signal only grows.
            tx.send_if_modified(|seq| {
                let grew = last_seq > *seq;
                *seq = (*seq).max(last_seq);
                grew
            });
        }
    }

    /// A receiver that changes when the task's log grows; `None` once the task has ended or
    /// before its first event was announced (the follower then relies on what the store has).
    pub fn subscribe(&self, task: TaskId) -> Option<watch::Receiver<u64>> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.get(&task).map(watch::Sender::subscribe)
    }
}
