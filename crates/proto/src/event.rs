//! The per-task event log and its exact wire form.
//!
//! An event is stored once, already rendered to its wire JSON, so that every follower (live,
//! late, reconnecting; SSE or WebSocket) receives exactly the same bytes. The stage events keep
//! the original protocol's envelope `{meta:{timestamp}, data:{action, payload:{message}}}`.

use serde::{Deserialize, Serialize};

use crate::task::{TaskId, TaskState};
use crate::time::Timestamp;

/// Which pipe a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// The kind of an event, which is also its SSE `event:` name. The names follow the original
/// socket.io events: `build` for stage messages, `building` for output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A stage message in the original envelope.
    Build,
    /// A chunk of command output.
    Building,
    /// The output cap was reached; later output of this task is not kept.
    Truncated,
    /// The task reached a terminal state; always the last event.
    End,
}

impl EventKind {
    /// The stored and SSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Build => "build",
            EventKind::Building => "building",
            EventKind::Truncated => "truncated",
            EventKind::End => "end",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "build" => EventKind::Build,
            "building" => EventKind::Building,
            "truncated" => EventKind::Truncated,
            "end" => EventKind::End,
            _ => return None,
        })
    }
}

/// An event before it has a sequence number.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    /// A stage message: `action` is a stage name, `<stage> failed`, or one of [`crate::task::actions`].
    Stage { action: String, message: String },
    /// Command output, decoded as UTF-8 (lossily).
    Output { stream: OutputStream, text: String },
    /// The output cap of `limit_bytes` was reached.
    Truncated { limit_bytes: u64 },
    /// The terminal state.
    End { state: TaskState, reason: Option<String>, url: Option<String> },
}

impl EventBody {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::Stage { .. } => EventKind::Build,
            EventBody::Output { .. } => EventKind::Building,
            EventBody::Truncated { .. } => EventKind::Truncated,
            EventBody::End { .. } => EventKind::End,
        }
    }

    /// Renders the event's JSON data once, at append time, with its sequence number and time.
    pub fn render(&self, task: TaskId, seq: u64, at: Timestamp) -> String {
        let ms = at.as_millis();
        let v = match self {
            EventBody::Stage { action, message } => serde_json::json!({
                "meta": { "timestamp": ms, "task": task, "seq": seq },
                "data": { "action": action, "payload": { "message": message } },
            }),
            // The bulk of every log: serialized straight from the text, without copying it into
            // a JSON value first. Same bytes as `json!` (its keys sorted).
            EventBody::Output { stream, text } => {
                #[derive(Serialize)]
                struct Output<'a> {
                    seq: u64,
                    stream: &'a OutputStream,
                    text: &'a str,
                    timestamp: i64,
                }
                return serde_json::to_string(&Output { seq, stream, text, timestamp: ms }).unwrap_or_default();
            }
            EventBody::Truncated { limit_bytes } => serde_json::json!({
                "seq": seq, "timestamp": ms, "limit_bytes": limit_bytes,
                "message": format!("output limit of {limit_bytes} bytes reached; further output of this task is not kept"),
            }),
            EventBody::End { state, reason, url } => serde_json::json!({
                "seq": seq, "timestamp": ms, "state": state, "reason": reason, "url": url,
            }),
        };
        v.to_string()
    }
}

/// An event as stored and sent: its number, kind and rendered JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    /// 1, 2, 3, ... within its task, without gaps.
    pub seq: u64,
    pub kind: EventKind,
    /// The rendered JSON data (see [`EventBody::render`]).
    pub data: String,
}

impl WireEvent {
    /// The SSE frame of this event. Its bytes depend only on the stored event.
    pub fn to_sse(&self) -> String {
        format!("id: {}\nevent: {}\ndata: {}\n\n", self.seq, self.kind.as_str(), self.data)
    }

    /// The WebSocket text message of this event: `{"seq":..,"event":..,"data":{..}}`.
    pub fn to_ws_text(&self) -> String {
        format!("{{\"seq\":{},\"event\":\"{}\",\"data\":{}}}", self.seq, self.kind.as_str(), self.data)
    }

    /// For `build` events: the action and message of the envelope.
    pub fn stage_message(&self) -> Option<(String, String)> {
        if self.kind != EventKind::Build {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&self.data).ok()?;
        let data = v.get("data")?;
        Some((
            data.get("action")?.as_str()?.to_owned(),
            data.pointer("/payload/message")?.as_str().unwrap_or_default().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_events_keep_the_original_envelope() {
        let body = EventBody::Stage { action: "install".into(), message: "installing".into() };
        let data = body.render(7, 3, Timestamp(1_700_000_000_123_000));
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["meta"]["timestamp"], 1_700_000_000_123i64);
        assert_eq!(v["data"]["action"], "install");
        assert_eq!(v["data"]["payload"]["message"], "installing");
        let ev = WireEvent { seq: 3, kind: body.kind(), data };
        assert!(ev.to_sse().starts_with("id: 3\nevent: build\ndata: {"));
        assert_eq!(ev.stage_message(), Some(("install".into(), "installing".into())));
    }

    #[test]
    fn output_events_render_as_they_always_did() {
        // Stored logs must read the same whatever renders them: the bytes of `json!`.
        let text = "a \"quoted\" line\n\ttab \u{1b}[31mred\u{1b}[0m é 中 \u{7f}\u{0}\\ end\r\n";
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let body = EventBody::Output { stream, text: text.into() };
            let at = Timestamp(1_700_000_000_123_000);
            let expected = serde_json::json!({ "seq": 9, "timestamp": at.as_millis(), "stream": stream, "text": text });
            assert_eq!(body.render(7, 9, at), expected.to_string());
        }
    }
}
