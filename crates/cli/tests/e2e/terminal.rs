//! How the CLI talks to people: closed pipes, error messages, a wrong `--server`, a repository
//! with no commits, `--help`, colours of build output, `logs` and `open` without an id.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use cloudbuild_testkit::{package_json, Repo};

use crate::server;

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs the CLI with stdout a pipe whose reader is already gone (`| head -0`).
fn with_closed_stdout(url: &str, cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut child = crate::cli_command()
        .args(args)
        .current_dir(cwd)
        .env("CLOUDBUILD_SERVER", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let srv = server("");
    let repo = Repo::site("pipe-site", "<h1>pipe</h1>");
    let publish = with_closed_stdout(&srv.url, &repo.work, &["publish"]);
    let id = srv.wait_done(1).id.to_string();
    for (what, out) in [
        ("publish", publish),
        ("logs", with_closed_stdout(&srv.url, &repo.work, &["logs", &id])),
        ("tasks", with_closed_stdout(&srv.url, &repo.work, &["tasks"])),
        ("releases", with_closed_stdout(&srv.url, &repo.work, &["releases", "pipe-site"])),
        ("workers", with_closed_stdout(&srv.url, &repo.work, &["workers"])),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{what}: {stderr}");
    }
}

#[test]
fn errors_show_the_message_and_the_code_only_when_asked() {
    let srv = server("");
    let dir = tempfile::tempdir().unwrap();
    let plain = srv.cli(dir.path(), &["cancel", "424242"]);
    assert_eq!(plain.status.code(), Some(2));
    let shown = String::from_utf8_lossy(&plain.stderr).trim().to_owned();
    assert_eq!(shown, "error: task 424242 does not exist");
    let verbose = srv.cli(dir.path(), &["cancel", "424242", "--verbose"]);
    assert!(text(&verbose).contains("task 424242 does not exist (not_found, HTTP 404)"), "{}", text(&verbose));
    let json = srv.cli(dir.path(), &["cancel", "424242", "--json"]);
    let err: serde_json::Value = serde_json::from_slice(&json.stderr).unwrap();
    assert_eq!((err["error"]["code"].as_str(), err["error"]["status"].as_u64()), (Some("not_found"), Some(404)));
    // A state the server does not know is refused before any request, with the valid ones.
    let bad = srv.cli(dir.path(), &["tasks", "--state", "done"]);
    assert_eq!(bad.status.code(), Some(2));
    let said = text(&bad);
    assert!(said.contains("invalid value 'done'") && said.contains("succeeded"), "{said}");
}

/// A web server that is not cloudbuild: answers every request with `status` and `body`.
fn foreign_server(status: &'static str, body: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let answer =
                format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    url
}

#[test]
fn a_server_that_is_not_cloudbuild_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let html = "<!doctype html><title>Welcome</title>";
    for (status, body, command) in [
        ("404 Not Found", "", "tasks"),
        ("404 Not Found", "<html><body><h1>404</h1><p>nginx</p></body></html>", "tasks"),
        ("200 OK", html, "tasks"),
        ("200 OK", html, "logs"),
    ] {
        let url = foreign_server(status, body);
        let args =
            if command == "logs" { vec!["logs", "1", "--server", &url] } else { vec![command, "--server", &url] };
        let out = crate::cli_command().args(&args).current_dir(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{command} against {status}");
        let said = text(&out);
        assert!(said.contains("is not a cloudbuild server") && said.contains("cloudbuild server"), "{said}");
        assert!(!said.contains("<html") && !said.contains("<title"), "no HTML page: {said}");
    }
    // A proxy's failure in front of a real server is not blamed on --server.
    let url = foreign_server("502 Bad Gateway", "<html>bad gateway</html>");
    let out = crate::cli_command().args(["tasks", "--server", &url]).current_dir(dir.path()).output().unwrap();
    let said = text(&out);
    assert!(said.contains("HTTP 502") && said.contains("a proxy") && !said.contains("not a cloudbuild"), "{said}");
}

#[test]
fn a_repository_without_commits_says_what_to_do() {
    let srv = server("");
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        assert!(Command::new("git").args(args).current_dir(dir.path()).status().unwrap().success());
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["remote", "add", "origin", "https://example.com/app.git"]);
    std::fs::write(dir.path().join("package.json"), package_json("no-commits", &[])).unwrap();
    let out = srv.cli(dir.path(), &["publish"]);
    assert_eq!(out.status.code(), Some(2));
    let said = text(&out);
    assert!(said.contains("no commits yet") && said.contains("git commit"), "{said}");
    assert!(!said.contains("fatal:"), "no raw git output: {said}");
}

#[test]
fn help_names_environment_variables_without_values_and_tokens_apart() {
    let help = |args: &[&str]| {
        let out = crate::cli_command().args(args).env("CLOUDBUILD_SERVER", "").output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tasks = help(&["tasks", "--help"]);
    assert!(tasks.contains("[env: CLOUDBUILD_SERVER]") && !tasks.contains("CLOUDBUILD_SERVER="), "{tasks}");
    assert!(tasks.contains("--token"), "{tasks}");
    let worker = help(&["worker", "--help"]);
    assert!(worker.contains("--worker-token") && !worker.contains("--token <"), "{worker}");
}

#[test]
fn build_colours_reach_a_pipe_as_plain_text() {
    let srv = server("");
    // What picocolors prints under CI=true: SGR sequences even into a pipe.
    let colourful = "console.log('\\x1b[36mvite v8\\x1b[39m \\x1b[32mbuilt\\x1b[39m');\
        require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/index.html','c')";
    let repo = Repo::new(&[
        ("package.json", &package_json("colour-site", &[("build", "node build.js")])),
        ("build.js", colourful),
    ]);
    // NO_COLOR unset: that stdout is a pipe must be enough to drop the colours.
    let out = crate::cli_command()
        .arg("publish")
        .current_dir(&repo.work)
        .env("CLOUDBUILD_SERVER", &srv.url)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("vite v8 built"), "colours dropped, text kept: {all}");
    assert!(!all.contains('\x1b') && !all.contains("\\u{1b}"), "no escapes, raw or shown: {all}");
    // Stage lines end with their duration.
    assert!(all.lines().any(|l| l.starts_with("==> [5/7] build: ") && l.ends_with(" s)")), "{all}");
}

#[test]
fn the_server_log_is_plain_text_when_it_is_not_a_terminal() {
    // The test server's stderr is a pipe, and NO_COLOR is not set for it.
    let srv = server("");
    let repo = Repo::site("log-site", "<h1>log</h1>");
    assert!(srv.cli(&repo.work, &["publish"]).status.success());
    let log = srv.log();
    assert!(log.contains("task queued"), "{log}");
    assert!(!log.contains('\x1b'), "no colour codes in a redirected log: {log:?}");
    // `tasks` shows how long each task took.
    let table = text(&srv.cli(&repo.work, &["tasks"]));
    let row = table.lines().find(|l| l.contains("log-site")).unwrap();
    assert!(table.starts_with(&format!("{:>6}", "ID")) && table.contains("DURATION"), "{table}");
    assert!(row.contains(" s "), "a duration in seconds in: {row}");
}

#[test]
fn logs_and_open_find_the_project_of_the_current_directory() {
    let srv = server("");
    let repo = Repo::site("here-site", "<h1>here</h1>");
    assert!(srv.cli(&repo.work, &["publish"]).status.success());
    let logs = srv.cli(&repo.work, &["logs"]);
    assert!(logs.status.success() && text(&logs).contains("build success"), "{}", text(&logs));
    let url = srv.site_url("test", "here-site");
    let printed = srv.cli(&repo.work, &["open", "--print"]);
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), url);
    // `open` hands the URL to the desktop's opener (xdg-open here, a stand-in that records it).
    let bin_dir = tempfile::tempdir().unwrap();
    let seen = bin_dir.path().join("seen");
    let opener = bin_dir.path().join("xdg-open");
    std::fs::write(&opener, format!("#!/bin/sh\necho \"$1\" > {}\n", seen.display())).unwrap();
    std::fs::set_permissions(&opener, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin_dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let out = crate::cli_command()
        .arg("open")
        .current_dir(&repo.work)
        .env("CLOUDBUILD_SERVER", &srv.url)
        .env("PATH", path)
        .env_remove("BROWSER")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.is_file() {
        assert!(std::time::Instant::now() < deadline, "the opener was not run");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let opened = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(opened.trim(), url);
    // Elsewhere, with no task named and no package.json: a clear error.
    let empty = tempfile::tempdir().unwrap();
    let out = srv.cli(empty.path(), &["logs"]);
    assert!(text(&out).contains("pass a task id"), "{}", text(&out));
}
