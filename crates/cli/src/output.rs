//! Standard output for commands: a closed pipe (`cloudbuild tasks | head -1`) ends the program
//! quietly with success, as ripgrep and the coreutils do, instead of a panic; SGR colours of
//! build output pass through to a terminal only.

use std::io::{IsTerminal, Write};

/// Writes a formatted line to stdout (see [`write`]).
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use outln;

/// Writes to stdout and flushes. When the reader has gone away (EPIPE) the program ends
/// quietly with status 0; any other failure to write (a full disk) ends it with status 2.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(2);
    }
}

/// Whether stdout takes colours: a terminal, and `NO_COLOR` unset (<https://no-color.org>).
pub(crate) fn stdout_colors() -> bool {
    colors_on(std::io::stdout().is_terminal())
}

/// Whether stderr takes colours (the server's log, progress lines): the same rule.
pub(crate) fn stderr_colors() -> bool {
    colors_on(std::io::stderr().is_terminal())
}

fn colors_on(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Makes build output safe for a terminal. Newlines and tabs stay. SGR sequences of colours
/// and text style (`ESC [ … m`; what picocolors and chalk print, since builds run with
/// `CI=true`) are kept when `colors`, else dropped; blinking and concealed text are not
/// passed. Every other control character (other escape sequences,
/// `\r` overwrites, bells) is shown as a visible escape, so a build cannot clear the screen,
/// retitle the window or forge lines.
pub(crate) fn sanitize(s: &str, colors: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b' {
            if let Some(len) = sgr_len(rest) {
                if colors {
                    out.push_str(&rest[..len]);
                }
                rest = &rest[len..];
                continue;
            }
        }
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() || is_invisible_format(c) => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Unicode format characters that change how text is shown without being seen: bidirectional
/// overrides and isolates (U+202A–U+202E, U+2066–U+2069, "Trojan Source"), zero-width
/// characters and marks, the byte-order mark. Build output shows them as escapes.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// The starts of the lines cloudbuild prints itself; a build's output line that starts like
/// one is marked, so that it cannot pass for the service's own (`==> [7/7] build success`).
const OWN_LINE_STARTS: [&str; 3] = ["==>", "published:", "!!!"];

/// Marks the lines of build output `text` that begin like cloudbuild's own lines with
/// `[build] `. `at_line_start` says whether `text` begins a line (the previous chunk ended with
/// a newline); returns whether the text ends at a line start.
pub(crate) fn mark_imitations(text: &str, at_line_start: bool) -> (String, bool) {
    let mut out = String::with_capacity(text.len());
    let mut line_start = at_line_start;
    for piece in text.split_inclusive('\n') {
        if line_start {
            // What the line shows first: past blanks and colour codes.
            let mut visible = piece.trim_start_matches([' ', '\t', '\r']);
            while let Some(n) = sgr_len(visible) {
                visible = visible[n..].trim_start_matches([' ', '\t', '\r']);
            }
            if OWN_LINE_STARTS.iter().any(|own| visible.starts_with(own)) {
                out.push_str("[build] ");
            }
        }
        out.push_str(piece);
        line_start = piece.ends_with('\n');
    }
    (out, if text.is_empty() { at_line_start } else { line_start })
}

/// The length of the SGR sequence `s` starts with: `ESC [`, parameters (digits, `;`, `:`;
/// at most 64), then `m`; `None` when it is not one, or sets blinking (5, 6) or concealed (8)
/// text.
fn sgr_len(s: &str) -> Option<usize> {
    let params = s.strip_prefix("\x1b[")?;
    let n = params.bytes().take(65).take_while(|b| b.is_ascii_digit() || *b == b';' || *b == b':').count();
    if n > 64 || params.as_bytes().get(n) != Some(&b'm') {
        return None;
    }
    // Codes are the first number of each `;` group; 38/48/58 take their colour's arguments
    // from the groups after (`38;5;n`, `38;2;r;g;b`) unless written with colons.
    let groups: Vec<&str> = params[..n].split(';').collect();
    let mut i = 0;
    while i < groups.len() {
        let code: u32 = groups[i].split(':').next().and_then(|c| c.parse().ok()).unwrap_or(0);
        i += 1;
        if matches!(code, 38 | 48 | 58) && !groups[i - 1].contains(':') {
            i += match groups.get(i).copied() {
                Some("5") => 2,
                Some("2") => 4,
                _ => 0,
            };
        } else if matches!(code, 5 | 6 | 8) {
            return None;
        }
    }
    Some(2 + n + 1)
}

/// Splits off an escape sequence cut at the end of `s` (build output arrives in chunks, and a
/// colour code can straddle two): `(complete, held back for the next chunk)`.
pub(crate) fn split_cut_escape(s: &str) -> (&str, &str) {
    let Some(at) = s.rfind('\x1b') else { return (s, "") };
    let tail = &s[at..];
    let params = tail.strip_prefix("\x1b[").unwrap_or("");
    let unfinished = tail == "\x1b"
        || (tail.starts_with("\x1b[")
            && params.len() <= 64
            && params.bytes().all(|b| b.is_ascii_digit() || b == b';' || b == b':'));
    if unfinished {
        (&s[..at], tail)
    } else {
        (s, "")
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn control_sequences_are_made_visible() {
        assert_eq!(
            sanitize("ok\n\x1b[2J\x1b]0;pwned\x07\rBUILD SUCCESS", true),
            "ok\n\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\rBUILD SUCCESS"
        );
    }

    #[test]
    fn colours_pass_to_a_terminal_and_are_dropped_elsewhere() {
        let vite = "\x1b[36mvite v8.3.8 \x1b[32mbuilding for production...\x1b[39m\n\x1b[1;38;5;208mx\x1b[0m";
        assert_eq!(sanitize(vite, true), vite);
        assert_eq!(sanitize(vite, false), "vite v8.3.8 building for production...\nx");
        // Not SGR: a cursor move, an unterminated sequence, a parameter run too long to be real.
        assert_eq!(sanitize("\x1b[5Ahi", true), "\\u{1b}[5Ahi");
        assert_eq!(sanitize("\x1b[31", true), "\\u{1b}[31");
        let long = format!("\x1b[{}m", "1;".repeat(40));
        assert!(sanitize(&long, true).starts_with("\\u{1b}["));
        // Colour arguments are not codes: 38;5;5 is a colour, 5 alone is blinking.
        assert_eq!(sanitize("\x1b[38;5;5mx\x1b[48;2;8;6;5mx", true), "\x1b[38;5;5mx\x1b[48;2;8;6;5mx");
        assert_eq!(sanitize("\x1b[5mx\x1b[1;8mx", true), "\\u{1b}[5mx\\u{1b}[1;8mx");
    }

    #[test]
    fn bidi_and_invisible_characters_are_shown() {
        assert_eq!(sanitize("ok \u{202E}gnp.exe\u{200B}", false), "ok \\u{202e}gnp.exe\\u{200b}");
        assert_eq!(sanitize("漢字 ✓ é", false), "漢字 ✓ é", "ordinary text stays");
    }

    #[test]
    fn output_that_imitates_our_lines_is_marked() {
        use super::mark_imitations;
        let (out, at_start) = mark_imitations("ok\n==> [7/7] build success: published\npublished: x\n", true);
        assert_eq!(out, "ok\n[build] ==> [7/7] build success: published\n[build] published: x\n");
        assert!(at_start);
        // A line split across chunks is judged at its start only.
        let (first, at_start) = mark_imitations("step ", true);
        let (second, _) = mark_imitations("==> not a line start\n", at_start);
        assert_eq!(first + &second, "step ==> not a line start\n");
        assert_eq!(mark_imitations("  !!! x", true).0, "[build]   !!! x");
        assert_eq!(mark_imitations("\x1b[32m==> fake", true).0, "[build] \x1b[32m==> fake");
    }

    #[test]
    fn an_escape_cut_at_the_end_of_a_chunk_is_held_back() {
        use super::split_cut_escape;
        assert_eq!(split_cut_escape("ok \x1b[3"), ("ok ", "\x1b[3"));
        assert_eq!(split_cut_escape("ok \x1b"), ("ok ", "\x1b"));
        assert_eq!(split_cut_escape("ok \x1b[36m"), ("ok \x1b[36m", ""));
        assert_eq!(split_cut_escape("ok \x1b]0;t"), ("ok \x1b]0;t", ""));
        let (now, later) = split_cut_escape("\x1b[32mbuilt \x1b[3");
        assert_eq!(sanitize(&format!("{later}9m done"), false), " done");
        assert_eq!(sanitize(now, false), "built ");
    }
}
