//! A forge's push builds and publishes with the real binary: a GitHub delivery signed with the
//! project's webhook secret, for a `file://` repository, queues a build of the pushed commit
//! that publishes the version its `package.json` carries (bumped and pushed without anyone
//! saying so); the site serves it; the delivery is recorded with its task; the CLI shows the
//! secret and the deliveries and edits the trigger rules.

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{get_text, post_with_headers, request, Repo};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::server;

#[test]
fn a_signed_push_builds_the_pushed_commit_and_publishes_its_version() {
    let srv = server("");
    let repo = Repo::site("hooked", "<h1>one</h1>");
    let (status, created) =
        request("POST", &format!("{}/api/v1/projects", srv.url), Some(&json!({"name": "hooked", "repo": repo.url})));
    assert_eq!(status, 201, "{created}");
    let secret = created["webhook_secret"].as_str().expect("shown to its maintainer (the local admin)").to_owned();
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
    assert!(srv.output(id).contains("built for github delivery 72d3162e"), "{}", srv.output(id));
    assert_eq!(get_text(&srv.site_url("test", "hooked")).1, "<h1>two</h1>");
    let (_, releases) = request("GET", &format!("{}/api/v1/releases?name=hooked", srv.url), None);
    assert_eq!(releases["releases"][0]["version"], "1.4.2", "{releases}");
    // The CLI: the secret, the deliveries, the trigger rules.
    let shown = srv.cli(&repo.work, &["projects", "webhook-secret", "hooked"]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), secret);
    let listed =
        String::from_utf8_lossy(&srv.cli(&repo.work, &["projects", "deliveries", "hooked"]).stdout).into_owned();
    assert!(listed.contains("queued") && listed.contains(&format!("task {id} builds branch main")), "{listed}");
    let edit = ["projects", "edit", "hooked", "--trigger-branch", "release/*", "--trigger-tag", "prod-*"];
    let edited = String::from_utf8_lossy(&srv.cli(&repo.work, &edit).stdout).into_owned();
    assert!(edited.contains("push builds:    branches release/* → test; tags prod-* → prod"), "{edited}");
}
