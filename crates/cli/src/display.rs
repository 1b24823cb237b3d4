//! How events look in a terminal: stage progress with each stage's duration, build output,
//! the final verdict; a spinner with the running stage's elapsed time on a terminal, and a
//! line when the build has been quiet for a while.

use crate::i18n::tr;
use std::time::{Duration, Instant};

use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::task::Stage;

use crate::output::{mark_imitations, sanitize, split_cut_escape, stderr_colors, stdout_colors};

/// After this long without output, a line says the stage still runs (then every minute).
pub(crate) const QUIET: Duration = Duration::from_secs(20);

/// Renders events for humans (colours on a terminal) or as JSON lines.
pub(crate) struct Display {
    color: bool,
    json: bool,
    /// The final `end` event's data, once seen.
    pub(crate) end: Option<serde_json::Value>,
    /// The running stage's action and start time (event timestamp, ms).
    stage: Option<(String, i64)>,
    /// When something was last shown, and when the last quiet notice was.
    last_shown: Instant,
    quiet_said: Option<Instant>,
    /// The spinner on a terminal (stderr), with the running stage and its elapsed time.
    spinner: Option<indicatif::ProgressBar>,
    /// An escape sequence cut at the end of the last output chunk, per stream.
    cut: [String; 2],
    /// Whether build output passed colours that may still be on (reset before our own lines).
    colored: bool,
    /// Whether each stream's output is at the start of a line.
    line_start: [bool; 2],
}

impl Display {
    pub(crate) fn new(json: bool) -> Self {
        let spinner = (!json && stderr_colors()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Display {
            color: stdout_colors(),
            json,
            end: None,
            stage: None,
            last_shown: Instant::now(),
            quiet_said: None,
            spinner,
            cut: Default::default(),
            colored: false,
            line_start: [true; 2],
        }
    }

    /// Stops the spinner and resets colours: call before printing anything else (the verdict,
    /// a prompt).
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.spinner.take() {
            bar.finish_and_clear();
        }
        if std::mem::take(&mut self.colored) {
            crate::output::write(format_args!("\x1b[0m"));
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    /// Prints one event (above the spinner, if any).
    pub(crate) fn show(&mut self, ev: &WireEvent) {
        let text = self.render(ev);
        self.last_shown = Instant::now();
        self.quiet_said = None;
        match &self.spinner {
            Some(bar) => bar.suspend(|| crate::output::write(format_args!("{text}"))),
            None => crate::output::write(format_args!("{text}")),
        }
        if ev.kind == EventKind::End {
            self.finish();
        } else if let (Some(bar), EventKind::Build) = (&self.spinner, ev.kind) {
            // The running stage, timed from its start; between stages, no stale name or time.
            let running = self.stage.as_ref().map_or("…", |(action, _)| action.as_str());
            bar.set_message(running.to_owned());
            bar.reset_elapsed();
        }
    }

    /// Called every second or so: says once per quiet period that the running stage has
    /// printed nothing for [`QUIET`] (then every minute), so a long `npm ci` is not mistaken
    /// for a hang.
    pub(crate) fn tick(&mut self, now: Instant) {
        let Some(line) = self.quiet_line(now) else { return };
        match &self.spinner {
            Some(bar) => bar.suspend(|| crate::output::write(format_args!("{line}"))),
            None => crate::output::write(format_args!("{line}")),
        }
    }

    fn quiet_line(&mut self, now: Instant) -> Option<String> {
        let (action, _) = self.stage.as_ref().filter(|_| !self.json && self.end.is_none())?;
        let quiet = now.saturating_duration_since(self.last_shown);
        let due = match self.quiet_said {
            None => quiet >= QUIET,
            Some(said) => now.saturating_duration_since(said) >= Duration::from_secs(60),
        };
        if !due {
            return None;
        }
        self.quiet_said = Some(now);
        let said = tr!("still-running", stage = action, seconds = quiet.as_secs());
        Some(self.paint("2", &format!("    {said}\n")))
    }

    /// The text of one event.
    fn render(&mut self, ev: &WireEvent) -> String {
        let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
        if ev.kind == EventKind::End {
            self.end = Some(data.clone());
        }
        if self.json {
            return format!("{}\n", ev.to_ws_text());
        }
        // Our own lines start with colours off, whatever the build left on.
        let reset = if ev.kind != EventKind::Building && std::mem::take(&mut self.colored) { "\x1b[0m" } else { "" };
        reset.to_owned() + &self.render_body(ev, &data)
    }

    fn render_body(&mut self, ev: &WireEvent, data: &serde_json::Value) -> String {
        match ev.kind {
            EventKind::Build => {
                let (action, message) = ev.stage_message().unwrap_or_default();
                let at = data["meta"]["timestamp"].as_i64().unwrap_or_default();
                let stage = Stage::from_action(action.trim_end_matches(" failed"));
                // The same action again ends the stage (start and success carry the same
                // action, as in the original protocol); so does a failure or the verdict.
                let took = match &self.stage {
                    Some((running, since)) if *running == action || stage.is_none() || action.ends_with(" failed") => {
                        Some(format!(" ({})", seconds(at - since)))
                    }
                    _ => None,
                };
                if stage.is_some() && took.is_none() {
                    self.stage = Some((action.clone(), at));
                } else if took.is_some() {
                    self.stage = None;
                }
                let progress = stage
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
                let took = took.map(|t| self.paint("2", &t)).unwrap_or_default();
                format!("==> {head}: {}{took}\n", sanitize(&message, false))
            }
            EventKind::Building => {
                let text = data.get("text").and_then(|t| t.as_str()).unwrap_or_default();
                let stream = usize::from(data["stream"] == "stderr");
                let whole = std::mem::take(&mut self.cut[stream]) + text;
                let (now, later) = split_cut_escape(&whole);
                self.cut[stream] = later.to_owned();
                let (marked, at_start) = mark_imitations(now, self.line_start[stream]);
                self.line_start[stream] = at_start;
                let shown = sanitize(&marked, self.color);
                self.colored |= self.color && shown.contains('\x1b');
                shown
            }
            EventKind::Truncated => {
                let msg =
                    data.get("message").and_then(|t| t.as_str()).map_or_else(|| tr!("output-truncated"), str::to_owned);
                format!("{}\n", self.paint("1;33", &format!("!!! {msg}")))
            }
            EventKind::End => String::new(),
        }
    }
}

/// A time to the second, marked as UTC (`2026-11-30T14:16:25Z`): listings show times of
/// servers and workers in other zones, so they say which zone they are in.
pub(crate) fn utc(t: cloudbuild_proto::time::Timestamp) -> String {
    let full = t.to_string();
    match full.get(..19) {
        Some(seconds) if full.ends_with('Z') => format!("{seconds}Z"),
        _ => full,
    }
}

/// A duration in milliseconds as seconds with one decimal (`19.2 s`), or minutes past 100 s.
pub(crate) fn seconds(ms: i64) -> String {
    let ms = ms.max(0);
    if ms >= 100_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudbuild_proto::event::EventBody;

    fn stage(seq: u64, action: &str, message: &str, at_ms: i64) -> WireEvent {
        let body = EventBody::Stage { action: action.into(), message: message.into() };
        let mut data: serde_json::Value =
            serde_json::from_str(&body.render(1, seq, cloudbuild_proto::time::Timestamp(0))).unwrap();
        data["meta"]["timestamp"] = at_ms.into();
        WireEvent { seq, kind: body.kind(), data: data.to_string() }
    }

    fn plain() -> Display {
        Display {
            color: false,
            json: false,
            end: None,
            stage: None,
            last_shown: Instant::now(),
            quiet_said: None,
            spinner: None,
            cut: Default::default(),
            colored: false,
            line_start: [true; 2],
        }
    }

    fn output(seq: u64, text: &str) -> WireEvent {
        let body = EventBody::Output { stream: cloudbuild_proto::event::OutputStream::Stdout, text: text.into() };
        let data = body.render(1, seq, cloudbuild_proto::time::Timestamp(0));
        WireEvent { seq, kind: body.kind(), data }
    }

    #[test]
    fn colours_cut_between_chunks_arrive_whole_and_are_reset_before_our_lines() {
        let mut d = plain();
        d.color = true;
        let first = d.render(&output(1, "\x1b[32mbuilt \x1b[3"));
        let second = d.render(&output(2, "6mdone\n"));
        assert_eq!(first + &second, "\x1b[32mbuilt \x1b[36mdone\n");
        let line = d.render(&stage(3, "build", "`npm run build` succeeded", 0));
        assert!(line.starts_with("\x1b[0m==> "), "{line:?}");
    }

    #[test]
    fn the_counter_follows_the_stages_and_each_end_says_how_long_it_took() {
        let mut d = plain();
        let lines: Vec<String> = [
            stage(1, "install", "installing", 1_000),
            stage(2, "install", "installed", 20_200),
            stage(3, "check", "skipped: the project has no checks", 20_300),
            stage(4, "build", "building", 20_300),
            stage(5, "build failed", "exit 1", 23_800),
        ]
        .iter()
        .map(|e| d.render(e))
        .collect();
        assert_eq!(lines[0], "==> [3/7] install: installing\n");
        assert_eq!(lines[1], "==> [3/7] install: installed (19.2 s)\n");
        assert_eq!(lines[2], "==> [4/7] check: skipped: the project has no checks\n");
        assert_eq!(lines[3], "==> [5/7] build: building\n");
        assert_eq!(lines[4], "==> [5/7] build failed: exit 1 (3.5 s)\n");
    }

    #[test]
    fn a_quiet_stage_is_mentioned_once_then_every_minute() {
        let mut d = plain();
        d.render(&stage(1, "install", "installing", 0));
        let t0 = d.last_shown;
        assert!(d.quiet_line(t0 + Duration::from_secs(5)).is_none());
        let line = d.quiet_line(t0 + QUIET).unwrap();
        assert!(line.contains("install still running: no output for 20 s"), "{line}");
        assert!(d.quiet_line(t0 + QUIET + Duration::from_secs(30)).is_none());
        assert!(d.quiet_line(t0 + QUIET + Duration::from_secs(60)).is_some());
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(19_240), "19.2 s");
        assert_eq!(seconds(125_000), "2m05s");
    }
}
