//! Cancel in each stage: a queued task never runs; a running one is stopped with its whole
//! process group; cancel is idempotent; a finished task answers 409.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::task::{Stage, TaskState};
use cloudbuild_testkit::{
    alive, build_script, hang_script, package_json, request, wait_build_pid, wait_file, Repo, Server,
};

use crate::server;

fn cancel(srv: &Server, id: i64) -> (u16, serde_json::Value) {
    request("POST", &format!("{}/api/v1/tasks/{id}/cancel", srv.url), None)
}

/// A project whose `stage` hangs, recording the hanging process's pid in `pid_file`.
/// A project named `name` (each name is bound to its own repository) whose `stage` hangs.
fn hanging_repo(name: &str, stage: Stage, pid_file: &Path) -> Repo {
    let hang = hang_script(pid_file.to_str().unwrap());
    let (scripts, toml): (Vec<(&str, &str)>, &str) = match stage {
        Stage::Install => (
            vec![("build", "node build.js"), ("slowinstall", "node hang.js")],
            "[build]\ninstall = \"npm run slowinstall\"\n",
        ),
        Stage::Check => (
            vec![("build", "node build.js"), ("lint", "node hang.js")],
            "[[checks]]\nname = \"lint\"\ncommand = \"npm run lint\"\n",
        ),
        _ => (vec![("build", "node hang.js")], ""),
    };
    Repo::new(&[
        ("package.json", &package_json(name, &scripts)),
        ("hang.js", &hang),
        ("build.js", &build_script("x")),
        ("cloudbuild.toml", toml),
    ])
}

fn assert_cancelled_in(srv: &Server, id: i64, stage: Stage, pid_file: &Path) {
    let pid = wait_build_pid(pid_file, srv.pid(), Duration::from_secs(60)).expect("the hanging command started");
    let t = srv.task(id);
    assert_eq!(t.stage, Some(stage), "{t:?}");
    let (status, body) = cancel(srv, id);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["cancel_requested"], true);
    let t = srv.wait_done(id);
    assert_eq!((t.state, t.stage), (TaskState::Cancelled, Some(stage)), "{t:?}");
    assert!(!alive(pid), "process {pid} of the cancelled {stage} survived");
    assert_eq!(srv.actions(id).last().unwrap().0, "cancelled");
    // Idempotent: cancelling again answers 200 with the same state.
    let (status, body) = cancel(srv, id);
    assert_eq!((status, body["state"].as_str()), (200, Some("cancelled")));
}

#[test]
fn cancel_in_install_check_and_build() {
    let srv = server("[workers]\nembedded_slots = 1\n[timeouts]\nkill_grace_secs = 2\n");
    for stage in [Stage::Install, Stage::Check, Stage::Build] {
        let pid_file = srv.probe.path().join(format!("{}.pid", stage.action().replace(' ', "-")));
        let name = format!("site-cancel-{}", stage.action().replace(' ', "-"));
        let repo = hanging_repo(&name, stage, &pid_file);
        let (_, task) = srv.create(&repo.task_body(&name));
        assert_cancelled_in(&srv, task["id"].as_i64().unwrap(), stage, &pid_file);
    }
}

#[test]
fn a_queued_task_cancelled_never_runs() {
    let srv = server("[workers]\nembedded_slots = 1\n");
    let pid_file = srv.probe.path().join("busy.pid");
    let busy = hanging_repo("site-cancel", Stage::Build, &pid_file);
    let (_, first) = srv.create(&busy.task_body("site-cancel"));
    let first = first["id"].as_i64().unwrap();
    wait_file(&pid_file, Duration::from_secs(60)).expect("first task is building");
    let (_, second) = srv.create(&busy.task_body("site-cancel"));
    let second = second["id"].as_i64().unwrap();
    assert_eq!(srv.task(second).state, TaskState::Queued, "one slot is busy");
    let (status, body) = cancel(&srv, second);
    assert_eq!((status, body["state"].as_str()), (200, Some("cancelled")), "{body}");
    // Free the slot; the cancelled task must still never start: a task queued after it runs
    // in that slot (so the scheduler has been past it), and it stays as it was.
    assert_eq!(cancel(&srv, first).0, 202);
    srv.wait_done(first);
    let quick = Repo::site("site-after", "after");
    let (_, third) = srv.create(&quick.task_body("site-after"));
    assert_eq!(srv.wait_done(third["id"].as_i64().unwrap()).state, TaskState::Succeeded);
    let actions: Vec<String> = srv.actions(second).into_iter().map(|a| a.0).collect();
    assert_eq!(actions, ["create task", "cancelled"]);
    let t = srv.task(second);
    assert!(t.started_at.is_none() && t.worker.is_none(), "{t:?}");
}

/// A task whose repository is served by a "git server" that accepts connections and never
/// answers, so `download repo` hangs.
/// Returns the task body and a flag that turns true once git has connected.
fn stuck_clone_task() -> (serde_json::Value, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connected = Arc::new(AtomicBool::new(false));
    let seen = connected.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
            seen.store(true, Ordering::SeqCst);
        }
    });
    let body = serde_json::json!({
        "repo": format!("http://127.0.0.1:{port}/stuck.git"), "branch": "main", "name": "site-stuck", "version": "1.0.0"
    });
    (body, connected)
}

#[test]
fn cancel_during_a_hanging_clone() {
    let srv = server("[timeouts]\nkill_grace_secs = 1\n");
    let (body, connected) = stuck_clone_task();
    let (_, task) = srv.create(&body);
    let id = task["id"].as_i64().unwrap();
    srv.wait_until(id, |t| t.stage == Some(Stage::DownloadRepo), "download repo");
    // Cancelled while git itself hangs on the network, not before it started.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !connected.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "git never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cancel(&srv, id).0, 202);
    let t = srv.wait_done(id);
    assert_eq!((t.state, t.stage), (TaskState::Cancelled, Some(Stage::DownloadRepo)), "{t:?}");
}

#[test]
fn a_hanging_clone_times_out() {
    let srv = server("[timeouts]\ndownload_secs = 2\nkill_grace_secs = 1\n");
    let (body, _) = stuck_clone_task();
    let (_, task) = srv.create(&body);
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!((t.state, t.stage), (TaskState::TimedOut, Some(Stage::DownloadRepo)), "{t:?}");
}

#[test]
fn a_finished_task_cannot_be_cancelled() {
    let srv = server("");
    let repo = Repo::new(&[("package.json", &package_json("site-done", &[("build", "node -e \"process.exit(1)\"")]))]);
    let (_, task) = srv.create(&repo.task_body("site-done"));
    let id = task["id"].as_i64().unwrap();
    srv.wait_done(id);
    let (status, body) = cancel(&srv, id);
    assert_eq!((status, body["code"].as_str()), (409, Some("already_finished")), "{body}");
    let (status, body) = cancel(&srv, 999_999);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}
