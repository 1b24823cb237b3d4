//! The `cloudbuild` CLI as a user runs it: publish in a checkout, logs, tasks, cancel, retry,
//! and the errors a user meets.

use std::time::Duration;

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{get_text, package_json, Repo};

use crate::server;

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_clis_own_messages_follow_cloudbuild_lang_then_the_locale() {
    let srv = server("");
    let repo = Repo::site("zh-site", "<h1>zh</h1>");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = crate::cli_command();
        cmd.args(args).current_dir(&repo.work).env("CLOUDBUILD_SERVER", &srv.url).env("NO_COLOR", "1");
        for var in ["CLOUDBUILD_LANG", "LC_ALL", "LC_MESSAGES", "LANG"] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied()).output().unwrap()
    };
    let out = run(&[("LANG", "zh_CN.UTF-8")], &["publish"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("正在发布 zh-site@1.0.0 到 test："), "{all}");
    assert!(all.contains(&format!("已发布：{}", srv.site_url("test", "zh-site"))), "{all}");
    let zh = text(&run(&[("CLOUDBUILD_LANG", "zh-CN"), ("LC_ALL", "C")], &["publish", "--branch", "nope"]));
    assert!(zh.starts_with("错误：`origin`") && zh.contains("没有分支或标签 `nope`"), "{zh}");
    let en = text(&run(&[("LANG", "zh_CN.UTF-8"), ("LC_ALL", "C.UTF-8")], &["publish", "--branch", "nope"]));
    assert!(en.starts_with("error: `origin`") && en.contains("has no branch or tag `nope`"), "LC_ALL wins: {en}");
}

#[test]
fn publish_streams_the_build_and_prints_the_url() {
    let srv = server("");
    let repo = Repo::site("cli-site", "<h1>cli</h1>");
    let out = srv.cli(&repo.work, &["publish"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let url = srv.site_url("test", "cli-site");
    assert!(all.contains(&format!("published: {url}")), "{all}");
    for stage in ["prepare", "download repo", "install", "build", "pre-publish", "publish", "build success"] {
        assert!(all.contains(&format!("{stage}:")), "missing {stage}: {all}");
    }
    assert!(all.contains("built"), "build output is shown live: {all}");
    assert_eq!(get_text(&url).1, "<h1>cli</h1>");

    // logs replays the same task; tasks lists it; --json is machine-readable.
    let logs = srv.cli(&repo.work, &["logs", "1"]);
    assert!(logs.status.success() && text(&logs).contains("build success"), "{}", text(&logs));
    let list = srv.cli(&repo.work, &["tasks", "--json"]);
    let page: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(page["tasks"][0]["trigger"], "cli");
    assert_eq!(page["tasks"][0]["state"], "succeeded");
    let table = text(&srv.cli(&repo.work, &["tasks"]));
    assert!(table.contains("succeeded") && table.contains("cli-site"), "{table}");
    // Times say their zone: the server may be in another one.
    let created = page["tasks"][0]["created_at"].as_str().unwrap();
    assert!(table.contains(&format!("{}Z", &created[..19])), "{table}");
}

#[test]
fn publish_of_a_failing_build_exits_non_zero_naming_the_stage() {
    let srv = server("");
    let repo = Repo::new(&[("package.json", &package_json("cli-fail", &[("build", "node -e \"process.exit(2)\"")]))]);
    let out = srv.cli(&repo.work, &["publish"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("build failed") && all.contains("task 1 failed"), "{all}");

    // retry makes a new, linked task, and follows it.
    let out = srv.cli(&repo.work, &["retry", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let t = srv.task(2);
    assert_eq!((t.retry_of, t.state), (Some(1), TaskState::Failed));
    assert_eq!(t.trigger, cloudbuild_proto::task::Trigger::Retry);
}

#[test]
fn detach_then_follow_with_logs() {
    let srv = server("");
    let repo = Repo::site("cli-detach", "d");
    let out = srv.cli(&repo.work, &["publish", "--detach"]);
    assert!(out.status.success());
    assert!(text(&out).contains("cloudbuild logs 1 --follow"), "{}", text(&out));
    let out = srv.cli(&repo.work, &["logs", "1", "--follow"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("published: "));
    let json = srv.cli(&repo.work, &["logs", "1", "--json"]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&json.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.last().unwrap()["event"], "end");
}

#[test]
fn user_errors_are_clear() {
    let srv = server("");
    // Not a git checkout.
    let dir = tempfile::tempdir().unwrap();
    let out = srv.cli(dir.path(), &["publish"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not inside a git checkout"), "{}", text(&out));
    // An invalid version in package.json is refused by the server with the rule.
    let repo = Repo::new(&[("package.json", r#"{"name":"bad-version","version":"1.0"}"#)]);
    let out = srv.cli(&repo.work, &["publish"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("invalid version"), "{}", text(&out));
    // A server that does not answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = crate::cli_command().args(["tasks", "--server", &format!("http://{closed}")]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("cannot reach the cloudbuild server"), "{}", text(&out));
    // A server that accepts the connection but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let out = crate::cli_command().args(["tasks", "--server", &format!("http://{addr}")]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no answer within 5 s"), "{}", text(&out));
}

#[test]
fn non_interactive_interrupt_leaves_the_build_running() {
    let srv = server("");
    let pid_file = srv.probe.path().join("int.pid");
    let repo = Repo::new(&[
        ("package.json", &package_json("cli-int", &[("build", "node hang.js")])),
        ("hang.js", &cloudbuild_testkit::hang_script(pid_file.to_str().unwrap())),
    ]);
    let child = crate::cli_command()
        .arg("publish")
        .current_dir(&repo.work)
        .env("CLOUDBUILD_SERVER", &srv.url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cloudbuild_testkit::wait_file(&pid_file, Duration::from_secs(60)).expect("build started");
    cloudbuild_testkit::signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("cloudbuild logs 1 --follow"), "{}", text(&out));
    assert_eq!(srv.task(1).state, TaskState::Running, "the build keeps running");
    let out = srv.cli(&repo.work, &["cancel", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(srv.wait_done(1).state, TaskState::Cancelled);
}

#[test]
fn the_server_shuts_down_cleanly_on_sigterm_and_leaves_no_build_behind() {
    let mut srv = server("[timeouts]\nkill_grace_secs = 2\n");
    let pid_file = srv.probe.path().join("term.pid");
    let repo = Repo::new(&[
        ("package.json", &package_json("cli-term", &[("build", "node hang.js")])),
        // Ignores SIGTERM: only the SIGKILL after the kill grace stops it.
        (
            "hang.js",
            &format!(
                "process.on('SIGTERM', () => {{}});\n{}",
                cloudbuild_testkit::hang_script(pid_file.to_str().unwrap())
            ),
        ),
    ]);
    srv.create(&repo.task_body("cli-term"));
    let pid = cloudbuild_testkit::wait_build_pid(&pid_file, srv.pid(), Duration::from_secs(60)).unwrap();
    cloudbuild_testkit::signal(srv.pid(), "TERM");
    let status = srv.wait_exit(Duration::from_secs(15)).expect("server exited");
    assert!(status.success(), "{status:?}\n{}", srv.log());
    assert!(!cloudbuild_testkit::alive(pid), "the running build was stopped with the server");
}

#[test]
fn bad_configuration_stops_the_server_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[limits]\noutput_byte = 10\n").unwrap();
    let run = |env: &[(&str, &str)]| {
        crate::cli_command()
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    // The client commands' own variables are not server settings.
    let out = run(&[("CLOUDBUILD_LANG", "zh-CN"), ("CLOUDBUILD_CONFIG_DIR", "/nonexistent")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("output_byte") && !text(&out).contains("`lang`"), "{}", text(&out));
    assert!(!text(&out).contains("config_dir"), "{}", text(&out));
    // In the key's own words: no figment profile prefix, no doubled backticks.
    std::fs::write(&config, "[sandbox]\nmode = \"of\"\n").unwrap();
    let out = run(&[]);
    assert!(
        text(&out).contains("key `sandbox.mode`")
            && text(&out).contains("unknown value `of`; expected `bwrap` or `off`"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("default.") && !text(&out).contains("``"), "{}", text(&out));
    // Environment variables are a layer over the file, nested with `__`.
    std::fs::write(&config, "").unwrap();
    let out = run(&[("CLOUDBUILD_LIMITS__MAX_ATTEMPTS", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("limits.max_attempts"), "{}", text(&out));
    let out = run(&[("CLOUDBUILD_GIT__ALLOWED_PROTOCOLS", "[https,gopher]")]);
    assert!(text(&out).contains("gopher"), "{}", text(&out));
    // The store: a wrong kind is named; an unreachable Redis stops the start with the reason,
    // and its password is not printed.
    let out = run(&[("CLOUDBUILD_STORE", "postgres://db/cb")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("invalid store") && text(&out).contains("redis://"), "{}", text(&out));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = run(&[("CLOUDBUILD_STORE", &format!("redis://:s3cret-pw@127.0.0.1:{port}"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("storage unavailable"), "{}", text(&out));
    assert!(!text(&out).contains("s3cret-pw"), "{}", text(&out));
}
