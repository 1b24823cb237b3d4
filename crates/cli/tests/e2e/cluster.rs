//! Scale-out on Redis: several real servers and remote workers, killed with SIGKILL at chosen
//! points. Each test starts its own `redis-server` (AOF on) on a free port.
//!
//! Promises checked: any server takes a publish and any server's followers (SSE, socket.io)
//! see every event; a lost worker's task is requeued with attempt + 1 and runs elsewhere; a
//! server killed mid-build loses nothing (the worker resends what was not acknowledged, no
//! event twice); Redis down means a fast 503 and recovery by itself; revoked tokens and labels.

use std::path::Path;
use std::time::{Duration, Instant};

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{
    alive, build_script, get_json, get_text, package_json, request, signal, wait_build_pid, wait_file, wait_workers,
    RedisServer, Repo, Server, ServerOptions, Worker,
};

use crate::bin;

/// A server on `redis` without an embedded worker; `shared` is the data directory all servers
/// of a test use (sites on a shared file system).
pub(crate) fn cluster_server(redis: &RedisServer, shared: &Path, extra: &str) -> Server {
    let toml = format!("store = \"{}\"\n[workers]\nembedded = false\n{extra}", redis.url());
    Server::start_with(
        bin(),
        ServerOptions { extra_toml: &toml, data_dir: Some(shared), no_worker: true, ..Default::default() },
    )
    .expect("server starts")
}

/// Creates a worker token through the CLI (as an admin would) and returns the secret.
pub(crate) fn worker_token(srv: &Server, name: &str) -> String {
    let out = srv.cli(Path::new("."), &["worker-tokens", "create", name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A remote worker of `srv`, whose builds share the server's probe directory (pid files, gates).
pub(crate) fn worker(srv: &Server, token: &str, name: &str, extra: &[&str]) -> Worker {
    let probe = srv.probe.path().to_str().unwrap();
    let args: Vec<&str> = ["--sandbox-shared", probe].into_iter().chain(extra.iter().copied()).collect();
    Worker::start(bin(), &srv.url, token, name, &args).expect("worker starts")
}

/// Follows a task's SSE stream from the start until its end, in a thread.
fn follow(url: &str, id: i64) -> std::thread::JoinHandle<String> {
    let url = format!("{url}/api/v1/tasks/{id}/events?follow=true");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { cloudbuild_testkit::client().get(&url).send().await.unwrap().text().await.unwrap() })
    })
}

/// A build that prints `n` numbered lines, `every_ms` apart, then writes the site.
fn counting_repo(name: &str, n: u32, every_ms: u32) -> Repo {
    let script = format!(
        "let i=0;const t=setInterval(()=>{{console.log('line-'+i);i++;if(i=={n}){{clearInterval(t);\
         const fs=require('fs');fs.mkdirSync('dist');fs.writeFileSync('dist/index.html','counted');}}}},{every_ms});"
    );
    Repo::new(&[("package.json", &package_json(name, &[("build", "node build.js")])), ("build.js", &script)])
}

#[test]
fn any_server_takes_a_publish_and_every_server_streams_it() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let a = cluster_server(&redis, shared.path(), "");
    let b = cluster_server(&redis, shared.path(), "");
    let token = worker_token(&a, "pool");
    let _w = worker(&b, &token, "builder-b", &["--slots", "2", "--labels", "linux,node"]);
    wait_workers(&a.url, 1).unwrap();

    // Submitted on A, built by the worker connected to B, followed live on both.
    let repo = counting_repo("cluster-site", 20, 30);
    let (status, task) = a.create(&repo.task_body("cluster-site"));
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();
    let (on_a, on_b) = (follow(&a.url, id), follow(&b.url, id));
    let t = a.wait_done(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", b.log());
    assert_eq!(t.worker.as_deref(), Some("builder-b"));
    let (on_a, on_b) = (on_a.join().unwrap(), on_b.join().unwrap());
    let final_log = a.sse(id, 0);
    assert_eq!(on_a, final_log, "the follower on A saw every event, once, in order");
    assert_eq!(on_b, final_log, "the follower on B too");
    assert_eq!(b.sse(id, 0), final_log, "both servers serve the same log");
    assert_eq!(get_text(&t.url.unwrap()).1, "counted");

    // An original socket.io client on A, the build on B's worker.
    let ok = Repo::site("sio-cluster", "<h1>across servers</h1>");
    let lines =
        crate::socketio::run_client(&a, "4", "websocket", &crate::socketio::query_for(&ok, "sio-cluster"), None, &[]);
    let actions: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "build")
        .map(|l| l["data"]["data"]["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(actions, crate::socketio_success_actions(), "{lines:?}");

    // `cloudbuild workers` on either server shows the worker with its slots and labels.
    let out = a.cli(Path::new("."), &["workers"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row = table.lines().find(|l| l.starts_with("builder-b")).unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("connected") && row.contains("/2") && row.contains("linux,node") && row.contains("pool"),
        "{row}"
    );
}

#[test]
fn a_worker_killed_during_build_loses_its_lease_and_the_task_runs_elsewhere() {
    worker_killed_during("build");
}

#[test]
fn a_worker_killed_during_install_loses_its_lease_and_the_task_runs_elsewhere() {
    worker_killed_during("preinstall");
}

/// Kills the worker with SIGKILL while the package script `script` of attempt 1 runs.
fn worker_killed_during(script: &str) {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let srv = cluster_server(&redis, shared.path(), "lease_secs = 3\nheartbeat_secs = 1\n");
    let token = worker_token(&srv, "pool");
    let mut w1 = worker(&srv, &token, "builder-1", &[]);
    wait_workers(&srv.url, 1).unwrap();

    // The first attempt hangs in `script` (after printing); any later one goes on and builds.
    let marker = srv.probe.path().join("attempted");
    let pid_file = srv.probe.path().join("build.pid");
    let hang_once = format!(
        "const fs=require('fs');console.log('attempt output');\
         if(!fs.existsSync({m:?})){{fs.writeFileSync({m:?},'1');fs.writeFileSync({p:?},String(process.pid));setInterval(()=>{{}},1000);}}",
        m = marker.to_str().unwrap(),
        p = pid_file.to_str().unwrap()
    );
    let scripts: &[(&str, &str)] = if script == "build" {
        &[("build", "node hang.js && node build.js")]
    } else {
        &[(script, "node hang.js"), ("build", "node build.js")]
    };
    let repo = Repo::new(&[
        ("package.json", &package_json("lease-site", scripts)),
        ("hang.js", &hang_once),
        ("build.js", &build_script("elsewhere")),
    ]);
    let (_, task) = srv.create(&repo.task_body("lease-site"));
    let id = task["id"].as_i64().unwrap();
    let follower = follow(&srv.url, id);
    let orphan = wait_build_pid(&pid_file, w1.pid(), Duration::from_secs(60)).expect("attempt 1 builds");
    let _w2 = worker(&srv, &token, "builder-2", &[]);
    wait_workers(&srv.url, 2).unwrap();

    w1.kill9();
    let killed = Instant::now();
    let t = srv.wait_until(id, |t| t.attempt == 2 && t.state != TaskState::Queued, "attempt 2 taken");
    let to_elsewhere = killed.elapsed();
    assert_eq!(t.worker.as_deref(), Some("builder-2"));
    eprintln!("SIGKILL of the worker during {script} to its task running elsewhere: {to_elsewhere:?}");

    let t = srv.wait_done(id);
    assert_eq!((t.state, t.attempt), (TaskState::Succeeded, 2), "{t:?}\n{}", srv.log());
    let actions = srv.actions(id);
    let requeued = actions.iter().find(|a| a.0 == "requeued").expect("the retry is explicit");
    assert!(requeued.1.contains("builder-1") && requeued.1.contains("attempt 2"), "{requeued:?}");
    assert_eq!(follower.join().unwrap(), srv.sse(id, 0), "the live follower's stream equals the final log");
    assert_eq!(get_text(&t.url.unwrap()).1, "elsewhere");

    // The dead worker's build died with it: bwrap ends the sandbox when its parent dies. (An
    // unsandboxed worker's next start reaps what its previous life left: see recovery.rs.)
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(orphan) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(orphan), "the SIGKILLed worker's sandboxed build died with it");
}

#[test]
fn a_task_fails_as_worker_lost_after_the_configured_attempts() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let srv = cluster_server(&redis, shared.path(), "lease_secs = 2\nheartbeat_secs = 1\n[limits]\nmax_attempts = 1\n");
    let token = worker_token(&srv, "pool");
    let mut w = worker(&srv, &token, "doomed", &[]);
    wait_workers(&srv.url, 1).unwrap();
    let pid_file = srv.probe.path().join("hang.pid");
    let repo = Repo::new(&[
        ("package.json", &package_json("lost-site", &[("build", "node hang.js")])),
        ("hang.js", &cloudbuild_testkit::hang_script(pid_file.to_str().unwrap())),
    ]);
    let (_, task) = srv.create(&repo.task_body("lost-site"));
    let id = task["id"].as_i64().unwrap();
    let orphan = wait_build_pid(&pid_file, w.pid(), Duration::from_secs(60)).unwrap();
    w.kill9();
    let t = srv.wait_done(id);
    if alive(orphan) {
        signal(orphan as u32, "KILL"); // the orphan of the killed worker
    }
    assert_eq!(t.state, TaskState::Failed);
    assert!(t.reason.as_deref().unwrap_or_default().contains("worker lost"), "{t:?}");
}

#[test]
fn a_server_killed_mid_build_loses_no_event_and_duplicates_none() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut srv = cluster_server(&redis, shared.path(), "");
    let token = worker_token(&srv, "pool");
    let w = worker(&srv, &token, "steady", &[]);
    wait_workers(&srv.url, 1).unwrap();

    let lines = 120;
    let repo = counting_repo("steady-site", lines, 25);
    let (_, task) = srv.create(&repo.task_body("steady-site"));
    let id = task["id"].as_i64().unwrap();
    srv.wait_until(id, |t| t.stage == Some(cloudbuild_proto::task::Stage::Build), "build");
    // A user following with the CLI through the crash.
    let cli_follower = crate::cli_command()
        .args(["logs", &id.to_string(), "--follow"])
        .env("CLOUDBUILD_SERVER", &srv.url)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    // Frozen first: the worker's messages reach the socket but are never acknowledged, so
    // they must be resent to the next life of the server.
    signal(srv.pid(), "STOP");
    std::thread::sleep(Duration::from_millis(800));
    srv.kill9();
    // The build goes on printing while its server is away.
    std::thread::sleep(Duration::from_millis(1200));
    srv.restart_same_port().unwrap();

    let t = srv.wait_done(id);
    assert_eq!((t.state, t.attempt), (TaskState::Succeeded, 1), "the build survived its server\n{}", w.log());
    let output = srv.output(id);
    let seen: Vec<&str> = output.lines().filter(|l| l.starts_with("line-")).collect();
    let expected: Vec<String> = (0..lines).map(|i| format!("line-{i}")).collect();
    assert_eq!(seen, expected, "every line once, in order");
    assert!(w.log().contains("resending"), "the worker resent what was not acknowledged:\n{}", w.log());
    let followed = cli_follower.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&followed.stdout);
    let seen: Vec<&str> =
        followed.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with("line-"))).collect();
    assert_eq!(seen, expected, "the CLI follower resumed across the crash, every line once:\n{followed}");
    let log = srv.sse(id, 0);
    assert_eq!(log.matches("event: end").count(), 1);
}

#[test]
fn redis_down_means_a_fast_503_and_the_service_recovers() {
    let mut redis = RedisServer::start().unwrap();
    let toml = format!("store = \"{}\"\n", redis.url());
    let srv = Server::start_with(bin(), ServerOptions { extra_toml: &toml, ..Default::default() }).unwrap();
    let repo = Repo::site("outage-site", "after the outage");
    let (status, first) = srv.create(&repo.task_body("outage-site"));
    assert_eq!(status, 201, "{first}");
    assert_eq!(srv.wait_done(first["id"].as_i64().unwrap()).state, TaskState::Succeeded);

    redis.kill9();
    let started = Instant::now();
    let (status, body) = srv.create(&repo.task_body("outage-site"));
    assert_eq!((status, body["code"].as_str()), (503, Some("store_unavailable")), "{body}");
    // Generous bound: the point is "an answer, not a hang" (connect timeout 1 s, answer 3 s).
    assert!(started.elapsed() < Duration::from_secs(20), "fails fast: {:?}", started.elapsed());
    let (status, _) = request("GET", &format!("{}/api/v1/tasks/{}", srv.url, first["id"]), None);
    assert_eq!(status, 503);

    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let (status, body) = srv.create(&repo.task_body("outage-site"));
        if status == 201 {
            break body["id"].as_i64().unwrap();
        }
        assert!(Instant::now() < deadline, "the server did not recover: {status} {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(srv.wait_done(id).state, TaskState::Succeeded, "{}", srv.log());
    assert_eq!(srv.task(first["id"].as_i64().unwrap()).state, TaskState::Succeeded, "AOF kept the earlier task");
}

#[test]
fn labels_route_tasks_and_a_task_no_worker_can_take_says_so() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let srv = cluster_server(&redis, shared.path(), "");
    let token = worker_token(&srv, "pool");
    let repo = Repo::site("gpu-site", "gpu");
    // No worker at all: the task says so, and runs once one connects.
    let (_, early) = srv.create(&repo.task_body("gpu-site"));
    let early = early["id"].as_i64().unwrap();
    let note = srv.actions(early).into_iter().find(|a| a.0 == "waiting").expect("it says why it waits");
    assert!(note.1.contains("no worker is connected"), "{note:?}");
    let _plain = worker(&srv, &token, "plain", &[]);
    wait_workers(&srv.url, 1).unwrap();
    assert_eq!(srv.wait_done(early).state, TaskState::Succeeded);
    let mut body = repo.task_body("gpu-site");
    body["labels"] = serde_json::json!(["gpu"]);
    let (_, task) = srv.create(&body);
    let id = task["id"].as_i64().unwrap();
    let waiting = srv.wait_until(id, |t| t.last_seq >= 2, "a waiting note");
    assert_eq!(waiting.state, TaskState::Queued, "the plain worker does not take it");
    let note = srv.actions(id).into_iter().find(|a| a.0 == "waiting").expect("it says why it waits");
    assert!(note.1.contains("gpu"), "{note:?}");

    let _gpu = worker(&srv, &token, "gpu-box", &["--labels", "gpu"]);
    let t = srv.wait_done(id);
    assert_eq!((t.state, t.worker.as_deref()), (TaskState::Succeeded, Some("gpu-box")));

    let (status, body) = srv.create(&serde_json::json!({
        "repo": repo.url, "branch": "main", "name": "gpu-site", "version": "1.0.0", "labels": ["GPU!"]
    }));
    assert_eq!(status, 400, "labels are validated: {body}");
}

#[test]
fn a_revoked_token_disconnects_its_workers_and_cannot_reconnect() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let srv = cluster_server(&redis, shared.path(), "");
    let token = worker_token(&srv, "temp");
    let mut w = worker(&srv, &token, "temporary", &[]);
    wait_workers(&srv.url, 1).unwrap();
    let out = srv.cli(Path::new("."), &["worker-tokens", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("temp"), "the list names it");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&token), "and never shows the secret");

    let out = srv.cli(Path::new("."), &["worker-tokens", "revoke", "temp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = w.wait_exit(Duration::from_secs(10)).expect("the worker is told to go");
    assert!(!status.success());
    assert!(w.log().contains("revoked"), "{}", w.log());

    let mut again = worker(&srv, &token, "temporary-2", &[]);
    let status = again.wait_exit(Duration::from_secs(10)).expect("a revoked token cannot connect");
    assert!(!status.success());
    assert!(again.log().contains("refused the worker token"), "{}", again.log());
    let v = get_json(&format!("{}/api/v1/workers", srv.url)).unwrap();
    let state = v["workers"].as_array().unwrap().iter().find(|w| w["name"] == "temporary").unwrap()["state"].clone();
    assert_eq!(state, "disconnected");
}

/// A worker cut off (frozen with SIGSTOP: no heartbeats, its build goes on) loses its lease;
/// when it comes back, everything it says about the old attempt is refused: no event of
/// attempt 1 after the requeue, no publish from it, the site is attempt 2's.
#[test]
fn a_worker_cut_off_and_back_is_fenced_off() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let srv = cluster_server(&redis, shared.path(), "lease_secs = 2\nheartbeat_secs = 1\n");
    let token = worker_token(&srv, "pool");
    let w1 = worker(&srv, &token, "partitioned", &[]);
    wait_workers(&srv.url, 1).unwrap();
    let counter = srv.probe.path().join("attempts");
    let pid_file = srv.probe.path().join("first.pid");
    let script = format!(
        "const fs=require('fs');const f={c:?};let n=1;if(fs.existsSync(f))n=Number(fs.readFileSync(f,'utf8'))+1;\
         fs.writeFileSync(f,String(n));console.log('attempt-'+n+' started');\
         if(n==1)fs.writeFileSync({p:?},String(process.pid));\
         setTimeout(()=>{{console.log('attempt-'+n+' done');fs.mkdirSync('dist');\
         fs.writeFileSync('dist/index.html','from attempt '+n);}},n==1?4000:1500);",
        c = counter.to_str().unwrap(),
        p = pid_file.to_str().unwrap()
    );
    let repo =
        Repo::new(&[("package.json", &package_json("fenced", &[("build", "node build.js")])), ("build.js", &script)]);
    let (_, task) = srv.create(&repo.task_body("fenced"));
    let id = task["id"].as_i64().unwrap();
    wait_file(&pid_file, Duration::from_secs(60)).expect("attempt 1 builds");
    signal(w1.pid(), "STOP");
    let _w2 = worker(&srv, &token, "healthy", &[]);
    srv.wait_until(id, |t| t.attempt == 2 && t.worker.as_deref() == Some("healthy"), "attempt 2 on the healthy worker");
    signal(w1.pid(), "CONT");

    let t = srv.wait_done(id);
    assert_eq!((t.state, t.attempt), (TaskState::Succeeded, 2), "{t:?}\n{}", w1.log());
    assert_eq!(get_text(&t.url.unwrap()).1, "from attempt 2", "the stale attempt published nothing");
    let log = srv.sse(id, 0);
    let after_requeue = &log[log.find("requeued").expect("requeued event")..];
    assert!(!after_requeue.contains("attempt-1"), "no event of attempt 1 after the requeue:\n{after_requeue}");
    assert!(after_requeue.contains("attempt-2 done"));
    // The old worker reports when it resumes; it must be refused, stop its build (whose end it
    // reports too) and change nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(w1.log().contains("refused our work") && w1.log().contains("task finished")) {
        assert!(std::time::Instant::now() < deadline, "the stale worker was never refused: {}", w1.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(srv.sse(id, 0), log, "the log did not change afterwards");
}

/// Publishes of one `prod` version reaching two servers at once: exactly one records a
/// release; the others fail at publish with the reason. The race between servers is narrow
/// here (recording takes milliseconds), so this checks the whole path; the lock the servers
/// share is proven on its own in the store's `redis_lock_has_one_holder_and_expires`.
#[test]
fn concurrent_prod_publishes_through_two_servers_have_one_winner() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let a = cluster_server(&redis, shared.path(), "");
    let b = cluster_server(&redis, shared.path(), "");
    let token = worker_token(&a, "pool");
    let _wa = worker(&a, &token, "on-a", &["--slots", "2"]);
    let _wb = worker(&b, &token, "on-b", &["--slots", "2", "--sandbox-shared", a.probe.path().to_str().unwrap()]);
    wait_workers(&a.url, 2).unwrap();
    // A barrier: every build waits until all four have built, so they publish together.
    let barrier = a.probe.path().join("barrier");
    std::fs::create_dir_all(&barrier).unwrap();
    std::fs::set_permissions(&barrier, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let build = format!(
        "const fs = require('fs'); const dir = {dir:?};\
         const me = process.env.CLOUDBUILD_TASK_ID; fs.writeFileSync(dir + '/' + me, '');\
         while (fs.readdirSync(dir).length < 4) {{ Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20); }}\
         fs.mkdirSync('dist'); fs.writeFileSync('dist/index.html', 'race ' + me);",
        dir = barrier.to_str().unwrap()
    );
    let repo =
        Repo::new(&[("package.json", &package_json("race", &[("build", "node build.js")])), ("build.js", &build)]);
    let mut body = repo.task_body("race");
    body["env"] = serde_json::json!("prod");
    let ids: Vec<i64> = (0..4).map(|_| a.create(&body).1["id"].as_i64().unwrap()).collect();
    let done: Vec<_> = ids.iter().map(|id| a.wait_done(*id)).collect();
    let workers: std::collections::BTreeSet<_> = done.iter().filter_map(|t| t.worker.clone()).collect();
    assert_eq!(workers.len(), 2, "the builds ran on both servers' workers: {done:?}");
    let winners: Vec<_> = done.iter().filter(|t| t.state == TaskState::Succeeded).collect();
    assert_eq!(winners.len(), 1, "{done:?}");
    for loser in done.iter().filter(|t| t.state != TaskState::Succeeded) {
        assert!(loser.reason.as_deref().unwrap_or_default().contains("already published to prod"), "{loser:?}");
    }
    let list = get_json(&format!("{}/api/v1/releases?name=race&env=prod", b.url)).unwrap();
    assert_eq!(list["releases"].as_array().unwrap().len(), 1, "{list}");
}

/// A worker killed while uploading (the `publish` stage of a 120 MB output): nothing of its
/// half-done upload becomes a release; attempt 2 on another worker publishes the site.
#[test]
fn a_worker_killed_during_upload_publishes_nothing_and_the_task_runs_elsewhere() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let srv = cluster_server(&redis, shared.path(), "lease_secs = 3\nheartbeat_secs = 1\n");
    let token = worker_token(&srv, "pool");
    let mut w1 = worker(&srv, &token, "uploader-1", &[]);
    wait_workers(&srv.url, 1).unwrap();
    let build = "const fs=require('fs'),c=require('crypto');fs.mkdirSync('dist/assets',{recursive:true});\
                 for(let i=0;i<30;i++)fs.writeFileSync('dist/assets/blob'+i+'.bin',c.randomBytes(4<<20));\
                 fs.writeFileSync('dist/index.html','uploaded');";
    let repo = Repo::new(&[
        ("package.json", &package_json("upload-site", &[("build", "node build.js")])),
        ("build.js", build),
    ]);
    let (_, task) = srv.create(&repo.task_body("upload-site"));
    let id = task["id"].as_i64().unwrap();
    srv.wait_until(id, |t| t.stage == Some(cloudbuild_proto::task::Stage::Publish), "the publish stage");
    w1.kill9();
    let killed_in = srv.task(id);
    let _w2 = worker(&srv, &token, "uploader-2", &[]);
    let t = srv.wait_done(id);
    assert_eq!((t.state, t.attempt, t.worker.as_deref()), (TaskState::Succeeded, 2, Some("uploader-2")), "{t:?}");
    assert_eq!(killed_in.stage, Some(cloudbuild_proto::task::Stage::Publish), "killed while publishing");
    let list = get_json(&format!("{}/api/v1/releases?name=upload-site", srv.url)).unwrap();
    assert_eq!(list["releases"].as_array().unwrap().len(), 1, "only attempt 2 released: {list}");
    assert_eq!(get_text(&t.url.unwrap()).1, "uploaded");
}

/// A cancel sent to one server stops a build whose worker is connected to another.
#[test]
fn a_cancel_on_one_server_stops_the_build_on_another_servers_worker() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let a = cluster_server(&redis, shared.path(), "");
    let b = cluster_server(&redis, shared.path(), "");
    let token = worker_token(&a, "pool");
    let _w = worker(&b, &token, "far-away", &[]);
    wait_workers(&a.url, 1).unwrap();
    let pid_file = b.probe.path().join("hang.pid");
    let repo = Repo::new(&[
        ("package.json", &package_json("cancel-far", &[("build", "node hang.js")])),
        ("hang.js", &cloudbuild_testkit::hang_script(pid_file.to_str().unwrap())),
    ]);
    let (_, task) = a.create(&repo.task_body("cancel-far"));
    let id = task["id"].as_i64().unwrap();
    let pid = wait_build_pid(&pid_file, _w.pid(), Duration::from_secs(60)).unwrap();
    let out = a.cli(Path::new("."), &["cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = b.wait_done(id);
    assert_eq!(t.state, TaskState::Cancelled, "{t:?}");
    assert!(t.reason.as_deref().unwrap_or_default().contains("cancelled by request"), "the worker confirmed: {t:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "the build process was stopped");
}
