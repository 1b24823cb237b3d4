//! Crashes: a server killed with SIGKILL mid-build loses no accepted task, and the build
//! processes it left behind are killed when it comes back.

use std::time::{Duration, Instant};

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{alive, get_text, package_json, wait_file, Repo};

use crate::server;

#[test]
fn a_task_survives_a_server_crash_mid_build() {
    let mut srv = server("[workers]\nlease_secs = 3\nheartbeat_secs = 1\n");
    let pid_file = srv.data.path().join("crash.pid");
    let marker = srv.data.path().join("attempted");
    // The first attempt hangs; any later one builds.
    let script = format!(
        "const fs=require('fs');\
         if(!fs.existsSync({m:?})){{fs.writeFileSync({m:?},'1');fs.writeFileSync({p:?},String(process.pid));setInterval(()=>{{}},1000);}}\
         else{{fs.mkdirSync('dist');fs.writeFileSync('dist/index.html','recovered');}}",
        m = marker.to_str().unwrap(),
        p = pid_file.to_str().unwrap()
    );
    let repo = Repo::new(&[
        ("package.json", &package_json("site-crash", &[("build", "node build.js")])),
        ("build.js", &script),
    ]);
    let (_, task) = srv.create(&repo.task_body("site-crash"));
    let id = task["id"].as_i64().unwrap();
    let pid: i32 = wait_file(&pid_file, Duration::from_secs(60)).expect("first attempt builds").parse().unwrap();

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
    assert_eq!(get_text(&t.url.unwrap()).1, "recovered");
}
