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

/// Writes to stdout and flushes; exits with status 0 when the reader has gone away (EPIPE).
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        exit_if_closed(&e);
    }
}

/// Ends the program quietly when `e` says stdout's reader has gone away.
pub(crate) fn exit_if_closed(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
}

/// Whether stdout takes colours: a terminal, and `NO_COLOR` unset (<https://no-color.org>).
pub(crate) fn stdout_colors() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether stderr takes colours (the server's log, progress lines): the same rule.
pub(crate) fn stderr_colors() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Makes build output safe for a terminal. Newlines and tabs stay. SGR sequences (`ESC [ …
/// m`: colours, bold; what picocolors and chalk print, since builds run with `CI=true`) are
/// kept when `colors`, else dropped. Every other control character (other escape sequences,
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
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The length of the SGR sequence `s` starts with: `ESC [`, parameters (digits, `;`, `:`;
/// at most 64), then `m`.
fn sgr_len(s: &str) -> Option<usize> {
    let params = s.strip_prefix("\x1b[")?;
    let n = params.bytes().take(65).take_while(|b| b.is_ascii_digit() || *b == b';' || *b == b':').count();
    (n <= 64 && params.as_bytes().get(n) == Some(&b'm')).then_some(2 + n + 1)
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
    }
}
