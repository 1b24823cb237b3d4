//! Checks of the code's shape that review would otherwise have to remember: every Rust file
//! says what it is for, long files say why, crates depend only on what ARCHITECTURE.md allows,
//! and the server's domain services know no HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files longer than this must say why in a comment containing [`LONG_FILE_NOTE`].
const MAX_LINES: usize = 600;
const LONG_FILE_NOTE: &str = "longer than 600 lines because";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Every `.rs` file under `crates/`, outside build output and npm packages.
fn rust_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root().join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "target" && name != "node_modules" {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    assert!(out.len() > 50, "the walk found the sources");
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

#[test]
fn every_rust_file_starts_with_what_it_is_for() {
    let missing: Vec<String> = rust_files()
        .into_iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().starts_with("//!"))
        .map(|p| relative(&p))
        .collect();
    assert!(missing.is_empty(), "files without a leading `//!` line: {missing:?}");
}

#[test]
fn long_files_say_why() {
    let long: Vec<String> = rust_files()
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let lines = text.lines().count();
            (lines > MAX_LINES && !text.contains(LONG_FILE_NOTE)).then(|| format!("{} ({lines} lines)", relative(&p)))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines without a comment saying `{LONG_FILE_NOTE} …`: {long:?}");
}

/// The internal dependencies each crate may have, from ARCHITECTURE.md's code map: the rows
/// `` | `crates/<name>` | … | `proto`, `store` | ``.
fn allowed_by_architecture() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut allowed = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `crates/")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        let name = cells[0].trim().trim_matches('`').trim_start_matches("crates/").to_owned();
        let last = cells.last().unwrap();
        let deps = last.split('`').skip(1).step_by(2).map(str::to_owned).collect();
        allowed.insert(name, deps);
    }
    assert!(allowed.len() >= 6, "ARCHITECTURE.md's code map lists the crates: {allowed:?}");
    allowed
}

/// The `cloudbuild-*` crates in the `[dependencies]` table of a crate's Cargo.toml.
fn internal_dependencies(krate: &str) -> BTreeSet<String> {
    let manifest = std::fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml")).unwrap();
    let mut section = String::new();
    let mut deps = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
        } else if section == "[dependencies]" {
            if let Some(rest) = line.strip_prefix("cloudbuild-") {
                deps.insert(rest.split(['.', ' ', '=']).next().unwrap().to_owned());
            }
        }
    }
    deps
}

#[test]
fn crates_depend_only_on_what_the_architecture_allows() {
    let allowed = allowed_by_architecture();
    let crates: Vec<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for krate in crates {
        let Some(may) = allowed.get(&krate) else {
            panic!("crates/{krate} is missing from ARCHITECTURE.md's code map")
        };
        let has = internal_dependencies(&krate);
        let extra: Vec<&String> = has.difference(may).collect();
        assert!(extra.is_empty(), "crates/{krate} depends on {extra:?}, which ARCHITECTURE.md does not allow");
    }
}

/// The server's files under `dir` (a file or a directory of `crates/server/src`) that mention
/// any of `words`; panics if `dir` holds no Rust file (a renamed module must not pass).
fn server_files_mentioning(dir: &str, words: &[&str]) -> Vec<String> {
    let base = root().join("crates/server/src").join(dir);
    let files: Vec<PathBuf> = rust_files().into_iter().filter(|p| p.starts_with(&base)).collect();
    assert!(!files.is_empty(), "crates/server/src/{dir} has no Rust file");
    files
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            words.iter().any(|word| text.contains(word))
        })
        .map(|p| relative(&p))
        .collect()
}

#[test]
fn the_servers_domain_services_know_no_http() {
    let offending =
        server_files_mentioning("domain", &["axum::", "crate::api", "crate::socketio", "crate::web", "socketioxide::"]);
    assert!(offending.is_empty(), "domain modules that reach HTTP or an adapter: {offending:?}");
}

#[test]
fn the_servers_lower_modules_do_not_reach_up() {
    // Module order (ARCHITECTURE.md): adapters → domain → everything below; nothing below
    // imports the domain or an adapter, so there is no cycle.
    for lower in
        ["scheduler.rs", "cluster.rs", "hub.rs", "state.rs", "secrets.rs", "uploads.rs", "config", "targets", "sites"]
    {
        let offending =
            server_files_mentioning(lower, &["crate::domain", "crate::api", "crate::socketio", "crate::web"]);
        assert!(offending.is_empty(), "{offending:?} import a module above them");
    }
}
