//! The server's mandatory checks with the real binary, on fixture projects: a clean project
//! passes every check (each logged with its duration) and publishes; each check fails a
//! project that breaks it, naming the files and lines, before anything is published; a
//! repository cannot turn them off (its `cloudbuild.toml` has no such key, and a
//! `gitleaks:allow` comment hides nothing); `no-source-maps` holds prod only.

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{get_text, package_json, Repo, Server};
use serde_json::json;

const CHECKS: &str = r#"
[[checks]]
kind = "script"
script = "lint"
[[checks]]
kind = "no-source-maps"
[[checks]]
kind = "no-debug-code"
[[checks]]
kind = "secrets-scan"
[[checks]]
kind = "size-budget"
total_gzip_bytes = 20000
file_gzip_bytes = 8000
[[checks]]
kind = "required-files"
files = ["index.html"]
[[checks]]
kind = "forbidden-paths"
paths = [".env"]
"#;

/// A project whose build writes `output` (path → content) into `dist/`, with a `lint` script
/// (`lint`: its command; none: no such script) and more repository files.
fn project(name: &str, output: &[(&str, &str)], lint: Option<&str>, files: &[(&str, &str)]) -> Repo {
    let out: serde_json::Map<String, serde_json::Value> =
        output.iter().map(|(p, c)| ((*p).to_owned(), json!(c))).collect();
    let build = format!(
        "const fs=require('fs'),path=require('path');const out={};\
         for(const [p,c] of Object.entries(out)){{fs.mkdirSync(path.dirname('dist/'+p),{{recursive:true}});fs.writeFileSync('dist/'+p,c);}}",
        serde_json::Value::Object(out)
    );
    let mut scripts = vec![("build", "node build.js")];
    if let Some(l) = lint {
        scripts.push(("lint", l));
    }
    let pkg = package_json(name, &scripts);
    let mut all = vec![("package.json", pkg.as_str()), ("build.js", build.as_str())];
    all.extend_from_slice(files);
    Repo::new(&all)
}

/// Publishes `repo` as `name` to `env` and waits for the end; the task and its log.
fn publish(srv: &Server, repo: &Repo, name: &str, env: &str) -> (cloudbuild_proto::task::Task, String) {
    let mut body = repo.task_body(name);
    body["env"] = json!(env);
    let (status, task) = srv.create(&body);
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();
    let done = srv.wait_done(id);
    (done, srv.output(id))
}

const PAGE: (&str, &str) = ("index.html", "<h1>checked</h1>");

#[test]
fn mandatory_checks_pass_a_clean_project_and_fail_each_kind_of_fault() {
    let srv = crate::server(CHECKS);
    let clean = project("clean", &[PAGE, ("assets/app.js", "console.log('debuggerless')")], Some("node -e 0"), &[]);
    let (done, log) = publish(&srv, &clean, "clean", "prod");
    assert_eq!(done.state, TaskState::Succeeded, "{log}");
    for name in [
        "secrets-scan",
        "script:lint",
        "no-source-maps",
        "no-debug-code",
        "size-budget",
        "required-files",
        "forbidden-paths",
    ] {
        assert!(log.contains(&format!("mandatory check {name} passed in ")), "{name} in:\n{log}");
    }
    assert_eq!(get_text(&srv.site_url("prod", "clean")).1, "<h1>checked</h1>");

    let key = format!("const key = \"AKIA{}\"; // gitleaks:allow\n", "Z7QH2KXB4N5PLR3M");
    // 40,000 pseudo-random hex digits (xorshift): about 20 kB gzip, over both budgets.
    let big: String = {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..40_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from_digit((x % 16) as u32, 16).unwrap()
            })
            .collect()
    };
    let faults: Vec<(&str, Repo, &str, &str)> = vec![
        ("no-lint", project("no-lint", &[PAGE], None, &[]), "package.json has no `lint` script", "check"),
        (
            "bad-lint",
            project("bad-lint", &[PAGE], Some("node -e process.exit(3)"), &[]),
            "mandatory check `script:lint` failed",
            "check",
        ),
        (
            "leaky",
            project("leaky", &[PAGE], Some("node -e 0"), &[("src/config.js", &key)]),
            "src/config.js:1: a secret (aws-access-token)",
            "check",
        ),
        (
            "debugging",
            project("debugging", &[PAGE, ("app.js", "x();\ndebugger;\n")], Some("node -e 0"), &[]),
            "app.js:2: a debugger statement",
            "pre-publish",
        ),
        (
            "mapped",
            project("mapped", &[PAGE, ("app.js.map", "{}")], Some("node -e 0"), &[]),
            "app.js.map: a source map",
            "pre-publish",
        ),
        ("heavy", project("heavy", &[PAGE, ("blob.js", &big)], Some("node -e 0"), &[]), "blob.js: ", "pre-publish"),
        (
            "headless",
            project("headless", &[("main.html", "x")], Some("node -e 0"), &[]),
            "index.html: required, not in the output",
            "pre-publish",
        ),
        (
            "dotenv",
            project("dotenv", &[PAGE, (".env", "A=1")], Some("node -e 0"), &[]),
            ".env: a forbidden path",
            "pre-publish",
        ),
    ];
    for (name, repo, says, stage) in &faults {
        let (done, log) = publish(&srv, repo, name, "prod");
        assert_eq!(done.state, TaskState::Failed, "{name}:\n{log}");
        let reason = done.reason.clone().unwrap_or_default();
        assert!(reason.contains(says), "{name}: {reason}\n{log}");
        assert_eq!(done.stage.map(|s| s.action().to_owned()).as_deref(), Some(*stage), "{name}: {reason}");
        let (status, _) = get_text(&srv.site_url("prod", name));
        assert_eq!(status, 404, "{name}: nothing published");
    }

    // Source maps are refused in prod only (the default of that check).
    let mapped = &faults.iter().find(|f| f.0 == "mapped").unwrap().1;
    let (done, log) = publish(&srv, mapped, "mapped", "test");
    assert_eq!(done.state, TaskState::Succeeded, "{log}");

    // A repository cannot turn the server's checks off: its cloudbuild.toml has no such key.
    let toml = "[checks]\nmandatory = false\n";
    let off = project("off", &[PAGE], None, &[("cloudbuild.toml", toml)]);
    let (done, log) = publish(&srv, &off, "off", "prod");
    assert_eq!(done.state, TaskState::Failed, "{log}");
    assert!(done.reason.unwrap_or_default().contains("cloudbuild.toml"), "{log}");
}
