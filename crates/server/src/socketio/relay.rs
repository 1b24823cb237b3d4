//! The relay of a task's log onto one socket.io client: the original `build` / `building`
//! messages from the task's shared feed, waiting for room while the client reads slowly, until
//! the task's end, when the client is disconnected.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::task::{actions, Stage, TaskId};
use serde_json::value::RawValue;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};

use super::{Attached, Attachments, STALL_LIMIT};
use crate::hub::SharedEvent;
use crate::state::AppState;

/// Events taken from a task's log at a time.
const READ_BATCH: usize = 256;

/// Small output events already waiting are joined into one `building` message up to this many
/// bytes (fewer packets per poll); a larger event is sent as it is stored, its payload made
/// once for all followers.
const COALESCE_BYTES: usize = 16 * 1024;

/// Replays the task's log after event `from` onto the socket until the end, then disconnects.
/// Stops early (the build goes on) if the client goes away, stalls past [`STALL_LIMIT`], or
/// another socket with the same query takes the build over.
pub(super) async fn relay(
    state: Arc<AppState>,
    attached: Arc<Attachments>,
    s: SocketRef,
    task: TaskId,
    mut follower: crate::domain::follow::Follower,
    from: u64,
    key: Option<String>,
) {
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(from));
    let me = Attached { task, delivered: delivered.clone(), stop: stop_tx };
    // A follower of an existing task (`?task=`) is not re-attached to: nothing is registered.
    let _unregistered = match &key {
        Some(key) => {
            attached.lock().insert(key.clone(), me);
            None
        }
        None => Some(me),
    };
    let mut waiting: VecDeque<Arc<SharedEvent>> = VecDeque::new();
    let ended = loop {
        let ev = match waiting.pop_front() {
            Some(ev) => ev,
            None => tokio::select! {
                events = follower.next(READ_BATCH) => match events {
                    Some(events) => { waiting.extend(events); continue }
                    None => break false,
                },
                _ = stop.changed() => break false,
            },
        };
        let mut last = ev.event.seq;
        let sent = match ev.event.kind {
            EventKind::Build => emit_waiting(&s, "build", &original_build_message(&ev.event), &mut stop).await,
            EventKind::Building | EventKind::Truncated => {
                // Everything already waiting goes in one message: fewer packets per poll.
                let mut text = Output::new(ev);
                while text.len() < COALESCE_BYTES {
                    if waiting.is_empty() {
                        waiting.extend(follower.ready(READ_BATCH));
                    }
                    match waiting.front() {
                        Some(next) if matches!(next.event.kind, EventKind::Building | EventKind::Truncated) => {
                            text.push(next);
                            last = next.event.seq;
                            waiting.pop_front();
                        }
                        _ => break,
                    }
                }
                match text.payload() {
                    Some(Payload::Shared(ev)) => match ev.text_raw() {
                        Some(raw) => emit_waiting(&s, "building", raw, &mut stop).await,
                        None => false,
                    },
                    Some(Payload::Joined(raw)) => emit_waiting(&s, "building", &*raw, &mut stop).await,
                    None => false,
                }
            }
            EventKind::End => break true,
        };
        if !sent {
            break false;
        }
        delivered.store(last, Ordering::Release);
    };
    let Some(key) = key else {
        if ended {
            disconnect_waiting(&s, &mut stop).await;
        } else {
            let _ = s.disconnect();
        }
        return;
    };
    let replaced = !is_mine(&attached, &key, &delivered);
    if ended {
        // Before forgetting the build: that drops the stop signal the wait listens to.
        disconnect_waiting(&s, &mut stop).await;
        forget_if_mine(&attached, &key, &delivered);
        return;
    }
    if !replaced {
        tracing::debug!(task, "socket.io client gone or stalled; the build continues");
        // Kept while the build runs, so the client can come back to it; forgotten at its end.
        let state = state.clone();
        tokio::spawn(async move {
            while state.store.get_task(task).await.is_ok_and(|t| !t.state.is_terminal()) {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            forget_if_mine(&attached, &key, &delivered);
        });
    }
    let _ = s.disconnect();
}

/// Whether this relay (known by its `delivered` counter) still follows the build of `key`,
/// that is, no other socket has taken it over since.
fn is_mine(attached: &Attachments, key: &str, delivered: &Arc<AtomicU64>) -> bool {
    attached.lock().get(key).is_some_and(|a| Arc::ptr_eq(&a.delivered, delivered))
}

/// Forgets a followed build unless another socket has taken it over since.
fn forget_if_mine(attached: &Attachments, key: &str, delivered: &Arc<AtomicU64>) {
    let mut builds = attached.lock();
    if builds.get(key).is_some_and(|a| Arc::ptr_eq(&a.delivered, delivered)) {
        builds.remove(key);
    }
}

/// The output and truncation events of one `building` message: one event's stored text as it
/// is, or several joined as JSON string contents (the stored escapes, never decoded and
/// escaped again).
struct Output {
    first: Arc<SharedEvent>,
    joined: Option<String>,
}

/// A `building` message's payload, one JSON string.
enum Payload {
    /// One event's text, made once for every follower ([`SharedEvent::text_raw`]).
    Shared(Arc<SharedEvent>),
    Joined(Box<RawValue>),
}

impl Output {
    fn new(first: Arc<SharedEvent>) -> Self {
        Output { first, joined: None }
    }

    fn push(&mut self, ev: &SharedEvent) {
        let joined = self.joined.get_or_insert_with(|| contents(&self.first));
        joined.push_str(&contents(ev));
    }

    fn len(&self) -> usize {
        self.joined.as_ref().map_or_else(|| self.first.text_literal().map_or(0, str::len), String::len)
    }

    fn payload(self) -> Option<Payload> {
        match self.joined {
            None => Some(Payload::Shared(self.first)),
            Some(joined) => RawValue::from_string(format!("\"{joined}\"")).ok().map(Payload::Joined),
        }
    }
}

/// The text of an output or truncation event as JSON string contents (without the quotes).
fn contents(ev: &SharedEvent) -> String {
    match ev.text_literal() {
        Some(literal) => literal[1..literal.len() - 1].to_owned(),
        // Not what the server stores; re-read the slow way rather than lose it.
        None => {
            let data: Value = serde_json::from_str(&ev.event.data).unwrap_or_default();
            let field = if ev.event.kind == EventKind::Truncated { "message" } else { "text" };
            let quoted =
                serde_json::to_string(data.get(field).and_then(Value::as_str).unwrap_or_default()).unwrap_or_default();
            quoted[1..quoted.len() - 1].to_owned()
        }
    }
}

/// Emits, waiting for room while the socket's buffer is full. False when the client is gone,
/// made no room for [`STALL_LIMIT`], or the relay was told to stop.
async fn emit_waiting<T: serde::Serialize + ?Sized>(
    s: &SocketRef,
    event: &str,
    data: &T,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    with_room(s, stop, || match s.emit(event, data) {
        Ok(()) => Room::Sent,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Room::Full,
        Err(_) => Room::Gone,
    })
    .await
}

/// Disconnects the client at the end of its build. The disconnect packet queues behind what
/// the client has not read yet, and socketioxide drops the whole disconnect when the buffer is
/// full: without waiting, a slow client would get the result and then hang.
async fn disconnect_waiting(s: &SocketRef, stop: &mut tokio::sync::watch::Receiver<bool>) {
    with_room(s, stop, || match s.clone().disconnect() {
        Ok(()) => Room::Sent,
        Err(SocketError::InternalChannelFull) => Room::Full,
        Err(_) => Room::Gone,
    })
    .await;
}

/// What one try to queue a packet on a socket did.
enum Room {
    Sent,
    Full,
    Gone,
}

/// Tries `send` until it is queued, waiting (1 ms, doubling up to 50 ms) while the socket's
/// buffer is full. False when the client is gone, made no room for [`STALL_LIMIT`], or the
/// relay was told to stop.
async fn with_room(
    s: &SocketRef,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    mut send: impl FnMut() -> Room,
) -> bool {
    let deadline = tokio::time::Instant::now() + STALL_LIMIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match send() {
            Room::Sent => return true,
            Room::Gone => return false,
            Room::Full => {
                if !s.connected() || tokio::time::Instant::now() > deadline || *stop.borrow() {
                    return false;
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return false,
                }
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// A stored `build` event as the original clients know it: checks are reported under the
/// `build` action names (they know no `check` action), and endings they do not know become
/// `error`, which is in their failure list.
fn original_build_message(ev: &WireEvent) -> Value {
    let mut v: Value = serde_json::from_str(&ev.data).unwrap_or_default();
    let action = v.pointer("/data/action").and_then(Value::as_str).unwrap_or_default().to_owned();
    let message = v.pointer("/data/payload/message").and_then(Value::as_str).unwrap_or_default().to_owned();
    let check = Stage::Check;
    let (action, message) = if action == check.action() {
        (Stage::Build.action().to_owned(), format!("check: {message}"))
    } else if action == check.failed_action() {
        (Stage::Build.failed_action().to_owned(), format!("check: {message}"))
    } else if action == actions::CANCELLED || action == actions::TIMED_OUT {
        (actions::ERROR.to_owned(), format!("{action}: {message}"))
    } else {
        (action, message)
    };
    v["data"]["action"] = Value::String(action);
    v["data"]["payload"]["message"] = Value::String(message);
    v
}

#[cfg(test)]
mod tests {
    use cloudbuild_proto::event::EventBody;
    use cloudbuild_proto::time::Timestamp;

    use super::*;

    fn stored(action: &str, message: &str) -> WireEvent {
        let body = EventBody::Stage { action: action.into(), message: message.into() };
        WireEvent { seq: 4, kind: EventKind::Build, data: body.render(1, 4, Timestamp(0)) }
    }

    #[test]
    fn checks_and_unknown_endings_use_original_action_names() {
        let cases = [
            ("check", "running pre-release checks", "build", "check: running pre-release checks"),
            ("check failed", "check `lint` failed", "build failed", "check: check `lint` failed"),
            ("timed out", "task timeout", "error", "timed out: task timeout"),
            ("download failed", "no branch", "download failed", "no branch"),
        ];
        for (action, message, want_action, want_message) in cases {
            let v = original_build_message(&stored(action, message));
            assert_eq!(v["data"]["action"], want_action);
            assert_eq!(v["data"]["payload"]["message"], want_message);
            assert_eq!(v["meta"]["timestamp"], 0);
        }
    }
}
