//! The worker's build caches: the output reused for the same inputs (and a miss naming what
//! changed), saved node_modules restored and sealed against builds, git mirrors (reuse,
//! force-push, corruption), and `--no-cache`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudbuild_proto::task::{CacheResult, Task, TaskState};
use cloudbuild_testkit::{get_text, package_json, request, Repo};

use crate::server;

fn publish(srv: &cloudbuild_testkit::Server, body: &serde_json::Value) -> (Task, String) {
    let (status, t) = srv.create(body);
    assert_eq!(status, 201, "{t}");
    let t = srv.wait_done(t["id"].as_i64().unwrap());
    // The stages' messages, then the output.
    let stages: Vec<String> = srv.actions(t.id).into_iter().map(|(a, m)| format!("{a}: {m}")).collect();
    let log = format!("{}\n{}", stages.join("\n"), srv.output(t.id));
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{log}\n{}", srv.log());
    (t, log)
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The directories under `<work root>/.cache/<kind>/<project>` that hold entries.
fn entries(srv: &cloudbuild_testkit::Server, kind: &str, project: &str) -> Vec<PathBuf> {
    let dir = srv.data.path().join("data/work/.cache").join(kind).join(project);
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.join("entry.json").exists()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn the_same_inputs_reuse_the_output_and_a_miss_names_the_input_that_changed() {
    let srv = server("");
    let build = "node build.js";
    let repo = Repo::new(&[
        ("package.json", &package_json("cached-site", &[("build", build), ("build:alt", build)])),
        ("build.js", &cloudbuild_testkit::build_script("<h1>one</h1>")),
    ]);
    let body = repo.task_body("cached-site");
    let (first, log) = publish(&srv, &body);
    assert!(log.contains("output cache miss: no earlier build of main on this worker"), "{log}");
    assert_eq!(first.cache.as_ref().and_then(|c| c.output), Some(CacheResult::Miss));
    // No lockfile: nothing decides node_modules, so it is not cached.
    assert!(log.contains("dependency cache: off (no lockfile)"), "{log}");
    // Where the package managers keep their caches is said in ways npm does not warn about.
    assert!(log.contains("$ npm install") && !log.contains("Unknown env config"), "{log}");

    // The same commit again, to the other environment: the saved output, no install, no build.
    let mut prod = body.clone();
    prod["env"] = "prod".into();
    let (again, log) = publish(&srv, &prod);
    assert!(log.contains(&format!("output cache hit: same inputs as task {}", first.id)), "{log}");
    assert!(!log.contains("$ npm run build") && !log.contains("$ npm install"), "nothing ran:\n{log}");
    let cache = again.cache.clone().unwrap();
    assert_eq!((cache.output, cache.output_of), (Some(CacheResult::Hit), Some(first.id)));
    assert_eq!(get_text(&again.url.unwrap()).1, "<h1>one</h1>");
    // And to the first environment: its contents are there already, nothing is uploaded.
    let (_, log) = publish(&srv, &body);
    assert!(log.contains("uploaded 0 files (0 bytes)"), "{log}");

    // Each input that changes misses, naming itself against the branch's last build.
    let mut alt = body.clone();
    alt["build_cmd"] = "npm run build:alt".into();
    let (_, log) = publish(&srv, &alt);
    assert!(log.contains("output cache miss: changed since the last build of main: build command (npm run build → npm run build:alt)"), "{log}");
    let (status, _) = request(
        "PUT",
        &format!("{}/api/v1/projects/cached-site/secrets/test/API_URL", srv.url),
        Some(&serde_json::json!({ "value": "https://api.example.com", "stages": ["build"] })),
    );
    assert!((200..300).contains(&status), "{status}");
    let (_, log) = publish(&srv, &body);
    assert!(log.contains("output cache miss: changed since the last build of main: build command (npm run build:alt → npm run build), secrets (none → "), "{log}");
    repo.commit(&[("build.js", &cloudbuild_testkit::build_script("<h1>two</h1>"))], "two");
    let (changed, log) = publish(&srv, &body);
    assert!(log.contains("output cache miss: changed since the last build of main: tree ("), "{log}");
    assert_eq!(get_text(&changed.url.unwrap()).1, "<h1>two</h1>");

    // --no-cache: neither read nor written.
    let saved = entries(&srv, "output", "cached-site").len();
    let mut fresh = body.clone();
    fresh["no_cache"] = true.into();
    repo.commit(&[("build.js", &cloudbuild_testkit::build_script("<h1>three</h1>"))], "three");
    let (t, log) = publish(&srv, &fresh);
    assert!(t.no_cache && log.contains("caches: off (this publish said --no-cache)"), "{log}");
    let cache = t.cache.unwrap();
    assert_eq!((cache.dependencies, cache.output), (Some(CacheResult::Off), Some(CacheResult::Off)));
    assert_eq!(entries(&srv, "output", "cached-site").len(), saved, "a --no-cache build saves nothing");

    // On the worker's machine: list, then clear.
    let data = srv.data.path().join("data");
    let list = srv.cli(Path::new("."), &["cache", "list", "--data-dir", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success() && text.contains("output") && text.contains("cached-site"), "{text}");
    assert!(text.contains(&format!("{saved} entries")), "{text}");
    let clear = srv.cli(Path::new("."), &["cache", "clear", "--data-dir", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&clear.stdout);
    assert!(clear.status.success() && text.contains(&format!("removed {saved} entries")), "{text}");
    assert!(entries(&srv, "output", "cached-site").is_empty());
    let (_, log) = publish(&srv, &body);
    assert!(log.contains("git mirror: none for this repository yet"), "the mirrors went too:\n{log}");
}

/// A project with one dependency, a tarball in the repository (`file:dep-1.0.0.tgz`), locked.
fn project_with_a_dependency(name: &str) -> Repo {
    let build = r#"const fs = require('fs');
let write = 'written';
try { fs.writeFileSync('node_modules/dep/index.js', 'module.exports = "changed by a build"'); } catch (e) { write = 'refused: ' + e.code; }
fs.mkdirSync('dist', { recursive: true });
fs.writeFileSync('dist/index.html', require('dep') + '; ' + write);
"#;
    let repo = Repo::new(&[("build.js", build), (".gitignore", "node_modules/\ndist/\n")]);
    depend_on(&repo, name, "1.0.0");
    repo
}

/// Packs `dep` at `version` into the repository, depends on it, locks and commits.
fn depend_on(repo: &Repo, name: &str, version: &str) {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("package.json"), format!(r#"{{"name":"dep","version":"{version}"}}"#)).unwrap();
    std::fs::write(src.path().join("index.js"), format!("module.exports = 'dep {version}'")).unwrap();
    let npm = |dir: &Path, args: &[&str]| {
        let out = Command::new("npm").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "npm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    npm(src.path(), &["pack", "--pack-destination", repo.work.to_str().unwrap()]);
    let pkg = serde_json::json!({
        "name": name, "version": "1.0.0", "private": true,
        "scripts": { "build": "node build.js" },
        "dependencies": { "dep": format!("file:dep-{version}.tgz") },
    });
    std::fs::write(repo.work.join("package.json"), pkg.to_string()).unwrap();
    npm(&repo.work, &["install", "--package-lock-only", "--no-audit", "--no-fund"]);
    repo.commit(&[], &format!("dep {version}"));
}

#[test]
fn saved_node_modules_are_restored_sealed_against_builds_and_missed_by_their_key() {
    let srv = server("");
    let repo = project_with_a_dependency("deps-site");
    let body = repo.task_body("deps-site");
    let (first, log) = publish(&srv, &body);
    assert!(log.contains("dependency cache miss") && log.contains("$ npm ci"), "{log}");
    assert!(log.contains("dependency cache: node_modules saved for later builds"), "{log}");
    // Saved before the build ran, and read-only to it from then on.
    assert_eq!(get_text(&first.url.clone().unwrap()).1, "dep 1.0.0; refused: EACCES");

    repo.commit(
        &[("build.js", &std::fs::read_to_string(repo.work.join("build.js")).unwrap().replace("; '", ";; '"))],
        "source",
    );
    let (second, log) = publish(&srv, &body);
    assert!(log.contains(&format!("dependency cache hit: node_modules of task {} restored", first.id)), "{log}");
    assert!(!log.contains("$ npm ci"), "{log}");
    assert_eq!(second.cache.as_ref().and_then(|c| c.dependencies), Some(CacheResult::Hit));
    assert_eq!(get_text(&second.url.unwrap()).1, "dep 1.0.0;; refused: EACCES", "the saved tree is unchanged");

    // Another install command: a miss that names it.
    repo.commit(&[("cloudbuild.toml", "[build]\ninstall = \"npm install\"\n")], "install");
    let (_, log) = publish(&srv, &body);
    assert!(
        log.contains(
            "dependency cache miss: changed since the last build of main: install command (npm ci → npm install)"
        ),
        "{log}"
    );
    repo.commit(&[("cloudbuild.toml", "")], "install back");
    let (_, log) = publish(&srv, &body);
    assert!(log.contains("dependency cache hit"), "the first key's tree again:\n{log}");

    // A dependency bumped: the lockfile changed, which the miss names.
    depend_on(&repo, "deps-site", "1.0.1");
    let (third, log) = publish(&srv, &body);
    assert!(
        log.contains("dependency cache miss: changed since the last build of main: lockfile (package-lock.json "),
        "{log}"
    );
    assert!(get_text(&third.url.unwrap()).1.starts_with("dep 1.0.1"));

    // A saved tree changed on disk is dropped, and the build installs instead.
    for entry in entries(&srv, "deps", "deps-site") {
        let file = entry.join("tree/dep/index.js");
        if std::fs::read_to_string(&file).unwrap().contains("1.0.1") {
            std::fs::remove_file(&file).unwrap();
            std::fs::write(&file, "module.exports = 'tampered'").unwrap();
        }
    }
    repo.commit(&[("README.md", "a change")], "readme");
    let (fourth, log) = publish(&srv, &body);
    assert!(log.contains("dependency cache: restoring failed (the saved tree changed: dep/index.js"), "{log}");
    assert!(log.contains("$ npm ci"), "{log}");
    assert!(get_text(&fourth.url.unwrap()).1.starts_with("dep 1.0.1;"));

    // The project's own install script may change node_modules from any of its files, which
    // no key covers: no dependency cache for it.
    let path = repo.work.join("package.json");
    let mut pkg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    pkg["scripts"]["postinstall"] = "node -e 0".into();
    repo.commit(&[("package.json", &pkg.to_string())], "postinstall");
    let (fifth, log) = publish(&srv, &body);
    assert!(log.contains("dependency cache: off (the project's own `postinstall` script runs at install"), "{log}");
    assert_eq!(fifth.cache.and_then(|c| c.dependencies), Some(CacheResult::Off));
}

#[test]
fn the_git_mirror_is_reused_follows_a_force_push_and_is_rebuilt_when_broken() {
    let srv = server("");
    let repo = Repo::site("mirrored", "<h1>one</h1>");
    let body = repo.task_body("mirrored");
    let (_, log) = publish(&srv, &body);
    assert!(log.contains("git mirror: none for this repository yet"), "{log}");
    let mirrors: Vec<PathBuf> = std::fs::read_dir(srv.data.path().join("data/work/.cache/git"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "git"))
        .collect();
    assert_eq!(mirrors.len(), 1, "{mirrors:?}");
    let mirror = &mirrors[0];

    repo.commit(&[("build.js", &cloudbuild_testkit::build_script("<h1>two</h1>"))], "two");
    let (t, log) = publish(&srv, &body);
    assert!(!log.contains("git mirror: none"), "the mirror is reused:\n{log}");
    assert_eq!(get_text(&t.url.unwrap()).1, "<h1>two</h1>");

    // History rewritten: the branch's new head is built.
    git(&repo.work, &["reset", "-q", "--hard", "HEAD~1"]);
    std::fs::write(repo.work.join("build.js"), cloudbuild_testkit::build_script("<h1>rewritten</h1>")).unwrap();
    git(&repo.work, &["commit", "-q", "-am", "rewritten"]);
    git(&repo.work, &["push", "-q", "--force", "origin", "HEAD:main"]);
    let (t, _) = publish(&srv, &body);
    assert_eq!(t.commit.as_deref(), Some(repo.head().as_str()));
    assert_eq!(get_text(&t.url.unwrap()).1, "<h1>rewritten</h1>");

    // A broken mirror: the build clones without it, and the next build makes a new one.
    std::fs::write(mirror.join("config"), "[core\nnot git's config").unwrap();
    repo.commit(&[("build.js", &cloudbuild_testkit::build_script("<h1>after</h1>"))], "after");
    let (t, log) = publish(&srv, &body);
    assert!(log.contains("git mirror: fetching into it failed ("), "{log}");
    assert!(log.contains("the repository answered a direct clone, so the mirror was at fault; it is removed"), "{log}");
    assert_eq!(get_text(&t.url.unwrap()).1, "<h1>after</h1>");
    repo.commit(&[("build.js", &cloudbuild_testkit::build_script("<h1>next</h1>"))], "next");
    let (_, log) = publish(&srv, &body);
    assert!(log.contains("git mirror: none for this repository yet"), "{log}");
}
