//! Wakes event followers when a task's log grows, on this server and on the others, and holds
//! the shared [`Feed`] of each followed task.
//!
//! The log itself lives in the store; the hub carries "task N now ends at seq S". A followed
//! task has one feed on this server: its stored events in memory, shared by every follower
//! (SSE, WebSocket, socket.io), taken as this server stores them and read from the store
//! (by one reader, `domain::follow`) for what it did not see. Followers therefore always send
//! stored events, whether live or replayed, and a missed wake-up costs latency, never an
//! event. With a shared store (Redis) every announcement also goes to the other servers as a
//! `Notice::Events`, and theirs arrive through [`EventHub::remote`], so a follower on any
//! server sees every task's events live.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::task::TaskId;
use cloudbuild_store::Notice;
use tokio::sync::{mpsc, watch};

/// Per-task "last seq" signals for live tasks.
#[derive(Debug, Default)]
pub struct EventHub {
    tasks: Mutex<Signals>,
    /// The feeds of followed tasks; gone when their last follower is.
    feeds: Mutex<HashMap<TaskId, Weak<Feed>>>,
    /// Announcements for the other servers (drained by `crate::cluster`); none for one server.
    outbox: Option<mpsc::UnboundedSender<Notice>>,
}

/// The live tasks' signals, and the tasks that ended lately: a wake-up that arrives after its
/// task's end (out of order, from another server) must not make the signal again, which nothing
/// would ever remove.
#[derive(Debug, Default)]
struct Signals {
    live: HashMap<TaskId, watch::Sender<u64>>,
    ended: HashSet<TaskId>,
    ended_order: VecDeque<TaskId>,
}

/// How many ended tasks are remembered (late wake-ups come within seconds of the end).
const ENDED_REMEMBERED: usize = 4096;

impl EventHub {
    /// A hub that also tells the other servers, through `outbox`.
    pub fn with_outbox(outbox: mpsc::UnboundedSender<Notice>) -> Self {
        EventHub { tasks: Mutex::default(), feeds: Mutex::default(), outbox: Some(outbox) }
    }

    /// Announces newly stored events. An `end` event closes the task's signal, which wakes every
    /// follower a last time.
    pub fn published(&self, task: TaskId, events: &[WireEvent]) {
        let Some(last) = events.last() else { return };
        // The feed first: a reader woken next finds the events there, not only in the store.
        if let Some(feed) = self.followed(task) {
            feed.extend(events.iter().cloned());
        }
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
        let mut signals = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if ended {
            if let Some(tx) = signals.live.remove(&task) {
                tx.send_replace(last_seq);
            }
            if signals.ended.insert(task) {
                signals.ended_order.push_back(task);
                if signals.ended_order.len() > ENDED_REMEMBERED {
                    if let Some(oldest) = signals.ended_order.pop_front() {
                        signals.ended.remove(&oldest);
                    }
                }
            }
        } else if !signals.ended.contains(&task) {
            let tx = signals.live.entry(task).or_insert_with(|| watch::channel(0).0);
            // Notices from several servers can arrive out of order; the signal only grows.
            tx.send_if_modified(|seq| {
                let grew = last_seq > *seq;
                *seq = (*seq).max(last_seq);
                grew
            });
        }
    }

    /// The feed of a followed task, if anyone follows it on this server.
    fn followed(&self, task: TaskId) -> Option<Arc<Feed>> {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner()).get(&task).and_then(Weak::upgrade)
    }

    /// The task's feed, and whether it was just made (then its caller starts its reader).
    pub fn feed(&self, task: TaskId) -> (Arc<Feed>, bool) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feeds.get(&task).and_then(Weak::upgrade) {
            return (feed, false);
        }
        // Forget the feeds nobody follows any more.
        feeds.retain(|_, f| f.strong_count() > 0);
        let feed = Arc::new(Feed::default());
        feeds.insert(task, Arc::downgrade(&feed));
        (feed, true)
    }

    /// Forgets `feed` as the task's feed (it failed), so that the next follower makes another.
    pub fn forget_feed(&self, task: TaskId, feed: &Arc<Feed>) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if feeds.get(&task).and_then(Weak::upgrade).is_some_and(|f| Arc::ptr_eq(&f, feed)) {
            feeds.remove(&task);
        }
    }

    /// A receiver that changes when the task's log grows; `None` once the task has ended or
    /// before its first event was announced (the follower then relies on what the store has).
    pub fn subscribe(&self, task: TaskId) -> Option<watch::Receiver<u64>> {
        let signals = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        signals.live.get(&task).map(watch::Sender::subscribe)
    }
}

/// A stored event as followers share it, with the renderings they send made once.
#[derive(Debug)]
pub struct SharedEvent {
    pub event: WireEvent,
    sse: OnceLock<Bytes>,
    ws: OnceLock<Bytes>,
    literal: OnceLock<Option<(usize, usize)>>,
    raw: OnceLock<Option<Box<serde_json::value::RawValue>>>,
}

impl From<WireEvent> for SharedEvent {
    fn from(event: WireEvent) -> Self {
        SharedEvent { event, sse: OnceLock::new(), ws: OnceLock::new(), literal: OnceLock::new(), raw: OnceLock::new() }
    }
}

impl SharedEvent {
    /// The SSE frame ([`WireEvent::to_sse`]).
    pub fn sse(&self) -> Bytes {
        self.sse.get_or_init(|| Bytes::from(self.event.to_sse())).clone()
    }

    /// The WebSocket text message ([`WireEvent::to_ws_text`]), UTF-8.
    pub fn ws_text(&self) -> Bytes {
        self.ws.get_or_init(|| Bytes::from(self.event.to_ws_text())).clone()
    }

    /// For an output event its `text`, for a truncation its `message`: the JSON string literal
    /// as stored (quotes and escapes included, nothing decoded), so that a follower can pass it
    /// on without parsing and re-escaping it. `None` for other events.
    pub fn text_literal(&self) -> Option<&str> {
        let range = self.literal.get_or_init(|| {
            #[derive(serde::Deserialize)]
            struct Fields<'a> {
                #[serde(borrow)]
                text: Option<&'a serde_json::value::RawValue>,
                #[serde(borrow)]
                message: Option<&'a serde_json::value::RawValue>,
            }
            if !matches!(self.event.kind, EventKind::Building | EventKind::Truncated) {
                return None;
            }
            let fields: Fields<'_> = serde_json::from_str(&self.event.data).ok()?;
            let field = if self.event.kind == EventKind::Building { fields.text } else { fields.message };
            let raw = field?.get();
            raw.starts_with('"').then(|| {
                let start = raw.as_ptr() as usize - self.event.data.as_ptr() as usize;
                (start, start + raw.len())
            })
        });
        range.map(|(start, end)| &self.event.data[start..end])
    }

    /// [`Self::text_literal`] as a JSON value, made once: what a socket.io `building` message
    /// carries, serialized without escaping it again.
    pub fn text_raw(&self) -> Option<&serde_json::value::RawValue> {
        let raw =
            self.raw.get_or_init(|| serde_json::value::RawValue::from_string(self.text_literal()?.to_owned()).ok());
        raw.as_deref()
    }
}

/// A followed task's stored events, from the first on, in memory while anyone follows it on
/// this server: one copy however many follow, bounded by the task's output limit.
#[derive(Debug, Default)]
pub struct Feed {
    log: Mutex<FeedLog>,
    /// How many events the feed holds; changed as it grows or ends.
    grown: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct FeedLog {
    /// Events 1..=n, in order, without gaps.
    events: Vec<Arc<SharedEvent>>,
    /// The `end` event is held, or the log cannot be read any further (the store failed).
    closed: bool,
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the events that continue the log (each one the next number); others are
    /// ignored (already held, or after a gap that the feed's reader fills from the store).
    pub fn extend(&self, events: impl IntoIterator<Item = WireEvent>) {
        let mut log = self.lock();
        let before = log.events.len();
        for event in events {
            if log.closed || event.seq != log.events.len() as u64 + 1 {
                continue;
            }
            log.closed = event.kind == EventKind::End;
            log.events.push(Arc::new(SharedEvent::from(event)));
        }
        let (len, grew) = (log.events.len(), log.events.len() > before);
        drop(log);
        if grew {
            self.grown.send_replace(len);
        }
    }

    /// Ends the feed where it is: its log cannot be read further. Followers stop there.
    pub fn close(&self) {
        let mut log = self.lock();
        log.closed = true;
        let len = log.events.len();
        drop(log);
        self.grown.send_replace(len);
    }

    /// The number of the last event held (0: none yet).
    pub fn held(&self) -> u64 {
        self.lock().events.len() as u64
    }

    /// Whether the feed holds the `end` event (or was closed).
    pub fn closed(&self) -> bool {
        self.lock().closed
    }

    /// Up to `max` events after event `after`, and whether the feed is closed.
    pub fn read(&self, after: u64, max: usize) -> (Vec<Arc<SharedEvent>>, bool) {
        let log = self.lock();
        let from = (after as usize).min(log.events.len());
        let to = from.saturating_add(max).min(log.events.len());
        (log.events[from..to].to_vec(), log.closed)
    }

    /// A receiver that changes when the feed grows or closes.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.grown.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_after_the_end_does_not_bring_the_signal_back() {
        let hub = EventHub::default();
        hub.remote(7, 3, false);
        assert!(hub.subscribe(7).is_some());
        hub.remote(7, 9, true);
        assert!(hub.subscribe(7).is_none(), "the end removes the signal");
        hub.remote(7, 6, false);
        assert!(hub.subscribe(7).is_none(), "a late wake-up of an ended task is ignored");
    }
}
