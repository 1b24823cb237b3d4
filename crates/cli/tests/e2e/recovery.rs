//! Crashes: a server killed with SIGKILL mid-build loses no accepted task, and the build
//! processes it left behind are killed when it comes back, on another address or the same one
//! (where its worker returns under the same name, without the task), and the uploads a
//! crashed publish staged are removed.

use std::time::{Duration, Instant};

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{alive, get_text, package_json, wait_build_pid, wait_file, Repo, Server};

use crate::server;

/// A project whose first build hangs (its pid in `crash.pid` in the server's data dir) and
/// whose later builds publish `again`.
fn first_attempt_hangs(srv: &Server, name: &str) -> (Repo, std::path::PathBuf) {
    let pid_file = srv.probe.path().join("crash.pid");
    let marker = srv.probe.path().join("attempted");
    let script = format!(
        "const fs=require('fs');\
         if(!fs.existsSync({m:?})){{fs.writeFileSync({m:?},'1');fs.writeFileSync({p:?},String(process.pid));setInterval(()=>{{}},1000);}}\
         else{{fs.mkdirSync('dist');fs.writeFileSync('dist/index.html','again');}}",
        m = marker.to_str().unwrap(),
        p = pid_file.to_str().unwrap()
    );
    let repo =
        Repo::new(&[("package.json", &package_json(name, &[("build", "node build.js")])), ("build.js", &script)]);
    (repo, pid_file)
}

#[test]
fn a_task_survives_a_server_crash_mid_build() {
    // Unsandboxed, a build outlives its crashed server, and the next life must reap it (a
    // sandboxed one dies with its worker: cluster.rs).
    let mut srv = server("[sandbox]\nmode = \"off\"\n[workers]\nlease_secs = 3\nheartbeat_secs = 1\n");
    let (repo, pid_file) = first_attempt_hangs(&srv, "site-crash");
    let (_, task) = srv.create(&repo.task_body("site-crash"));
    let id = task["id"].as_i64().unwrap();
    let pid = wait_build_pid(&pid_file, srv.pid(), Duration::from_secs(60)).expect("first attempt builds");

    srv.kill9();
    assert!(alive(pid), "without recovery the build outlives its server (otherwise this test proves nothing)");
    srv.restart().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "the restarted worker kills the orphaned build\n{}", srv.log());

    let t = srv.wait_done(id);
    assert_eq!((t.state, t.attempt), (TaskState::Succeeded, 2), "{t:?}\n{}", srv.log());
    let actions = srv.actions(id);
    let requeued = actions.iter().find(|a| a.0 == "requeued").expect("the retry is explicit in the log");
    assert!(requeued.1.contains("attempt 2"), "{requeued:?}");
    assert_eq!(get_text(&t.url.unwrap()).1, "again");
}

#[test]
fn a_task_ends_after_a_crash_and_restart_on_the_same_address() {
    let mut srv = server("[workers]\nlease_secs = 3\nheartbeat_secs = 1\n");
    let (repo, pid_file) = first_attempt_hangs(&srv, "id-crash");
    let (_, task) = srv.create(&repo.task_body("id-crash"));
    let id = task["id"].as_i64().unwrap();
    wait_file(&pid_file, Duration::from_secs(60)).expect("first attempt builds");
    // A publish interrupted by the crash leaves staged contents, and so did earlier lives.
    let staging = srv.data.path().join("data/staging");
    for leftover in [format!("{id}-1"), "999999-1".to_owned(), "junk".to_owned()] {
        std::fs::create_dir_all(staging.join(&leftover)).unwrap();
        std::fs::write(staging.join(&leftover).join("blob"), "x").unwrap();
    }

    srv.kill9();
    srv.restart_same_port().unwrap();
    // The embedded worker comes back under the same name, heartbeating, but without the task.
    let t = srv.wait_done(id);
    assert_eq!((t.state, t.attempt), (TaskState::Succeeded, 2), "{t:?}\n{}", srv.log());
    let requeued = srv.actions(id).into_iter().find(|a| a.0 == "requeued").expect("requeued");
    assert!(requeued.1.contains("no longer runs attempt 1"), "{requeued:?}");
    let left: Vec<String> =
        std::fs::read_dir(&staging).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.is_empty(), "staging leftovers are removed: {left:?}");
}
