//! A build log as HTML: every byte escaped, SGR colours and bold as classes, every other
//! escape sequence (cursor moves, OSC titles and hyperlinks) dropped, a carriage return that
//! rewrites its line (a progress bar) collapsed to the line's last state, each line numbered
//! with its anchor (`#L120`); and where in the event log the open (unfinished) line began, so
//! that a live view can resume by rendering that line again.

use std::fmt::Write;

/// Turns a log's text into HTML lines, numbering them from `first`; keeps the colour state of
/// an unfinished line for the next call.
#[derive(Debug, Default)]
pub struct LogHtml {
    /// The number the next line gets.
    pub next_line: u64,
    /// The open line's text so far (HTML), and the SGR classes in force.
    open: String,
    classes: Vec<&'static str>,
    /// An escape sequence cut between two chunks.
    pending: String,
    /// Lines numbered below this are counted, not rendered (the part of a long log the page
    /// leaves out); 0 renders every line.
    render_from: u64,
    /// Lines numbered from this on are counted, not rendered (0: no bound).
    render_to: u64,
    /// Whether an uncounted line has text (lines below `render_from`).
    quiet_open: bool,
    /// Lines as `<number>\t<text>\n`, without markup or escaping (for searching a log).
    plain: bool,
    /// The event being rendered and the offset of the text pushed next in that event's output
    /// (set by [`LogHtml::at_event`]); where the open line began.
    event: u64,
    base: usize,
    open_at: Resume,
    /// A carriage return was seen on the open line: the next character starts it again.
    returned: bool,
    /// Characters on the open line (rendered or not): a line is broken after [`MAX_LINE`].
    open_chars: usize,
}

/// The longest line kept whole; a longer one continues on the next line (a line without an
/// end, such as a test reporter's dots, must not make every live update resend all of it).
pub const MAX_LINE: usize = 16 * 1024;

/// Where in a task's event log a line begins: after event `after`, skipping the first `skip`
/// bytes of the next event's text; that line is numbered `line` and starts with the colours
/// `style` in force ([`LogHtml::style`]). Written `after.skip.line.style` (the live stream's
/// SSE ids; `style` may be left out).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub after: u64,
    pub skip: usize,
    pub line: u64,
    pub style: u8,
}

impl std::fmt::Display for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}.{}", self.after, self.skip, self.line, self.style)
    }
}

impl std::str::FromStr for Resume {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('.').map(|p| p.parse::<u64>().map_err(|_| ()));
        let (after, skip, line) = (parts.next().ok_or(())??, parts.next().ok_or(())??, parts.next().ok_or(())??);
        let style = parts.next().transpose()?.unwrap_or(0);
        if parts.next().is_some() {
            return Err(());
        }
        let skip = usize::try_from(skip).map_err(|_| ())?;
        Ok(Resume { after, skip, line: line.max(1), style: u8::try_from(style).map_err(|_| ())? })
    }
}

impl LogHtml {
    pub fn starting_at(line: u64) -> Self {
        LogHtml { next_line: line, ..Default::default() }
    }

    /// A log resuming at `at`: its line number and colours (the caller skips `at.skip` bytes
    /// of the first event's text).
    pub fn resuming(at: Resume) -> Self {
        LogHtml { next_line: at.line, open_at: at, classes: classes_of(at.style), ..Default::default() }
    }

    /// The text pushed from now on is event `seq`'s output from byte `base` on (for
    /// [`LogHtml::open_at`]).
    pub fn at_event(&mut self, seq: u64, base: usize) {
        self.event = seq;
        self.base = base;
    }

    /// Where the open line began (the point to resume a live view from, rendering that line again).
    pub fn open_at(&self) -> Resume {
        Resume { line: self.next_line, ..self.open_at }
    }

    /// The colours in force as a number: bit 0 bold, bits 1–4 the foreground colour + 1.
    fn style(&self) -> u8 {
        self.classes.iter().fold(0, |acc, c| match *c {
            "b" => acc | 1,
            fg => acc | fg.strip_prefix("fg").and_then(|n| n.parse::<u8>().ok()).map_or(0, |n| (n + 1) << 1),
        })
    }

    /// Marks the start of the next line: at byte `offset` of the pushed text (`None`: after
    /// the current event).
    fn line_starts(&mut self, offset: Option<usize>) {
        let style = self.style();
        self.open_at = match offset {
            Some(at) => Resume { after: self.event.saturating_sub(1), skip: self.base + at, line: 0, style },
            None => Resume { after: self.event, skip: 0, line: 0, style },
        };
    }

    /// The open line so far as `<div class="l open" id="L{n}">`, or nothing when no line is
    /// open or it is outside the rendered window. A later rendering of the same line replaces it.
    pub fn open_html(&self) -> String {
        if self.open.is_empty() || self.quiet() || self.plain {
            return String::new();
        }
        let n = self.next_line;
        let spans = self.open.matches("<span").count().saturating_sub(self.open.matches("</span>").count());
        format!(
            "<div class=\"l open\" id=\"L{n}\"><a href=\"#L{n}\">{n}</a><code>{}{}</code></div>\n",
            self.open,
            "</span>".repeat(spans)
        )
    }

    /// Lines numbered from 1, rendered from line `first` on (the ones before only counted).
    pub fn rendering_from(first: u64) -> Self {
        LogHtml { next_line: 1, render_from: first, ..Default::default() }
    }

    /// Lines numbered from 1 as plain text, `<number>\t<text>\n` each (escape sequences
    /// dropped, nothing escaped): what a search of the log matches.
    pub fn plain() -> Self {
        LogHtml { next_line: 1, plain: true, ..Default::default() }
    }

    /// Lines numbered from 1, rendered from line `first` to before line `end` (the others only
    /// counted): one page of a long log.
    pub fn rendering_window(first: u64, end: u64) -> Self {
        LogHtml { next_line: 1, render_from: first, render_to: end, ..Default::default() }
    }

    /// Adds text; returns the HTML of the lines it completed.
    pub fn push(&mut self, text: &str) -> String {
        let mut out = String::new();
        let joined;
        // Offsets below are in `text`; the event's own text starts `carried` bytes in.
        let carried = self.pending.len();
        let text = if self.pending.is_empty() {
            text
        } else {
            joined = std::mem::take(&mut self.pending) + text;
            &joined
        };
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '\n' => {
                    self.end_line(&mut out);
                    // A newline carried over from the event before (inside a long broken escape)
                    // counts as this event's start.
                    self.line_starts(Some((i + 1).saturating_sub(carried)));
                }
                // A carriage return rewrites the line (a progress bar) once more text comes: only
                // the line's last state is kept, as a terminal shows it. `\r\n` ends a line.
                '\r' => self.returned = true,
                '\u{1b}' => {
                    let rest = &text[i..];
                    // A sequence never ended (a stray `ESC ]`) is dropped after 4 KiB, its text
                    // kept: it must not swallow the rest of the log.
                    let len = escape_len(rest).or_else(|| (rest.len() > MAX_ESCAPE).then_some(1));
                    match len {
                        Some(len) => {
                            self.apply(&rest[..len]);
                            // Skip the sequence's remaining characters.
                            while chars.peek().is_some_and(|(j, _)| *j < i + len) {
                                chars.next();
                            }
                        }
                        None => {
                            self.pending = rest.to_owned();
                            break;
                        }
                    }
                }
                c if c.is_control() && c != '\t' => {}
                c => {
                    if self.open_chars >= MAX_LINE && !self.returned {
                        self.end_line(&mut out);
                        self.line_starts(Some(i.saturating_sub(carried)));
                    }
                    self.put(c);
                }
            }
        }
        out
    }

    /// A line of the server's own (a stage's message), after whatever line is open.
    pub fn stage(&mut self, text: &str) -> String {
        let mut out = self.finish();
        self.line_starts(None);
        if self.quiet() {
            self.next_line += 1;
            return out;
        }
        let saved = std::mem::take(&mut self.classes);
        for c in text.chars().filter(|c| !c.is_control()) {
            self.put(c);
        }
        self.classes = saved;
        let n = self.next_line;
        if self.plain {
            let _ = writeln!(out, "{n}\t{}", self.open);
            self.open.clear();
            self.next_line += 1;
            return out;
        }
        let _ =
            writeln!(out, "<div class=\"l st\" id=\"L{n}\"><a href=\"#L{n}\">{n}</a><code>{}</code></div>", self.open);
        self.open.clear();
        self.next_line += 1;
        out
    }

    /// The HTML of the unfinished last line, if any (at the end of a log).
    pub fn finish(&mut self) -> String {
        self.pending.clear();
        let mut out = String::new();
        if !self.open.is_empty() || self.quiet_open {
            self.end_line(&mut out);
        }
        out
    }

    /// Back to the start of the open line: what follows overwrites it. The colours in force
    /// stay (a terminal keeps them too).
    fn rewind(&mut self) {
        self.open.clear();
        self.open_chars = 0;
    }

    fn quiet(&self) -> bool {
        self.next_line < self.render_from || (self.render_to > 0 && self.next_line >= self.render_to)
    }

    fn put(&mut self, c: char) {
        if std::mem::take(&mut self.returned) {
            self.rewind();
        }
        self.open_chars += 1;
        if self.quiet() {
            self.quiet_open = true;
            return;
        }
        if self.plain {
            self.open.push(c);
            return;
        }
        if self.open.is_empty() && !self.classes.is_empty() {
            let _ = write!(self.open, "<span class=\"{}\">", self.classes.join(" "));
        }
        match c {
            '<' => self.open.push_str("&lt;"),
            '>' => self.open.push_str("&gt;"),
            '&' => self.open.push_str("&amp;"),
            '"' => self.open.push_str("&quot;"),
            '\'' => self.open.push_str("&#39;"),
            c => self.open.push(c),
        }
    }

    fn end_line(&mut self, out: &mut String) {
        self.returned = false;
        self.open_chars = 0;
        if self.quiet() {
            self.quiet_open = false;
            self.next_line += 1;
            return;
        }
        let n = self.next_line;
        if self.plain {
            let _ = writeln!(out, "{n}\t{}", self.open);
            self.open.clear();
            self.next_line += 1;
            return;
        }
        let spans = self.open.matches("<span").count().saturating_sub(self.open.matches("</span>").count());
        let _ = write!(out, "<div class=\"l\" id=\"L{n}\"><a href=\"#L{n}\">{n}</a><code>{}", self.open);
        out.push_str(&"</span>".repeat(spans));
        out.push_str("</code></div>\n");
        self.open.clear();
        self.next_line += 1;
    }

    /// An SGR sequence changes the classes in force (a new span); anything else is dropped.
    fn apply(&mut self, seq: &str) {
        let Some(params) = seq.strip_prefix("\u{1b}[").and_then(|s| s.strip_suffix('m')) else { return };
        for p in params.split(';') {
            match p {
                "" | "0" => self.classes.clear(),
                "1" => self.classes.push("b"),
                "22" => self.classes.retain(|c| *c != "b"),
                "39" => self.classes.retain(|c| !c.starts_with("fg")),
                p => {
                    if let Some(class) = colour(p) {
                        self.classes.retain(|c| !c.starts_with("fg"));
                        self.classes.push(class);
                    }
                }
            }
        }
        self.classes.dedup();
        if !self.open.is_empty() && !self.plain {
            // Close what is open and reopen with the new classes.
            let spans = self.open.matches("<span").count().saturating_sub(self.open.matches("</span>").count());
            self.open.push_str(&"</span>".repeat(spans));
            if !self.classes.is_empty() {
                let _ = write!(self.open, "<span class=\"{}\">", self.classes.join(" "));
            }
        }
    }
}

/// The classes of a [`LogHtml::style`] number.
fn classes_of(style: u8) -> Vec<&'static str> {
    const FG: [&str; 8] = ["fg0", "fg1", "fg2", "fg3", "fg4", "fg5", "fg6", "fg7"];
    let mut classes = Vec::new();
    if style & 1 == 1 {
        classes.push("b");
    }
    if let Some(fg) = FG.get(usize::from(style >> 1).wrapping_sub(1)) {
        classes.push(fg);
    }
    classes
}

fn colour(p: &str) -> Option<&'static str> {
    const FG: [&str; 8] = ["fg0", "fg1", "fg2", "fg3", "fg4", "fg5", "fg6", "fg7"];
    let n: usize = p.parse().ok()?;
    match n {
        30..=37 => Some(FG[n - 30]),
        90..=97 => Some(FG[n - 90]),
        _ => None,
    }
}

/// The longest escape sequence waited for across chunks.
const MAX_ESCAPE: usize = 4096;

/// The length of the escape sequence at the start of `s` (which starts with ESC); `None` when
/// it is cut off. CSI: `ESC [` parameters and intermediates (0x20–0x3f), final byte 0x40–0x7e;
/// any other byte ends it malformed (the byte is kept). OSC: `ESC ]` up to BEL or `ESC \`.
/// Other escapes: ESC and the character after it.
fn escape_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    match b.get(1)? {
        b'[' => b[2..].iter().position(|c| !(0x20..=0x3f).contains(c)).map(|p| {
            if (0x40..=0x7e).contains(&b[p + 2]) {
                p + 3
            } else {
                p + 2
            }
        }),
        b']' => {
            let body = &b[2..];
            let bel = body.iter().position(|c| *c == 0x07).map(|p| p + 3);
            let st = body.windows(2).position(|w| w == b"\x1b\\").map(|p| p + 4);
            match (bel, st) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        _ => Some(1 + s[1..].chars().next()?.len_utf8()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_escaped_and_escapes_are_dropped_or_coloured() {
        let mut log = LogHtml::starting_at(1);
        let html = log.push("<script>alert('x')</script> & \"q\"\n\u{1b}]0;title\u{7}\u{1b}]8;;http://evil\u{1b}\\link\u{1b}]8;;\u{1b}\\\n");
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"), "{html}");
        assert!(html.contains("id=\"L2\"") && html.contains("<code>link</code>"), "OSC dropped: {html}");
        assert!(!html.contains("evil") && !html.contains("title"), "{html}");
        let html = log.push("\u{1b}[1;31merror\u{1b}[0m done\u{1b}[2K\n");
        assert!(html.contains("<span class=\"b fg1\">error</span> done</code>"), "{html}");
        assert!(html.contains("id=\"L3\""));
    }

    #[test]
    fn broken_escapes_neither_panic_nor_swallow_the_log() {
        let mut log = LogHtml::starting_at(1);
        let html = log.push("a\u{1b}\u{e9}b\n");
        assert!(html.contains("<code>ab</code>"), "ESC before a non-ASCII character: {html}");
        let html = log.push("x\u{1b}[12\nnext line\n");
        assert!(html.contains("<code>x</code>") && html.contains("next line"), "a CSI cut by a newline ends: {html}");
        let mut log = LogHtml::starting_at(1);
        let mut html = log.push("\u{1b}]0;never ended");
        for _ in 0..100 {
            html.push_str(&log.push(&"text\n".repeat(10)));
        }
        assert!(html.contains("text"), "the log after a stray OSC is shown");
        assert!(log.pending.len() <= MAX_ESCAPE + 60);
    }

    #[test]
    fn lines_before_render_from_are_counted_not_rendered() {
        let mut log = LogHtml::rendering_from(3);
        let html = log.push("one\ntwo\nthree\n") + &log.stage("==> stage") + &log.push("tail");
        assert!(!html.contains("one") && !html.contains("two"), "{html}");
        assert!(html.contains("id=\"L3\"><a href=\"#L3\">3</a><code>three"), "{html}");
        assert!(html.contains("id=\"L4\"") && html.contains("==&gt; stage"), "{html}");
        assert!(log.finish().contains("id=\"L5\""));
    }

    #[test]
    fn sequences_and_lines_cut_between_chunks_are_joined() {
        let mut log = LogHtml::starting_at(10);
        assert_eq!(log.push("par"), "");
        assert_eq!(log.push("tial \u{1b}[3"), "");
        let html = log.push("2mgreen\n");
        assert!(html.contains("partial <span class=\"fg2\">green</span>"), "{html}");
        assert!(log.push("tail").is_empty());
        assert!(log.finish().contains("id=\"L11\""));
    }

    #[test]
    fn a_carriage_return_rewrites_its_line_and_the_open_line_says_where_it_began() {
        let mut log = LogHtml::starting_at(1);
        log.at_event(7, 0);
        let html = log.push("first\r\n 10%\r 50%\r");
        assert!(html.contains("<code>first</code>"), "\\r\\n ends a line: {html}");
        assert_eq!(log.open_at(), Resume { after: 6, skip: 7, line: 2, style: 0 });
        log.at_event(8, 0);
        let html = log.push("\r100%\ndone");
        assert!(html.contains("id=\"L2\"><a href=\"#L2\">2</a><code>100%</code>"), "{html}");
        assert!(!html.contains("50%"));
        // Line 3 began 6 bytes into event 8: resuming there renders it again, whole.
        assert_eq!(log.open_at(), Resume { after: 7, skip: 6, line: 3, style: 0 });
        assert_eq!("7.6.3.0".parse(), Ok(log.open_at()));
        assert_eq!("7.6.3".parse(), Ok(log.open_at()), "the style may be left out");
        assert!("7.6".parse::<Resume>().is_err() && "1.2.3.4.5".parse::<Resume>().is_err());
        assert!(
            log.open_html().contains("class=\"l open\" id=\"L3\"") && log.open_html().contains("<code>done</code>")
        );
        let mut resumed = LogHtml::resuming(log.open_at());
        resumed.at_event(8, 6);
        resumed.push(&"\r100%\ndone"[6..]);
        assert_eq!(resumed.open_html(), log.open_html());
        assert!(log.stage("==> end").contains("<code>done</code>"));
        let mut plain = LogHtml::plain();
        assert_eq!(plain.push("a\rb\r\n"), "1\tb\n", "searches see what the page shows");
    }

    #[test]
    fn a_carriage_return_keeps_the_line_until_text_overwrites_it() {
        let mut log = LogHtml::starting_at(1);
        let html = log.push("abc\r\r\nok\r\u{1b}[0m\n");
        assert!(html.contains("<code>abc</code>") && html.contains("<code>ok</code>"), "{html}");
        // Counting lines (a page's window) and rendering them agree, whatever follows a `\r`.
        let text = "one\rtwo\u{1b}[K\r\u{1b}[2K";
        let mut counted = LogHtml::rendering_from(u64::MAX);
        let mut rendered = LogHtml::starting_at(1);
        for log in [&mut counted, &mut rendered] {
            log.push(text);
            log.stage("==> next");
            log.push("last\n");
        }
        assert_eq!(counted.next_line, rendered.next_line);
    }

    #[test]
    fn a_line_without_an_end_is_broken_after_max_line_characters() {
        let mut log = LogHtml::starting_at(1);
        log.at_event(3, 0);
        let html = log.push(&".".repeat(MAX_LINE + 10));
        assert_eq!(html.matches("<div").count(), 1);
        assert!(html.contains(&format!("<code>{}</code>", ".".repeat(MAX_LINE))));
        assert_eq!(log.open_at(), Resume { after: 2, skip: MAX_LINE, line: 2, style: 0 });
        assert!(log.open_html().contains(&format!("<code>{}</code>", ".".repeat(10))));
    }

    #[test]
    fn a_resumed_line_starts_in_the_colours_in_force_where_it_began() {
        let mut log = LogHtml::starting_at(1);
        log.at_event(4, 0);
        log.push("\u{1b}[1;31mred\nstill red");
        let at = log.open_at();
        assert_eq!((at.after, at.skip, at.style), (3, 11, 1 | (2 << 1)));
        let mut resumed = LogHtml::resuming(at);
        resumed.at_event(4, at.skip);
        resumed.push("still red");
        assert_eq!(resumed.open_html(), log.open_html());
        assert!(resumed.open_html().contains("<span class=\"b fg1\">still red</span>"), "{}", resumed.open_html());
    }
}
