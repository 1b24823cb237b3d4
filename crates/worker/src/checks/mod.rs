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

/// The largest file the content checks read; bigger ones are named as not scanned.
const MAX_SCANNED_BYTES: u64 = 8 << 20;
/// How many offending files or lines a failure lists.
const SHOWN: usize = 10;

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

/// Reads a file for scanning: `None` for one too large, or binary (a NUL in its first 8 KiB).
fn read_text(path: &Path, len: u64) -> Option<String> {
    if len > MAX_SCANNED_BYTES {
        return None;
    }
    let mut bytes = Vec::with_capacity(len as usize);
    crate::publish::open_no_follow(path).ok()?.take(MAX_SCANNED_BYTES).read_to_end(&mut bytes).ok()?;
    if bytes.iter().take(8192).any(|b| *b == 0) {
        return None;
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
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

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// Runs the checks that look at the build output (`files`: each output file with where it
/// is); `script` checks are not among them (they run in `check`).
pub fn check_output(checks: &[MandatoryCheck], files: &[(ManifestFile, std::path::PathBuf)]) -> Vec<CheckResult> {
    checks.iter().filter(|c| !matches!(c, MandatoryCheck::Script { .. })).map(|c| check_one(c, files)).collect()
}

fn check_one(check: &MandatoryCheck, files: &[(ManifestFile, std::path::PathBuf)]) -> CheckResult {
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut summary = count(files.len() as u64, "file", "files");
    let texts = || files.iter().filter_map(|(f, p)| read_text(p, f.size).map(|t| (f.path.as_str(), t)));
    match check {
        MandatoryCheck::Script { .. } => {}
        MandatoryCheck::NoSourceMaps => {
            problems.extend(
                files
                    .iter()
                    .filter(|(f, _)| f.path.ends_with(".map"))
                    .map(|(f, _)| format!("{}: a source map", f.path)),
            );
            for (path, text) in texts().filter(|(p, _)| is_script(p) || p.ends_with(".css")) {
                if let Some(m) = SOURCE_MAP_COMMENT.find(&text) {
                    problems.push(format!("{path}:{}: a sourceMappingURL comment", line_of(&text, m.start())));
                }
            }
        }
        MandatoryCheck::NoDebugCode => {
            for (path, text) in texts().filter(|(p, _)| is_script(p)) {
                for m in DEBUGGER.find_iter(&text) {
                    // The match may begin with the character before the keyword (a newline).
                    let at = m.start() + m.as_str().find("debugger").unwrap_or(0);
                    problems.push(format!("{path}:{}: a debugger statement", line_of(&text, at)));
                }
            }
        }
        MandatoryCheck::SecretsScan => {
            let (found, scanned) = scan_texts(texts());
            problems = found;
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

fn scan_texts<'a>(texts: impl Iterator<Item = (&'a str, String)>) -> (Vec<String>, u64) {
    let mut problems = Vec::new();
    let mut scanned = 0;
    for (path, text) in texts {
        scanned += 1;
        for f in secrets::GITLEAKS.scan(path, &text) {
            // The rule and where, never the value: the log is read by many.
            problems.push(format!("{path}:{}: a secret ({})", f.line, f.rule));
        }
    }
    (problems, scanned)
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

/// The `secrets-scan` of the repository's files (not `.git`, not `node_modules`, not symlinks).
pub fn scan_checkout(root: &Path) -> CheckResult {
    let started = Instant::now();
    let mut texts = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let rel = format!("{prefix}{name}");
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() && name != ".git" && name != "node_modules" {
                stack.push((entry.path(), format!("{rel}/")));
            } else if meta.is_file() && !secrets::GITLEAKS.skips_path(&rel) {
                if let Some(text) = read_text(&entry.path(), meta.len()) {
                    texts.push((rel, text));
                }
            }
        }
    }
    texts.sort();
    let (problems, scanned) = scan_texts(texts.iter().map(|(p, t)| (p.as_str(), t.clone())));
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
