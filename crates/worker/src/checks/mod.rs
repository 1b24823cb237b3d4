//! The server's mandatory checks (`[[checks]]`, carried by the assignment): the repository's
//! files are scanned for secrets in `check`, and the build output is checked before `publish`
//! (source maps, `debugger` statements, secrets, gzip size budgets, required and forbidden
//! paths). Each check gives a [`CheckResult`] with its duration and the offending files and
//! lines; the pipeline logs every result and fails the task on the first failed check. Reads
//! files only as the worker (no build code runs here) and never follows symlinks.

pub mod secrets;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use cloudbuild_proto::checks::{forbidden_globs, MandatoryCheck};
use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::text::{count, size};
use regex::Regex;

/// The largest file the content checks read: a bigger text file fails them (it could hide
/// what they look for), as a binary file (a NUL in its first 8 KiB) is skipped, as gitleaks does.
const MAX_SCANNED_BYTES: u64 = 32 << 20;
/// How many offending files or lines a failure lists.
const SHOWN: usize = 10;
/// How many problems a check collects before it stops looking: a file of a million
/// `debugger;` lines costs no more than the first hundred.
const MAX_PROBLEMS: usize = 100;

/// Where each line of a text starts, for line numbers in one pass however many matches.
pub(crate) struct Lines(Vec<usize>);

impl Lines {
    pub(crate) fn of(text: &str) -> Self {
        Lines(std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect())
    }

    /// The number (from 1) and the text of the line holding byte `at`.
    pub(crate) fn line<'t>(&self, text: &'t str, at: usize) -> (usize, &'t str) {
        let n = self.0.partition_point(|start| *start <= at);
        let start = self.0[n - 1];
        let end = self.0.get(n).map_or(text.len(), |next| next - 1);
        (n, &text[start..end])
    }
}

/// A file as the content checks read it.
enum Content {
    Text(String),
    Binary,
    /// Over [`MAX_SCANNED_BYTES`], or unreadable: the checks fail closed on it.
    Unread(String),
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// `secrets-scan`, `size-budget`, …
    pub name: String,
    pub duration: Duration,
    /// What it looked at (`42 files`), or what it found.
    pub summary: String,
    /// The offending files and lines (`assets/app.js:3: a debugger statement`); empty: passed.
    pub problems: Vec<String>,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line for the log: `mandatory check no-debug-code passed in 3 ms (12 files)`.
    pub fn line(&self) -> String {
        let took = format!("{} ms", self.duration.as_millis());
        if self.passed() {
            format!("mandatory check {} passed in {took} ({})", self.name, self.summary)
        } else {
            format!("mandatory check {} failed in {took}: {}", self.name, self.failure())
        }
    }

    /// The failure's reason: what was wrong, with the first offending files and lines.
    pub fn failure(&self) -> String {
        let mut shown: Vec<&str> = self.problems.iter().take(SHOWN).map(String::as_str).collect();
        let more = self.problems.len().saturating_sub(SHOWN);
        let extra = if more > 0 { format!("; and {more} more") } else { String::new() };
        shown.dedup();
        format!("{}{extra}", shown.join("; "))
    }
}

/// Reads a file for scanning (without following a symlink).
fn read(path: &Path, len: u64) -> Content {
    let too_large = || Content::Unread(format!("over {}, too large to check", size(MAX_SCANNED_BYTES)));
    if len > MAX_SCANNED_BYTES {
        return too_large();
    }
    let mut bytes = Vec::with_capacity(len as usize);
    let read = crate::publish::open_no_follow(path).and_then(|f| f.take(MAX_SCANNED_BYTES + 1).read_to_end(&mut bytes));
    match read {
        Err(e) => Content::Unread(format!("unreadable: {e}")),
        Ok(_) if bytes.len() as u64 > MAX_SCANNED_BYTES => too_large(),
        Ok(_) if bytes.iter().take(8192).any(|b| *b == 0) => Content::Binary,
        Ok(_) => Content::Text(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// The text files of `files` that `wanted` selects; one too large to read is a problem.
fn texts<'a>(
    files: &'a [(ManifestFile, std::path::PathBuf)],
    wanted: fn(&str) -> bool,
    problems: &mut Vec<String>,
) -> Vec<(&'a str, String)> {
    let mut out = Vec::new();
    for (f, p) in files.iter().filter(|(f, _)| wanted(&f.path)) {
        match read(p, f.size) {
            Content::Text(t) => out.push((f.path.as_str(), t)),
            Content::Binary => {}
            Content::Unread(why) => problems.push(format!("{}: {why}", f.path)),
        }
    }
    out
}

fn is_script(path: &str) -> bool {
    [".js", ".mjs", ".cjs"].iter().any(|e| path.ends_with(e))
}

/// A `debugger` statement: the keyword on its own (not a property, not in a word), followed
/// by the end of a statement.
static DEBUGGER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(?m)(?:^|[^\w$.'"`])debugger\s*(?:;|\}|$)"#).expect("the pattern compiles"));
static SOURCE_MAP_COMMENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)^\s*(?://|/\*)[#@]\s*sourceMappingURL=").expect("the pattern compiles"));

/// Runs the checks that look at the build output (`files`: each output file with where it
/// is); `script` checks are not among them (they run in `check`).
pub fn check_output(checks: &[MandatoryCheck], files: &[(ManifestFile, std::path::PathBuf)]) -> Vec<CheckResult> {
    checks.iter().filter(|c| !matches!(c, MandatoryCheck::Script { .. })).map(|c| check_one(c, files)).collect()
}

fn check_one(check: &MandatoryCheck, files: &[(ManifestFile, std::path::PathBuf)]) -> CheckResult {
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut summary = count(files.len() as u64, "file", "files");
    match check {
        MandatoryCheck::Script { .. } => {}
        MandatoryCheck::NoSourceMaps => {
            problems.extend(
                files
                    .iter()
                    .filter(|(f, _)| f.path.ends_with(".map"))
                    .map(|(f, _)| format!("{}: a source map", f.path)),
            );
            for (path, text) in texts(files, |p| is_script(p) || p.ends_with(".css"), &mut problems) {
                if let Some(m) = SOURCE_MAP_COMMENT.find(&text) {
                    let (line, _) = Lines::of(&text).line(&text, m.start());
                    problems.push(format!("{path}:{line}: a sourceMappingURL comment"));
                }
            }
        }
        MandatoryCheck::NoDebugCode => {
            for (path, text) in texts(files, is_script, &mut problems) {
                let lines = Lines::of(&text);
                for m in DEBUGGER.find_iter(&text).take(MAX_PROBLEMS) {
                    // The match may begin with the character before the keyword (a newline).
                    let at = m.start() + m.as_str().find("debugger").unwrap_or(0);
                    problems.push(format!("{path}:{}: a debugger statement", lines.line(&text, at).0));
                }
                if problems.len() >= MAX_PROBLEMS {
                    break;
                }
            }
        }
        MandatoryCheck::SecretsScan => {
            let mut scanned = 0u64;
            for (path, text) in texts(files, |_| true, &mut problems) {
                scanned += 1;
                scan_text(path, &text, false, &mut problems);
                if problems.len() >= MAX_PROBLEMS {
                    break;
                }
            }
            summary =
                format!("{} scanned with {} gitleaks rules", count(scanned, "file", "files"), secrets::GITLEAKS.len());
        }
        MandatoryCheck::SizeBudget { total_gzip_bytes, file_gzip_bytes } => {
            let mut total = 0u64;
            for (f, p) in files {
                let gz = gzip_size(p).unwrap_or(f.size);
                total += gz;
                if let Some(limit) = file_gzip_bytes.filter(|l| gz > *l) {
                    problems.push(format!("{}: {} gzip, over the {} per file", f.path, size(gz), size(limit)));
                }
            }
            if let Some(limit) = total_gzip_bytes.filter(|l| total > *l) {
                problems.insert(0, format!("the output is {} gzip, over the {} budget", size(total), size(limit)));
            }
            summary = format!("{} gzip in {}", size(total), count(files.len() as u64, "file", "files"));
        }
        MandatoryCheck::RequiredFiles { files: required } => {
            for r in required {
                if !files.iter().any(|(f, _)| f.path == *r) {
                    problems.push(format!("{r}: required, not in the output"));
                }
            }
            summary = format!("{} present", required.join(", "));
        }
        MandatoryCheck::ForbiddenPaths { paths } => match forbidden_globs(paths) {
            Ok(globs) => problems.extend(
                files
                    .iter()
                    .filter(|(f, _)| globs.is_match(&f.path))
                    .map(|(f, _)| format!("{}: a forbidden path", f.path)),
            ),
            Err(e) => problems.push(e.to_string()),
        },
    }
    CheckResult { name: check.name(), duration: started.elapsed(), summary, problems }
}

/// Adds the secrets of one file to `problems`: the rule and where, never the value (the log
/// is read by many).
fn scan_text(path: &str, text: &str, repository: bool, problems: &mut Vec<String>) {
    let room = MAX_PROBLEMS.saturating_sub(problems.len());
    for f in secrets::GITLEAKS.scan(path, text, repository, room) {
        problems.push(format!("{path}:{}: a secret ({})", f.line, f.rule));
    }
}

/// The size of the file gzip-compressed (the default level, as size-limit and most CDNs).
fn gzip_size(path: &Path) -> std::io::Result<u64> {
    let mut input = crate::publish::open_no_follow(path)?;
    let mut encoder = flate2::write::GzEncoder::new(Counter(0), flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder)?;
    Ok(encoder.finish()?.0)
}

/// A writer that counts what it is given.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `secrets-scan` of the repository's files (not `.git`, not `node_modules`, not symlinks,
/// not what gitleaks' global allowlist names), one file in memory at a time.
pub fn scan_checkout(root: &Path) -> CheckResult {
    let started = Instant::now();
    let (mut problems, mut scanned) = (Vec::new(), 0u64);
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let rel = format!("{prefix}{name}");
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() && name != ".git" && name != "node_modules" {
                stack.push((entry.path(), format!("{rel}/")));
            } else if meta.is_file() && !secrets::GITLEAKS.skips_path(&rel) && problems.len() < MAX_PROBLEMS {
                match read(&entry.path(), meta.len()) {
                    Content::Text(text) => {
                        scanned += 1;
                        scan_text(&rel, &text, true, &mut problems);
                    }
                    Content::Binary => {}
                    Content::Unread(why) => problems.push(format!("{rel}: {why}")),
                }
            }
        }
    }
    CheckResult {
        name: "secrets-scan".into(),
        duration: started.elapsed(),
        summary: format!(
            "the repository: {} scanned with {} gitleaks rules",
            count(scanned, "file", "files"),
            secrets::GITLEAKS.len()
        ),
        problems,
    }
}

#[cfg(test)]
mod tests;
