//! What is released is what was built: the CLI refuses local work the server would not see and
//! pins the commit it checked; the built commit's package.json names the release; a retry
//! builds the commit it retries; the newest build wins; only the lease holder publishes. (A
//! restart on the same address is in `recovery.rs`.)

use std::time::Duration;

use cloudbuild_proto::task::{Stage, TaskState};
use cloudbuild_testkit::{get_json, get_text, package_json, request, wait_file, Repo, Server};
use serde_json::json;

use crate::server;

const COPY_SITE: &str = "require('fs').cpSync('site', 'dist', { recursive: true });";

fn site(name: &str, page: &str) -> Repo {
    Repo::new(&[
        ("package.json", &package_json(name, &[("build", "node build.js")])),
        ("build.js", COPY_SITE),
        ("site/index.html", page),
    ])
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn releases(srv: &Server, name: &str, env: &str) -> Vec<serde_json::Value> {
    get_json(&format!("{}/api/v1/releases?name={name}&env={env}", srv.url)).unwrap()["releases"]
        .as_array()
        .unwrap()
        .clone()
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn publish_refuses_unpushed_work_and_builds_the_commit_it_names() {
    let srv = server("");
    let repo = site("id-cli", "<p>one</p>");
    let pushed = repo.head();
    let pkg = repo.work.join("package.json");
    let bumped = std::fs::read_to_string(&pkg).unwrap().replace("1.0.0", "1.2.0");

    // A version bumped but not committed.
    std::fs::write(&pkg, &bumped).unwrap();
    let out = srv.cli(&repo.work, &["publish"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("uncommitted changes") && text(&out).contains("--allow-dirty"), "{}", text(&out));

    // Committed but not pushed.
    git(&repo.work, &["commit", "-qam", "1.2.0"]);
    let out = srv.cli(&repo.work, &["publish"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("1 commit is not pushed to origin/main"), "{}", text(&out));
    assert!(get_json(&format!("{}/api/v1/tasks", srv.url)).unwrap()["tasks"].as_array().unwrap().is_empty());

    // --allow-dirty publishes what origin has, under origin's version, and says which commit.
    let out = srv.cli(&repo.work, &["publish", "--allow-dirty"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "publishing id-cli@1.0.0 to test: {} branch main at commit {}",
            repo.url,
            &pushed[..12]
        )),
        "{}",
        text(&out)
    );
    let list = releases(&srv, "id-cli", "test");
    assert_eq!((list[0]["version"].as_str(), list[0]["commit"].as_str()), (Some("1.0.0"), Some(pushed.as_str())));

    // Pushed: the new version is released with the commit that holds it.
    git(&repo.work, &["push", "-q", "origin", "HEAD:main"]);
    let out = srv.cli(&repo.work, &["publish"]);
    assert!(out.status.success(), "{}", text(&out));
    let list = releases(&srv, "id-cli", "test");
    assert_eq!((list[0]["version"].as_str(), list[0]["commit"].as_str()), (Some("1.2.0"), Some(repo.head().as_str())));

    // A branch origin does not have is refused before anything is created.
    git(&repo.work, &["checkout", "-qb", "local-only"]);
    let out = srv.cli(&repo.work, &["publish"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("has no branch or tag `local-only`: push it first"), "{}", text(&out));
}

#[test]
fn a_name_or_version_the_built_commit_does_not_carry_fails_before_install() {
    let srv = server("");
    let repo = site("id-check", "<p>x</p>");
    for (name, version, says) in [
        ("id-check", "1.2.0", "has version 1.0.0, but this task publishes 1.2.0"),
        ("someone-else", "1.0.0", "names the project `id-check`, but this task publishes `someone-else`"),
    ] {
        let (status, t) = srv.create(&json!({ "repo": repo.url, "branch": "main", "name": name, "version": version }));
        assert_eq!(status, 201, "{t}");
        let t = srv.wait_done(t["id"].as_i64().unwrap());
        assert_eq!((t.state, t.stage), (TaskState::Failed, Some(Stage::DownloadRepo)), "{t:?}");
        assert!(t.reason.as_deref().unwrap().contains(says), "{t:?}");
        assert!(!srv.actions(t.id).iter().any(|a| a.0 == "install"), "nothing was installed");
        assert!(releases(&srv, name, "test").is_empty(), "nothing was released");
    }
    // A commit id that is not one is refused at the edge.
    let (status, body) = srv.create(
        &json!({ "repo": repo.url, "branch": "main", "name": "id-check", "version": "1.0.0", "commit": "HEAD~1" }),
    );
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_input")), "{body}");
}

#[test]
fn a_retry_builds_the_commit_it_retries_or_says_it_is_gone() {
    let srv = server("");
    let repo = site("id-retry", "<p>one</p>");
    let first = repo.head();
    let (_, t) = srv.create(&repo.task_body("id-retry"));
    let t1 = srv.wait_done(t["id"].as_i64().unwrap());
    assert_eq!(t1.state, TaskState::Succeeded, "{t1:?}");

    // The branch moves on to 2.0.0; a retry of task 1 still builds task 1's commit.
    repo.commit(&[("site/index.html", "<p>two</p>")], "two");
    repo.set_version("2.0.0");
    let (status, r) = request("POST", &format!("{}/api/v1/tasks/{}/retry", srv.url, t1.id), None);
    assert_eq!(status, 201, "{r}");
    let r = srv.wait_done(r["id"].as_i64().unwrap());
    assert_eq!((r.state, r.commit.as_deref()), (TaskState::Succeeded, Some(first.as_str())), "{r:?}");
    assert_eq!(get_text(&r.url.unwrap()).1, "<p>one</p>");
    let list = releases(&srv, "id-retry", "test");
    assert!(list.iter().all(|rel| rel["version"] == "1.0.0" && rel["commit"] == first.as_str()), "{list:?}");

    // A commit force-pushed away and collected: the retry fails clearly, before install.
    repo.commit(&[("site/index.html", "<p>doomed</p>")], "doomed");
    let (_, d) = srv.create(
        &repo
            .task_body("id-retry")
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("version".into(), json!("2.0.0"));
                serde_json::Value::Object(o)
            })
            .unwrap(),
    );
    let doomed = srv.wait_done(d["id"].as_i64().unwrap());
    assert_eq!(doomed.state, TaskState::Succeeded, "{doomed:?}");
    git(&repo.work, &["reset", "-q", "--hard", "HEAD~1"]);
    git(&repo.work, &["push", "-q", "--force", "origin", "HEAD:main"]);
    let bare = repo.dir.path().join("origin.git");
    git(&bare, &["reflog", "expire", "--expire=now", "--all"]);
    git(&bare, &["gc", "-q", "--prune=now"]);
    let (status, r) = request("POST", &format!("{}/api/v1/tasks/{}/retry", srv.url, doomed.id), None);
    assert_eq!(status, 201, "{r}");
    let r = srv.wait_done(r["id"].as_i64().unwrap());
    assert_eq!((r.state, r.stage), (TaskState::Failed, Some(Stage::DownloadRepo)), "{r:?}");
    let reason = r.reason.unwrap();
    assert!(reason.contains(&format!("commit {} is not in", doomed.commit.unwrap())), "{reason}");
}

#[test]
fn the_newest_build_wins_whatever_finishes_last() {
    let srv = server("[workers]\nembedded_slots = 2\n");
    let gate = srv.probe.path().join("gate");
    let started = srv.probe.path().join("slow-started");
    // Builds of a commit holding `slow` wait for the gate file.
    let build = format!(
        "const fs=require('fs');\
         if(fs.existsSync('slow')){{fs.writeFileSync({s:?},'1');\
         while(!fs.existsSync({g:?})){{Atomics.wait(new Int32Array(new SharedArrayBuffer(4)),0,0,20);}}}}\
         fs.cpSync('site','dist',{{recursive:true}});",
        s = started.to_str().unwrap(),
        g = gate.to_str().unwrap()
    );
    let repo = site("id-newest", "<p>old</p>");
    repo.commit(&[("build.js", &build), ("slow", "")], "slow build");
    let (_, slow) = srv.create(&repo.task_body("id-newest"));
    let slow = slow["id"].as_i64().unwrap();
    wait_file(&started, Duration::from_secs(60)).expect("the slow build runs");

    std::fs::remove_file(repo.work.join("slow")).unwrap();
    repo.commit(&[("site/index.html", "<p>new</p>")], "fast");
    repo.set_version("1.0.1");
    let (_, fast) = srv.create(&json!({ "repo": repo.url, "branch": "main", "name": "id-newest", "version": "1.0.1" }));
    let fast = srv.wait_done(fast["id"].as_i64().unwrap());
    assert_eq!(fast.state, TaskState::Succeeded, "{fast:?}");
    let url = fast.url.clone().unwrap();
    assert_eq!(get_text(&url).1, "<p>new</p>");

    std::fs::write(&gate, "").unwrap();
    let slow = srv.wait_done(slow);
    assert_eq!(slow.state, TaskState::Succeeded, "{slow:?}");
    assert_eq!(get_text(&url).1, "<p>new</p>", "the older task's late finish does not replace the newer release");
    let publish = srv.actions(slow.id).into_iter().filter(|a| a.0 == "publish").map(|a| a.1).next_back().unwrap();
    assert!(publish.contains(&format!("NOT made current in test: task {} is newer", fast.id)), "{publish}");
    assert_eq!(
        slow.url.as_deref(),
        Some(srv.site_url("test", &format!("id-newest---{}", slow.id)).as_str()),
        "{slow:?}"
    );
    assert_eq!(get_text(slow.url.as_deref().unwrap()).1, "<p>old</p>", "its immutable URL serves it");
    let list = releases(&srv, "id-newest", "test");
    let states: Vec<(i64, bool)> =
        list.iter().map(|r| (r["task_id"].as_i64().unwrap(), r["current"] == true)).collect();
    assert_eq!(states, vec![(slow.id, false), (fast.id, true)]);

    // Rollback needs an environment: the tour's command must never roll back prod by default.
    let out = srv.cli(&repo.work, &["rollback", "id-newest"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--env"), "{}", text(&out));
    let out = srv.cli(&repo.work, &["rollback", "id-newest", "--env", "test", "--to", "1.0.0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rolled back id-newest in test: now 1.0.0"), "{}", text(&out));
    assert_eq!(get_text(&url).1, "<p>old</p>");
}

#[test]
fn only_the_worker_holding_a_task_publishes_it() {
    let srv = server("");
    let (status, token) =
        request("POST", &format!("{}/api/v1/worker-tokens", srv.url), Some(&json!({ "name": "idle-pool" })));
    assert_eq!(status, 201, "{token}");
    let token = token["token"].as_str().unwrap().to_owned();
    let gate = srv.probe.path().join("gate");
    let started = srv.probe.path().join("started");
    let build = format!(
        "const fs=require('fs');fs.writeFileSync({s:?},'1');\
         while(!fs.existsSync({g:?})){{Atomics.wait(new Int32Array(new SharedArrayBuffer(4)),0,0,20);}}\
         fs.cpSync('site','dist',{{recursive:true}});",
        s = started.to_str().unwrap(),
        g = gate.to_str().unwrap()
    );
    let repo = site("id-holder", "<p>real</p>");
    repo.commit(&[("build.js", &build)], "gated");
    let (_, t) = srv
        .create(&json!({ "repo": repo.url, "branch": "main", "name": "id-holder", "version": "1.0.0", "env": "prod" }));
    let id = t["id"].as_i64().unwrap();
    wait_file(&started, Duration::from_secs(60)).expect("the build runs");

    // A valid worker token of another pool tries the three publish calls for this attempt.
    let html = b"<p>defaced</p>";
    let hash = "d".repeat(64); // refused before any content check

    let manifest = json!({ "files": [{ "path": "index.html", "size": html.len(), "hash": hash }] });
    let base = format!("{}/api/v1/tasks/{id}/attempts/1/publish", srv.url);
    let call = |method: &str, url: &str, body: Vec<u8>, lease: Option<&str>| -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut req = cloudbuild_testkit::client()
                .request(method.parse().unwrap(), url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body);
            if let Some(l) = lease {
                req = req.header("x-cloudbuild-lease", l);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    let plan = manifest.to_string().into_bytes();
    for lease in [None, Some("cbl_guessed")] {
        let (status, body) = call("POST", &format!("{base}/plan"), plan.clone(), lease);
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("not_lease_holder"), "{body}");
        assert_eq!(call("PUT", &format!("{base}/blobs/{hash}"), html.to_vec(), lease).0, 403);
        assert_eq!(call("POST", &format!("{base}/commit"), plan.clone(), lease).0, 403);
    }
    assert!(releases(&srv, "id-holder", "prod").is_empty(), "nothing was published by the stranger");

    std::fs::write(&gate, "").unwrap();
    let t = srv.wait_done(id);
    assert_eq!(t.state, TaskState::Succeeded, "the real build publishes: {t:?}");
    assert_eq!(get_text(&t.url.unwrap()).1, "<p>real</p>");
}
