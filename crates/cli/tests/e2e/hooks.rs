//! A forge's push builds and publishes with the real binary: a GitHub delivery signed with the
//! project's webhook secret, for a `file://` repository, queues a build of the pushed commit
//! that publishes the version its `package.json` carries (bumped and pushed without anyone
//! saying so); the site serves it; the forge is told pending then success (a recording forge
//! on loopback); the delivery is recorded with its task; the CLI shows the
//! secret and the deliveries and edits the trigger rules. Two servers on one Redis receiving
//! the same delivery, or the same push under two ids, at once, queue one build.

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{get_text, post_with_headers, request, ForgeRecorder, RedisServer, Repo};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::server;

/// A signed GitHub push of `after` on `main` from `repo_url`: its body and headers.
fn signed_push(secret: &str, repo_url: &str, after: &str, delivery: &str) -> (String, Vec<(&'static str, String)>) {
    let payload = json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": after,
        "repository": {"clone_url": repo_url}, "pusher": {"name": "octocat"},
        "head_commit": {"id": after, "message": "change"}, "commits": [],
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    let headers = vec![
        ("x-github-event", "push".to_owned()),
        ("x-github-delivery", delivery.to_owned()),
        ("x-hub-signature-256", format!("sha256={}", hex::encode(mac.finalize().into_bytes()))),
    ];
    (payload, headers)
}

#[test]
fn two_servers_on_redis_queue_one_build_for_a_delivery_they_both_receive() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let (a, b) = (
        crate::cluster::cluster_server(&redis, shared.path(), ""),
        crate::cluster::cluster_server(&redis, shared.path(), ""),
    );
    let repo = Repo::site("shared-hook", "<h1>x</h1>");
    let body = json!({"name": "shared-hook", "repo": repo.url});
    let (status, created) = request("POST", &format!("{}/api/v1/projects", a.url), Some(&body));
    assert_eq!(status, 201, "{created}");
    let secret = created["webhook_secret"].as_str().unwrap().to_owned();
    let head = repo.head();
    // The same delivery at both servers at once, then the same push under two ids.
    // The first round queues one build; the second (the same push again) none.
    for (id_a, id_b, want) in [("same-id", "same-id", [200, 202]), ("id-1", "id-2", [200, 200])] {
        let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
            let sends: Vec<_> = [(&a, id_a), (&b, id_b)]
                .into_iter()
                .map(|(srv, id)| {
                    let (payload, headers) = signed_push(&secret, &repo.url, &head, id);
                    let url = format!("{}/api/v1/hooks/github", srv.url);
                    s.spawn(move || {
                        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        post_with_headers(&url, &headers, &payload)
                    })
                })
                .collect();
            sends.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        statuses.sort();
        assert_eq!(statuses, want, "{answers:?}");
    }
    let (_, tasks) = request("GET", &format!("{}/api/v1/tasks", b.url), None);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1, "one build for one push: {tasks}");
}

#[test]
fn a_signed_push_builds_the_pushed_commit_and_publishes_its_version() {
    let forge = ForgeRecorder::start();
    // The repository is a `file://` one: its host is `file`.
    let srv = server(&format!("[forges.github]\napi_url = \"{}/api/v3\"\nhosts = [\"file\"]\n", forge.url));
    let repo = Repo::site("hooked", "<h1>one</h1>");
    let (status, created) =
        request("POST", &format!("{}/api/v1/projects", srv.url), Some(&json!({"name": "hooked", "repo": repo.url})));
    assert_eq!(status, 201, "{created}");
    let secret = created["webhook_secret"].as_str().expect("shown to its maintainer (the local admin)").to_owned();
    let link = json!({"forge": "github", "path": "octo/hooked", "token": "ghp_e2e"});
    let (status, linked) = request("PUT", &format!("{}/api/v1/projects/hooked/forge", srv.url), Some(&link));
    assert_eq!(status, 200, "{linked}");
    repo.commit(&[("build.js", &cloudbuild_testkit::build_script("<h1>two</h1>"))], "second page");
    repo.set_version("1.4.2");
    let after = repo.head();
    let payload = json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": after,
        "repository": {"clone_url": repo.url, "html_url": "https://example.com/hooked"},
        "pusher": {"name": "octocat"},
        "head_commit": {"id": after, "message": "version 1.4.2"},
        "commits": [{"id": after, "message": "version 1.4.2", "added": [], "modified": ["package.json"], "removed": []}],
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let headers = [
        ("x-github-event", "push"),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("x-hub-signature-256", signature.as_str()),
    ];
    let (status, delivery) = post_with_headers(&format!("{}/api/v1/hooks/github", srv.url), &headers, &payload);
    assert_eq!(status, 202, "{delivery}");
    let id = delivery["task"].as_i64().unwrap();
    let task = srv.wait_done(id);
    assert_eq!(task.state, TaskState::Succeeded, "{}", srv.output(id));
    assert_eq!((task.version.as_str(), task.commit.as_deref()), ("1.4.2", Some(after.as_str())));
    assert_eq!(task.cause.as_deref(), Some("github delivery 72d3162e-cc78-11e3-81ab-4c9367dc0958"));
    assert!(srv.output(id).contains("built for github delivery 72d3162e"), "{}", srv.output(id));
    assert_eq!(get_text(&srv.site_url("test", "hooked")).1, "<h1>two</h1>");
    // The forge was told success with the site's URL, for the pushed commit (after pending,
    // when a look came while the build ran: this one takes about as long as a look's period).
    let calls = forge.wait_for(|c| c.body["state"] == "success", std::time::Duration::from_secs(30));
    let status_path = format!("/api/v3/repos/octo/hooked/statuses/{after}");
    let (last, before) = calls.split_last().expect("a status call");
    assert_eq!((last.path.as_str(), last.body["state"].as_str()), (status_path.as_str(), Some("success")), "{calls:?}");
    assert!(
        before.iter().all(|c| c.path == status_path && c.body["state"] == "pending") && before.len() <= 1,
        "{calls:?}"
    );
    let site = srv.site_url("test", "hooked");
    assert_eq!(last.body["description"], format!("published 1.4.2 at {site}"));
    assert_eq!(last.body["target_url"], format!("{}/tasks/{id}", srv.url));
    assert_eq!(last.header("authorization"), Some("Bearer ghp_e2e"));
    let (_, releases) = request("GET", &format!("{}/api/v1/releases?name=hooked", srv.url), None);
    assert_eq!(releases["releases"][0]["version"], "1.4.2", "{releases}");
    // The CLI: the secret, the deliveries, the trigger rules.
    let shown = srv.cli(&repo.work, &["projects", "webhook-secret", "hooked"]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), secret);
    let listed =
        String::from_utf8_lossy(&srv.cli(&repo.work, &["projects", "deliveries", "hooked"]).stdout).into_owned();
    assert!(listed.contains("queued") && listed.contains(&format!("task {id} builds branch main")), "{listed}");
    assert!(listed.contains("commit status") && listed.contains("success → HTTP 201"), "{listed}");
    let shown = String::from_utf8_lossy(&srv.cli(&repo.work, &["projects", "show", "hooked"]).stdout).into_owned();
    assert!(shown.contains("commit statuses: github octo/hooked") && !shown.contains("ghp_e2e"), "{shown}");
    let edit = ["projects", "edit", "hooked", "--trigger-branch", "release/*", "--trigger-tag", "prod-*"];
    let edited = String::from_utf8_lossy(&srv.cli(&repo.work, &edit).stdout).into_owned();
    assert!(edited.contains("push builds:    branches release/* → test; tags prod-* → prod"), "{edited}");
}

/// A signed GitHub push of `after` on `main` whose one commit changed `files`.
fn push_changing(srv: &cloudbuild_testkit::Server, secret: &str, repo: &Repo, id: &str, files: &[&str]) -> i64 {
    let after = repo.head();
    let payload = json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": after,
        "repository": {"clone_url": repo.url}, "pusher": {"name": "octocat"},
        "head_commit": {"id": after, "message": "change"},
        "commits": [{"id": after, "message": "change", "added": files, "modified": [], "removed": []}],
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let headers = [("x-github-event", "push"), ("x-github-delivery", id), ("x-hub-signature-256", signature.as_str())];
    let (status, delivery) = post_with_headers(&format!("{}/api/v1/hooks/github", srv.url), &headers, &payload);
    assert_eq!(status, 202, "{delivery}");
    delivery["task"].as_i64().unwrap()
}

#[test]
fn path_filters_skip_a_push_that_changes_nothing_the_project_builds_for() {
    let srv = server("");
    let repo = Repo::site("filtered", "<h1>one</h1>");
    repo.commit(&[("cloudbuild.toml", "[trigger]\nignore_paths = [\"docs/**\", \"*.md\"]\n")], "path filters");
    let (status, created) =
        request("POST", &format!("{}/api/v1/projects", srv.url), Some(&json!({"name": "filtered", "repo": repo.url})));
    assert_eq!(status, 201, "{created}");
    let secret = created["webhook_secret"].as_str().unwrap().to_owned();

    repo.commit(&[("docs/guide.md", "# Guide\n"), ("README.md", "# filtered\n")], "docs only");
    let id = push_changing(&srv, &secret, &repo, "docs", &["docs/guide.md", "README.md"]);
    let task = srv.wait_done(id);
    assert_eq!(task.state, TaskState::Skipped, "{}", srv.output(id));
    let reason = task.reason.clone().unwrap_or_default();
    assert!(reason.contains("the 2 files it changed all match [trigger] ignore_paths"), "{reason}");
    let actions: Vec<String> = srv.actions(id).into_iter().map(|(a, _)| a).collect();
    assert!(!actions.iter().any(|a| a.starts_with("install")), "nothing installed: {actions:?}");
    let (_, releases) = request("GET", &format!("{}/api/v1/releases?name=filtered", srv.url), None);
    assert_eq!(releases["releases"], json!([]), "nothing published");
    // Following it says so and is not a failure.
    let logs = srv.cli(&repo.work, &["logs", &id.to_string()]);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    assert!(String::from_utf8_lossy(&logs.stdout).contains(&format!("task {id} skipped")));

    repo.commit(&[("build.js", &cloudbuild_testkit::build_script("<h1>two</h1>")), ("docs/more.md", "x")], "code");
    let id = push_changing(&srv, &secret, &repo, "code", &["build.js", "docs/more.md"]);
    let task = srv.wait_done(id);
    assert_eq!(task.state, TaskState::Succeeded, "{}", srv.output(id));
    assert_eq!(get_text(&srv.site_url("test", "filtered")).1, "<h1>two</h1>");
}
