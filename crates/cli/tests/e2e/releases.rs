//! Releases: immutable versions, incremental upload, the atomic switch, rollback, retention, on
//! the local target and on a real S3 protocol server (s3s-fs).

use cloudbuild_proto::task::{Stage, TaskState};
use cloudbuild_testkit::{get_json, get_text, get_with_header, package_json, request, Repo, S3Server, Server};
use serde_json::{json, Value};

use crate::{bin, server};

const BUILD: &str = "require('fs').cpSync('site', 'dist', { recursive: true }); console.log('copied site to dist');";

fn site_repo(name: &str, index: &str) -> Repo {
    Repo::new(&[
        ("package.json", &package_json(name, &[("build", "node build.js")])),
        ("build.js", BUILD),
        ("site/index.html", index),
        ("site/assets/app-AbCd1234.js", "console.log('app')"),
        ("site/logo.svg", "<svg/>"),
    ])
}

fn body(repo: &Repo, name: &str, version: &str, env: &str, force: bool) -> Value {
    json!({ "repo": repo.url, "branch": "main", "name": name, "version": version, "env": env, "force": force })
}

/// Runs a task to its end; returns it and the message of its publish stage's success.
fn publish(srv: &Server, body: &Value) -> (cloudbuild_proto::task::Task, String) {
    let (status, task) = srv.create(body);
    assert_eq!(status, 201, "{task}");
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    let msg = srv.actions(t.id).into_iter().filter(|a| a.0 == "publish").map(|a| a.1).next_back().unwrap_or_default();
    (t, msg)
}

fn releases(srv: &Server, name: &str, env: &str) -> Vec<Value> {
    get_json(&format!("{}/api/v1/releases?name={name}&env={env}", srv.url)).unwrap()["releases"]
        .as_array()
        .unwrap()
        .clone()
}

fn rollback(srv: &Server, body: Value) -> (u16, Value) {
    request("POST", &format!("{}/api/v1/releases/rollback", srv.url), Some(&body))
}

#[test]
fn incremental_publish_versions_and_rollback_on_the_local_target() {
    let srv = server("");
    let repo = site_repo("rel-site", "<h1>one</h1>");
    let (t1, msg) = publish(&srv, &body(&repo, "rel-site", "1.0.0", "test", false));
    assert_eq!(t1.state, TaskState::Succeeded, "{t1:?}");
    assert!(msg.contains("uploaded 3 files") && msg.contains("skipped 0 files"), "{msg}");
    let url = t1.url.clone().unwrap();
    assert_eq!(url, srv.site_url("test", "rel-site"));

    // Content types and cache policy.
    let (status, cc, text) = get_with_header(&url, "cache-control");
    assert_eq!((status, cc.as_deref(), text.as_str()), (200, Some("no-cache"), "<h1>one</h1>"));
    assert_eq!(get_with_header(&url, "content-type").1.as_deref(), Some("text/html; charset=utf-8"));
    let asset = format!("{url}assets/app-AbCd1234.js");
    assert_eq!(get_with_header(&asset, "cache-control").1.as_deref(), Some("public, max-age=31536000, immutable"));
    assert_eq!(
        get_with_header(&format!("{url}logo.svg"), "cache-control").1.as_deref(),
        Some("public, max-age=300, must-revalidate")
    );
    assert_eq!(
        get_with_header(&format!("{url}logo.svg"), "content-type").1.as_deref(),
        Some("image/svg+xml; charset=utf-8")
    );

    // Unchanged output uploads nothing.
    let (t2, msg) = publish(&srv, &body(&repo, "rel-site", "1.0.0", "test", false));
    assert_eq!(t2.state, TaskState::Succeeded);
    assert!(msg.contains("uploaded 0 files (0 bytes), skipped 3 files"), "{msg}");

    // One changed file uploads one file; the old release keeps its immutable URL. (An asset
    // only the old release has stays reachable at the environment URL for pages loaded before
    // the switch.)
    let old_only = format!("{url}assets/old-Zz9Yy8Xx.js");
    repo.commit(&[("site/assets/old-Zz9Yy8Xx.js", "old asset"), ("site/leak.txt", "secret")], "old asset");
    repo.set_version("1.0.1");
    publish(&srv, &body(&repo, "rel-site", "1.0.1", "test", false));
    std::fs::remove_file(repo.work.join("site/assets/old-Zz9Yy8Xx.js")).unwrap();
    std::fs::remove_file(repo.work.join("site/leak.txt")).unwrap();
    repo.commit(&[("site/index.html", "<h1>two</h1>")], "two");
    repo.set_version("1.1.0");
    let (t3, msg) = publish(&srv, &body(&repo, "rel-site", "1.1.0", "test", false));
    assert!(msg.contains("uploaded 1 file (") && msg.contains("skipped 2 files"), "{msg}");
    assert_eq!(get_text(&url).1, "<h1>two</h1>");
    assert_eq!(get_text(&old_only), (200, "old asset".to_string()), "served from the previous release");
    assert_eq!(get_text(&format!("{url}missing.html")).0, 404, "HTML never falls back");
    assert_eq!(get_text(&format!("{url}leak.txt")).0, 404, "a file the new release dropped is gone");
    // The immutable URL by host, and the same release by path.
    assert!(msg.contains(&srv.site_url("test", &format!("rel-site---{}", t3.id))), "{msg}");
    assert_eq!(get_text(&srv.site_url("test", &format!("rel-site---{}", t1.id))).1, "<h1>one</h1>");
    let immutable = format!("{}/releases/test/rel-site/1.0.0/{}/", srv.url, t1.id);
    let (status, cc, text) = get_with_header(&immutable, "cache-control");
    assert_eq!((status, text.as_str()), (200, "<h1>one</h1>"));
    assert_eq!(cc.as_deref(), Some("public, max-age=31536000, immutable"));

    // prod: a version is published once, unless forced.
    let (p1, _) = publish(&srv, &body(&repo, "rel-site", "1.1.0", "prod", false));
    assert_eq!(p1.state, TaskState::Succeeded);
    let (status, refused) = srv.create(&body(&repo, "rel-site", "1.1.0", "prod", false));
    assert_eq!((status, refused["code"].as_str()), (409, Some("version_exists")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("--force"));
    // The CLI (version 1.2.0 from package.json): first publish, refusal, --force.
    repo.set_version("1.2.0");
    assert!(srv.cli(&repo.work, &["publish", "--env", "prod"]).status.success());
    let out = srv.cli(&repo.work, &["publish", "--env", "prod"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(srv.cli(&repo.work, &["publish", "--env", "prod", "--force"]).status.success());
    let (p2, _) = publish(&srv, &body(&repo, "rel-site", "1.2.0", "prod", true));
    assert_eq!(p2.state, TaskState::Succeeded);
    assert_eq!(get_text(&format!("{}/sites/prod/rel-site/", srv.url)).1, "<h1>two</h1>");

    // History and rollback.
    let test = releases(&srv, "rel-site", "test");
    assert_eq!(test.len(), 4);
    assert_eq!(test[0]["task_id"], t3.id);
    assert_eq!(test[0]["current"], true);
    assert_eq!(test[0]["commit"].as_str().map(str::len), Some(40));
    let (status, rb) = rollback(&srv, json!({ "name": "rel-site", "env": "test" }));
    assert_eq!(status, 200, "{rb}");
    assert_eq!(rb["release"]["version"], "1.0.1", "the release before the current one");
    assert_eq!(get_text(&url).1, "<h1>one</h1>", "switched back without a rebuild");
    assert_eq!(get_text(&format!("{}/sites/prod/rel-site/", srv.url)).1, "<h1>two</h1>", "prod untouched");
    let out = srv.cli(&repo.work, &["rollback", "rel-site", "--env", "test", "--to", "1.1.0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get_text(&url).1, "<h1>two</h1>");
    let out = srv.cli(&repo.work, &["releases", "rel-site", "--env", "test"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("current") && table.contains("1.0.0") && table.contains("anonymous"), "{table}");
    let (status, rb) = rollback(&srv, json!({ "name": "rel-site", "env": "test", "to": "9.9.9" }));
    assert_eq!((status, rb["code"].as_str()), (404, Some("not_found")));
    // Back at the oldest release, the message names the newer ones and how to switch.
    let (status, rb) = rollback(&srv, json!({ "name": "rel-site", "env": "test", "to": "1.0.0" }));
    assert_eq!(status, 200, "{rb}");
    let (status, rb) = rollback(&srv, json!({ "name": "rel-site", "env": "test" }));
    assert_eq!((status, rb["release"]["task_id"].as_i64()), (200, Some(t1.id)), "{rb}");
    let (status, rb) = rollback(&srv, json!({ "name": "rel-site", "env": "test" }));
    let message = rb["message"].as_str().unwrap_or_default();
    assert_eq!(status, 409, "{rb}");
    assert!(message.contains("newer: 1.1.0, 1.0.1") && message.contains("switch with --to 1.1.0"), "{message}");
    // A project with no release in an environment says so, not "before the current one".
    let (status, rb) = rollback(&srv, json!({ "name": "never-published", "env": "prod" }));
    let message = rb["message"].as_str().unwrap_or_default();
    assert_eq!((status, message), (409, "never-published has no prod release yet: there is nothing to roll back"));
}

#[test]
fn a_publish_that_fails_half_way_leaves_the_current_release() {
    let srv = server("[limits]\nmax_file_bytes = 4096\n");
    let repo = site_repo("rel-fail", "<h1>good</h1>");
    let (t1, _) = publish(&srv, &body(&repo, "rel-fail", "1.0.0", "test", false));
    assert_eq!(t1.state, TaskState::Succeeded);
    repo.commit(&[("site/index.html", "<h1>broken</h1>"), ("site/big.bin", &"x".repeat(10_000))], "big");
    repo.set_version("1.1.0");
    let (t2, _) = publish(&srv, &body(&repo, "rel-fail", "1.1.0", "test", false));
    assert_eq!((t2.state, t2.stage), (TaskState::Failed, Some(Stage::Publish)), "{t2:?}");
    assert!(t2.reason.unwrap().contains("max_file_bytes"));
    assert_eq!(get_text(&t1.url.unwrap()).1, "<h1>good</h1>", "the current release is untouched");
    assert_eq!(releases(&srv, "rel-fail", "test").len(), 1, "no release was recorded");
    let staging = srv.data.path().join("data/staging");
    let leftovers = || std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while leftovers() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(leftovers(), 0, "staged contents of the failed publish are removed");
}

#[test]
fn old_releases_are_pruned_but_never_the_current_one() {
    let srv = server("[releases]\nkeep = 2\n");
    let repo = site_repo("rel-keep", "<p>1</p>");
    let (t1, _) = publish(&srv, &body(&repo, "rel-keep", "1.0.0", "test", false));
    repo.commit(&[("site/index.html", "<p>2</p>")], "2");
    repo.set_version("1.0.1");
    publish(&srv, &body(&repo, "rel-keep", "1.0.1", "test", false));
    repo.commit(&[("site/index.html", "<p>3</p>")], "3");
    repo.set_version("1.0.2");
    let (t3, _) = publish(&srv, &body(&repo, "rel-keep", "1.0.2", "test", false));
    let list = releases(&srv, "rel-keep", "test");
    let states: Vec<(bool, bool)> =
        list.iter().map(|r| (r["current"].as_bool().unwrap(), r["pruned"].as_bool().unwrap())).collect();
    assert_eq!(states, vec![(true, false), (false, false), (false, true)]);
    assert_eq!(
        get_text(&format!("{}/releases/test/rel-keep/1.0.0/{}/", srv.url, t1.id)).0,
        404,
        "pruned files are gone"
    );
    assert_eq!(get_text(&t3.url.unwrap()).1, "<p>3</p>");
    let (status, _) = rollback(&srv, json!({ "name": "rel-keep", "env": "test", "to": "1.0.0" }));
    assert_eq!(status, 404, "a pruned release cannot be switched to");
}

#[test]
fn s3_target_incremental_publish_switch_rollback_and_outage() {
    let mut s3 = S3Server::start("site-bucket").unwrap();
    let toml = format!(
        "[targets.test]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"site-bucket\"\nprefix = \"web\"\nallow_http = true\npublic_url = \"https://cdn.example.com/web\"\n",
        s3.endpoint
    );
    let env = [("AWS_ACCESS_KEY_ID", s3.access_key.as_str()), ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str())];
    let srv = Server::start_with_env(bin(), &toml, &env).unwrap();
    let repo = site_repo("s3-site", "<h1>s3 one</h1>");
    let (t1, msg) = publish(&srv, &body(&repo, "s3-site", "1.0.0", "test", false));
    assert_eq!(t1.state, TaskState::Succeeded, "{t1:?}\n{}", srv.log());
    assert!(msg.contains("uploaded 3 files"), "{msg}");
    assert_eq!(t1.url.as_deref(), Some("https://cdn.example.com/web/s3-site/"));
    let bucket = s3.root.path().join("site-bucket/web");
    let obj = |key: &str| std::fs::read(bucket.join(key)).ok().map(|b| String::from_utf8_lossy(&b).into_owned());
    assert_eq!(
        obj(&format!("s3-site/1.0.0/{}/index.html", t1.id)).as_deref(),
        Some("<h1>s3 one</h1>"),
        "immutable copy"
    );
    assert_eq!(obj("s3-site/index.html").as_deref(), Some("<h1>s3 one</h1>"), "current copy");
    assert_eq!(obj("s3-site/assets/app-AbCd1234.js").as_deref(), Some("console.log('app')"));

    let (_, msg) = publish(&srv, &body(&repo, "s3-site", "1.0.0", "test", false));
    assert!(msg.contains("uploaded 0 files (0 bytes), skipped 3 files"), "{msg}");

    // One changed file, one removed: one upload; the current copy follows, the stale file goes.
    std::fs::remove_file(repo.work.join("site/logo.svg")).unwrap();
    repo.commit(&[("site/index.html", "<h1>s3 two</h1>")], "two");
    repo.set_version("1.1.0");
    let (t3, msg) = publish(&srv, &body(&repo, "s3-site", "1.1.0", "test", false));
    assert!(msg.contains("uploaded 1 file (") && msg.contains("skipped 1 file ("), "{msg}");
    assert_eq!(obj("s3-site/index.html").as_deref(), Some("<h1>s3 two</h1>"));
    assert_eq!(obj("s3-site/logo.svg"), None, "files the new release lacks are removed from the current copy");
    assert!(obj(&format!("s3-site/1.0.0/{}/logo.svg", t1.id)).is_some(), "old releases stay whole");

    let (status, rb) = rollback(&srv, json!({ "name": "s3-site", "env": "test", "to": "1.0.0" }));
    assert_eq!(status, 200, "{rb}");
    assert_eq!(obj("s3-site/index.html").as_deref(), Some("<h1>s3 one</h1>"));
    assert_eq!(obj("s3-site/logo.svg").as_deref(), Some("<svg/>"));

    // The store goes away mid-publish: the task fails at publish and nothing current changes.
    s3.stop();
    repo.commit(&[("site/index.html", "<h1>s3 three</h1>")], "three");
    repo.set_version("1.2.0");
    let (t4, _) = publish(&srv, &body(&repo, "s3-site", "1.2.0", "test", false));
    assert_eq!((t4.state, t4.stage), (TaskState::Failed, Some(Stage::Publish)), "{t4:?}");
    assert_eq!(obj("s3-site/index.html").as_deref(), Some("<h1>s3 one</h1>"));
    let list = releases(&srv, "s3-site", "test");
    assert_eq!(list.len(), 3, "the failed publish recorded no release");
    assert!(list.iter().any(|r| r["current"] == true && r["version"] == "1.0.0"));
    drop(t3);
}

#[test]
fn of_concurrent_prod_publishes_of_one_version_exactly_one_wins() {
    let srv = server("[workers]\nembedded_slots = 3\n");
    // A barrier: each build waits until all three have built, so they publish together.
    let barrier = srv.probe.path().join("barrier");
    std::fs::create_dir_all(&barrier).unwrap();
    std::fs::set_permissions(&barrier, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    // Named by task: in their sandboxes, the three builds may well have the same pid.
    let build = format!(
        "const fs = require('fs'); const dir = {dir:?};\
         fs.writeFileSync(dir + '/' + process.env.CLOUDBUILD_TASK_ID, '');\
         while (fs.readdirSync(dir).length < 3) {{ Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20); }}\
         fs.cpSync('site', 'dist', {{ recursive: true }});",
        dir = barrier.to_str().unwrap()
    );
    let repo = site_repo("rel-race", "<h1>race</h1>");
    repo.commit(&[("build.js", &build)], "barrier");
    repo.set_version("2.0.0");
    // All three pass the check at creation (nothing is released yet) and build at once.
    let ids: Vec<i64> = (0..3)
        .map(|_| {
            let (status, t) = srv.create(&body(&repo, "rel-race", "2.0.0", "prod", false));
            assert_eq!(status, 201, "{t}");
            t["id"].as_i64().unwrap()
        })
        .collect();
    let done: Vec<_> = ids.iter().map(|id| srv.wait_done(*id)).collect();
    let winners: Vec<_> = done.iter().filter(|t| t.state == TaskState::Succeeded).collect();
    assert_eq!(winners.len(), 1, "{done:?}");
    for loser in done.iter().filter(|t| t.state != TaskState::Succeeded) {
        assert_eq!((loser.state, loser.stage), (TaskState::Failed, Some(Stage::Publish)), "{loser:?}");
        assert!(loser.reason.as_deref().unwrap_or_default().contains("already published to prod"), "{loser:?}");
    }
    let list = releases(&srv, "rel-race", "prod");
    assert_eq!(list.len(), 1);
    assert_eq!((list[0]["task_id"].as_i64(), list[0]["current"].as_bool()), (Some(winners[0].id), Some(true)));
}

#[test]
fn published_files_are_read_only_and_a_changed_one_is_never_copied() {
    use std::os::unix::fs::PermissionsExt;
    let srv = server("");
    let repo = site_repo("ro-site", "<h1>one</h1>");
    let (t1, _) = publish(&srv, &body(&repo, "ro-site", "1.0.0", "test", false));
    assert_eq!(t1.state, TaskState::Succeeded, "{t1:?}");
    let release = srv.data.path().join(format!("data/targets/test/ro-site/1.0.0/{}", t1.id));
    let asset = release.join("assets/app-AbCd1234.js");
    for file in ["index.html", "assets/app-AbCd1234.js", "logo.svg"] {
        let mode = std::fs::metadata(release.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "{file} is read-only ({mode:o})");
    }
    // Someone with the server's rights changes a published file anyway: the next release that
    // holds the same content must not link it in.
    std::fs::set_permissions(&asset, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&asset, "console.log('defaced')").unwrap();
    let (t2, _) = publish(&srv, &body(&repo, "ro-site", "1.0.0", "test", false));
    assert_eq!(t2.state, TaskState::Failed, "{t2:?}");
    let reason = t2.reason.unwrap_or_default();
    assert!(reason.contains("does not match its hash"), "{reason}");
    assert!(
        !srv.data.path().join(format!("data/targets/test/ro-site/1.0.0/{}/assets/app-AbCd1234.js", t2.id)).exists(),
        "nothing was copied from the changed file"
    );
    let current: Vec<Value> = releases(&srv, "ro-site", "test").into_iter().filter(|r| r["current"] == true).collect();
    assert_eq!(current[0]["task_id"], t1.id, "the current release did not change");
}
