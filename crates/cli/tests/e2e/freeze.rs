//! Freeze windows with the real binary: a window added with the CLI refuses `publish --env
//! prod` with its reason and the time it opens in the caller's zone (`TZ`) while test goes
//! through; `--queue-until-open` waits `gated` and publishes by itself when a window of a few
//! seconds closes, across a server restart, and once with two servers on one Redis; overrides
//! need a reason and an allowed role (admins, or the role a project's window names) and are
//! audited and written in the build's log.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use cloudbuild_proto::gate::render_in_zone;
use cloudbuild_proto::task::{Task, TaskState};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_testkit::{get_text, request, request_as, RedisServer, Repo, Server, ServerOptions};
use serde_json::{json, Value};

use crate::cluster::{cluster_server, worker, worker_token};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `now` moved by `secs` (negative: earlier), as RFC 3339.
fn at(secs: i64) -> String {
    Timestamp(Timestamp::now().0 + secs * 1_000_000).to_string()
}

/// The id `freeze add` printed.
fn added_id(out: &str) -> String {
    out.split("freeze window ").nth(1).and_then(|r| r.split_whitespace().next()).expect(out).to_owned()
}

/// A `publish --detach --json` answer's task.
fn detached(out: Output) -> Task {
    serde_json::from_str(&ok(out)).expect("the task as JSON")
}

fn gate_actions(srv: &Server, id: i64) -> Vec<String> {
    srv.actions(id).into_iter().filter(|(a, _)| a.starts_with("gate ")).map(|(a, m)| format!("{a}: {m}")).collect()
}

#[test]
fn a_window_refuses_prod_lets_test_through_and_a_queued_publish_starts_when_it_closes_across_a_restart() {
    let mut srv = crate::server("");
    let repo = Repo::site("frozen", "<h1>after the freeze</h1>");
    let to = at(3600);
    let add = ["freeze", "add", "--reason", "双十一封网", "--from", &at(-60), "--to", &to];
    let id = added_id(&ok(srv.cli(&repo.work, &add)));

    let refused = srv.cli_with(&repo.work, &["publish", "--env", "prod"], &[("TZ", "Asia/Shanghai")]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let opens = render_in_zone(Timestamp::parse(&to).unwrap(), Some("Asia/Shanghai"));
    let said = text(&refused);
    assert!(said.contains("双十一封网") && said.contains(&opens) && said.contains("--queue-until-open"), "{said}");
    let status = ok(srv.cli(&repo.work, &["freeze", "status"]));
    assert!(status.contains("prod     FROZEN until") && status.contains("test     open"), "{status}");
    ok(srv.cli(&repo.work, &["publish", "--env", "test"]));
    assert_eq!(get_text(&srv.site_url("test", "frozen")).1, "<h1>after the freeze</h1>");
    ok(srv.cli(&repo.work, &["freeze", "remove", &id]));

    // A window of a few seconds: the publish waits gated, the server restarts, and the task
    // starts by itself once the window has closed.
    let to = at(6);
    ok(srv.cli(&repo.work, &["freeze", "add", "--reason", "deploy window", "--from", &at(-1), "--to", &to]));
    let task = detached(srv.cli(&repo.work, &["publish", "--env", "prod", "--queue-until-open", "--detach", "--json"]));
    assert_eq!(task.state, TaskState::Gated, "{task:?}");
    let listed = ok(srv.cli(&repo.work, &["tasks", "--state", "gated"]));
    assert!(listed.contains(&task.id.to_string()), "{listed}");
    srv.kill9();
    srv.restart().expect("the server starts again");
    let done = srv.wait_done(task.id);
    assert_eq!(done.state, TaskState::Succeeded, "{}", srv.output(task.id));
    assert!(done.started_at.unwrap() >= Timestamp::parse(&to).unwrap(), "started only once the window closed");
    let gates = gate_actions(&srv, task.id);
    assert_eq!(gates.len(), 1, "released once: {gates:?}");
    assert!(gates[0].starts_with("gate open"), "{gates:?}");
    assert!(srv.actions(task.id).iter().any(|(a, m)| a == "gated" && m.contains("held by freeze window")));
    assert_eq!(get_text(&srv.site_url("prod", "frozen")).1, "<h1>after the freeze</h1>");
}

#[test]
fn a_gated_publish_is_released_once_by_two_servers_on_redis() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let (a, b) = (cluster_server(&redis, shared.path(), ""), cluster_server(&redis, shared.path(), ""));
    let _worker = worker(&a, &worker_token(&a, "w"), "w", &[]);
    let repo = Repo::site("shared-freeze", "<h1>released once</h1>");
    ok(b.cli(&repo.work, &["freeze", "add", "--reason", "short", "--from", &at(-1), "--to", &at(5)]));
    let task = detached(a.cli(&repo.work, &["publish", "--env", "prod", "--queue-until-open", "--detach", "--json"]));
    assert_eq!(task.state, TaskState::Gated);
    // Cancelling a gated task works from either server; this one is left to run.
    let done = b.wait_done(task.id);
    assert_eq!(done.state, TaskState::Succeeded, "{}", b.output(task.id));
    assert_eq!(gate_actions(&a, task.id).len(), 1, "one release: {:?}", gate_actions(&a, task.id));
    let (_, page) = request("GET", &format!("{}/api/v1/audit?action=gate.release", a.url), None);
    assert_eq!(page["entries"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(get_text(&a.site_url("prod", "shared-freeze")).1, "<h1>released once</h1>");

    // A second one is cancelled while it waits, on the other server: it never runs.
    ok(a.cli(&repo.work, &["freeze", "add", "--reason", "long", "--from", &at(-1), "--to", &at(3600)]));
    repo.set_version("1.0.1");
    let waiting =
        detached(a.cli(&repo.work, &["publish", "--env", "prod", "--queue-until-open", "--detach", "--json"]));
    ok(b.cli(&repo.work, &["cancel", &waiting.id.to_string()]));
    let t = a.task(waiting.id);
    assert_eq!((t.state, t.started_at), (TaskState::Cancelled, None));
}

const PASSWORD: &str = "correct horse battery";

/// A server whose admin `ops` was made on its machine; no anonymous callers.
fn signed_server() -> (Server, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let mut create = Command::new(crate::bin())
        .args(["admin", "create", "ops", "--password-stdin", "--data-dir"])
        .arg(&data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    create.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    assert!(create.wait_with_output().unwrap().status.success());
    let opts = ServerOptions {
        extra_toml: "[auth]\nallow_anonymous = false\n",
        data_dir: Some(&data_dir),
        ..Default::default()
    };
    (Server::start_with(crate::bin(), opts).unwrap(), data)
}

fn login(srv: &Server, user: &str) -> String {
    let (status, body) =
        request("POST", &format!("{}/api/v1/login", srv.url), Some(&json!({"user": user, "password": PASSWORD})));
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

fn api(srv: &Server, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    request_as(method, &format!("{}{path}", srv.url), Some(token), Some(&body))
}

fn cli_as(srv: &Server, dir: &Path, token: &str, args: &[&str]) -> Output {
    srv.cli_with(dir, args, &[("CLOUDBUILD_TOKEN", token)])
}

#[test]
fn an_override_needs_a_reason_and_an_allowed_role_and_is_audited_and_logged() {
    let (srv, _data) = signed_server();
    let ops = login(&srv, "ops");
    assert_eq!(api(&srv, "POST", "/api/v1/users", &ops, json!({"name": "max", "password": PASSWORD})).0, 201);
    let max = login(&srv, "max");
    let repo = Repo::site("guarded", "<h1>guarded</h1>");
    let (status, body) = api(&srv, "POST", "/api/v1/projects", &ops, json!({"name": "guarded", "repo": repo.url}));
    assert_eq!(status, 201, "{body}");
    let member = api(&srv, "PUT", "/api/v1/projects/guarded/members/max", &ops, json!({"role": "maintainer"}));
    assert_eq!(member.0, 200, "{}", member.1);

    // A global window, admins only (maintainers may not add one).
    let window = ["freeze", "add", "--reason", "audit week", "--from", &at(-60), "--to", &at(3600)];
    let refused = cli_as(&srv, &repo.work, &max, &window);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let global = added_id(&ok(cli_as(&srv, &repo.work, &ops, &window)));

    // A maintainer may not override it; an admin must give a reason.
    let by_max = cli_as(&srv, &repo.work, &max, &["publish", "--env", "prod", "--override-freeze", "hotfix"]);
    assert_eq!(by_max.status.code(), Some(2));
    assert!(text(&by_max).contains("may be overridden by admins only"), "{}", text(&by_max));
    let no_reason = cli_as(&srv, &repo.work, &ops, &["publish", "--env", "prod", "--override-freeze", " "]);
    assert_eq!(no_reason.status.code(), Some(2));
    assert!(text(&no_reason).contains("needs a reason"), "{}", text(&no_reason));
    let args = ["publish", "--env", "prod", "--override-freeze", "INC-42 hotfix", "--detach", "--json"];
    let task: Task = serde_json::from_str(&ok(cli_as(&srv, &repo.work, &ops, &args))).unwrap();
    let (_, done) = loop {
        let (s, t) = api(&srv, "GET", &format!("/api/v1/tasks/{}", task.id), &ops, Value::Null);
        if t["state"] != "queued" && t["state"] != "running" {
            break (s, t);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(done["state"], "succeeded", "{done}");
    let log = ok(cli_as(&srv, &repo.work, &ops, &["logs", &task.id.to_string()]));
    assert!(log.contains("gate override") && log.contains("INC-42 hotfix") && log.contains("ops"), "{log}");
    let audit = ok(cli_as(&srv, &repo.work, &ops, &["audit", "--action", "gate.override"]));
    assert!(audit.contains("INC-42 hotfix") && audit.contains(&global), "{audit}");

    // A project window naming `maintainer` lets its maintainers override it.
    ok(cli_as(&srv, &repo.work, &ops, &["freeze", "remove", &global]));
    let own = [
        "freeze",
        "add",
        "--project",
        "guarded",
        "--reason",
        "team freeze",
        "--from",
        &at(-60),
        "--to",
        &at(3600),
        "--override-role",
        "maintainer",
    ];
    ok(cli_as(&srv, &repo.work, &max, &own));
    let listed = ok(cli_as(&srv, &repo.work, &max, &["freeze", "list", "--project", "guarded"]));
    assert!(listed.contains("team freeze") && listed.contains("ACTIVE until"), "{listed}");
    repo.set_version("1.0.1");
    let plain = cli_as(&srv, &repo.work, &max, &["publish", "--env", "prod"]);
    assert_eq!(plain.status.code(), Some(2), "{}", text(&plain));
    ok(cli_as(&srv, &repo.work, &max, &["publish", "--env", "prod", "--override-freeze", "team lead approved"]));
    let audit = ok(cli_as(&srv, &repo.work, &ops, &["audit", "--action", "gate.override"]));
    assert!(audit.contains("team lead approved") && audit.contains("max"), "{audit}");
}

#[test]
fn a_build_that_finishes_inside_a_window_that_began_while_it_ran_is_not_published() {
    let srv = crate::server("");
    let (building, go) = (srv.probe.path().join("building"), srv.probe.path().join("go"));
    // The build says it runs, then waits for the test's go-ahead before writing the site.
    let wait = format!(
        "const fs=require('fs');fs.writeFileSync({b:?},'1');\
         const t=setInterval(()=>{{if(fs.existsSync({g:?})){{clearInterval(t);{build}}}}},100);",
        b = building.to_str().unwrap(),
        g = go.to_str().unwrap(),
        build = cloudbuild_testkit::build_script("<h1>late</h1>"),
    );
    let pkg = cloudbuild_testkit::package_json("late", &[("build", "node wait.js")]);
    let repo = Repo::new(&[("package.json", &pkg), ("wait.js", &wait)]);
    let mut body = repo.task_body("late");
    body["env"] = json!("prod");
    let (status, task) = srv.create(&body);
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();
    cloudbuild_testkit::wait_file(&building, std::time::Duration::from_secs(60)).expect("the build runs");
    ok(srv.cli(&repo.work, &["freeze", "add", "--reason", "incident freeze", "--from", &at(-1), "--to", &at(3600)]));
    std::fs::write(&go, "1").unwrap();
    let done = srv.wait_done(id);
    assert_eq!(done.state, TaskState::Failed, "{}", srv.output(id));
    let reason = done.reason.unwrap_or_default();
    assert!(
        reason.contains("incident freeze") && reason.contains(&format!("began while task {id} was building")),
        "{reason}"
    );
    let (status, _) = cloudbuild_testkit::get_text(&srv.site_url("prod", "late"));
    assert_eq!(status, 404, "nothing was switched");
}

#[test]
fn a_prod_publish_waits_for_another_maintainers_approval_with_the_cli() {
    let (srv, _data) = signed_server();
    let ops = login(&srv, "ops");
    for user in ["max", "mia"] {
        assert_eq!(api(&srv, "POST", "/api/v1/users", &ops, json!({"name": user, "password": PASSWORD})).0, 201);
    }
    let (max, mia) = (login(&srv, "max"), login(&srv, "mia"));
    let repo = Repo::site("approved", "<h1>approved</h1>");
    assert_eq!(api(&srv, "POST", "/api/v1/projects", &ops, json!({"name": "approved", "repo": repo.url})).0, 201);
    for user in ["max", "mia"] {
        let path = format!("/api/v1/projects/approved/members/{user}");
        assert_eq!(api(&srv, "PUT", &path, &ops, json!({"role": "maintainer"})).0, 200);
    }
    let shown = ok(cli_as(&srv, &repo.work, &max, &["projects", "edit", "approved", "--require-approval", "true"]));
    assert!(shown.contains("prod publishes wait for a maintainer's approval (24 h)"), "{shown}");

    let publish = ["publish", "--env", "prod", "--detach", "--json"];
    let task: Task = serde_json::from_str(&ok(cli_as(&srv, &repo.work, &max, &publish))).unwrap();
    assert_eq!(task.state, TaskState::AwaitingApproval);
    let waiting = ok(cli_as(&srv, &repo.work, &mia, &["tasks", "--state", "awaiting_approval"]));
    assert!(waiting.contains(&task.id.to_string()), "{waiting}");
    let own = cli_as(&srv, &repo.work, &max, &["approve", &task.id.to_string()]);
    assert_eq!(own.status.code(), Some(2));
    assert!(text(&own).contains("another maintainer (or an admin) approves it"), "{}", text(&own));
    let approved = ok(cli_as(&srv, &repo.work, &mia, &["approve", &task.id.to_string(), "--reason", "checked"]));
    assert!(approved.contains(&format!("task {} approved", task.id)), "{approved}");
    let done = loop {
        let (_, t) = api(&srv, "GET", &format!("/api/v1/tasks/{}", task.id), &mia, Value::Null);
        let t: Task = serde_json::from_value(t).unwrap();
        if t.state.is_terminal() {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(get_text(&srv.site_url("prod", "approved")).1, "<h1>approved</h1>");

    // A rejection needs a reason, and ends the publish.
    repo.set_version("1.0.1");
    let task: Task = serde_json::from_str(&ok(cli_as(&srv, &repo.work, &max, &publish))).unwrap();
    let bare = cli_as(&srv, &repo.work, &mia, &["reject", &task.id.to_string()]);
    assert_eq!(bare.status.code(), Some(2), "{}", text(&bare));
    let rejected = ok(cli_as(&srv, &repo.work, &mia, &["reject", &task.id.to_string(), "--reason", "not today"]));
    assert!(rejected.contains("rejected: rejected by mia: not today"), "{rejected}");
    let audit = ok(cli_as(&srv, &repo.work, &ops, &["audit", "--action", "approval.reject"]));
    assert!(audit.contains("not today"), "{audit}");
}
