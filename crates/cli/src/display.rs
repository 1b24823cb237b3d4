//! How events look in a terminal: stage progress, output, the final verdict.

use std::io::{IsTerminal, Write};

use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::task::Stage;

/// Renders events for humans (colours on a terminal) or as JSON lines.
pub(crate) struct Display {
    color: bool,
    json: bool,
    /// The final `end` event's data, once seen.
    pub(crate) end: Option<serde_json::Value>,
}

impl Display {
    pub(crate) fn new(json: bool) -> Self {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Display { color, json, end: None }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    /// Prints one event.
    pub(crate) fn show(&mut self, ev: &WireEvent) {
        let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
        if ev.kind == EventKind::End {
            self.end = Some(data.clone());
        }
        let mut out = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(out, "{}", ev.to_ws_text());
            return;
        }
        match ev.kind {
            EventKind::Build => {
                let (action, message) = ev.stage_message().unwrap_or_default();
                let progress = Stage::from_action(&action)
                    .map(|s| {
                        format!("[{}/{}] ", Stage::ALL.iter().position(|x| *x == s).unwrap_or(0) + 1, Stage::ALL.len())
                    })
                    .unwrap_or_default();
                let code = if action.ends_with("failed")
                    || action == "error"
                    || action == "timed out"
                    || action == "cancelled"
                {
                    "1;31"
                } else if action == "build success" {
                    "1;32"
                } else {
                    "1;36"
                };
                let head = self.paint(code, &format!("{progress}{action}"));
                let _ = writeln!(out, "==> {head}: {}", sanitize(&message));
            }
            EventKind::Building => {
                let text = data.get("text").and_then(|t| t.as_str()).unwrap_or_default();
                let _ = write!(out, "{}", sanitize(text));
            }
            EventKind::Truncated => {
                let msg = data.get("message").and_then(|t| t.as_str()).unwrap_or("output truncated");
                let _ = writeln!(out, "{}", self.paint("1;33", &format!("!!! {msg}")));
            }
            EventKind::End => {}
        }
        let _ = out.flush();
    }
}

/// Makes build output safe for a terminal: keeps newlines and tabs, shows every other control
/// character (escape sequences, `\r` overwrites, bells) as a visible escape, so a build cannot
/// clear the screen, retitle the window or forge lines.
pub(crate) fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn control_sequences_are_made_visible() {
        assert_eq!(
            sanitize("ok\n\x1b[2J\x1b]0;pwned\x07\rBUILD SUCCESS"),
            "ok\n\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\rBUILD SUCCESS"
        );
    }
}
