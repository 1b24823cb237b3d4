//! A pull request's preview with the real binary: a GitHub `pull_request` delivery signed with
//! the project's webhook secret, for a `file://` repository whose origin keeps the head at
//! `refs/pull/12/head` as a forge does, builds the head and publishes it at its own origin
//! (`pr-12--<site>.preview.localhost`) and under `/sites/preview/<name>/pr-12/`, leaving
//! `test` untouched; new commits publish again; the forge is told with context
//! `cloudbuild/preview`; the CLI lists the preview; closing the pull request removes the site.

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{build_script, get_text, post_with_headers, request, ForgeRecorder, Repo};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::server;

/// A signed GitHub `pull_request` delivery (number 12) of `head` from `repo_url`.
fn delivery(secret: &str, repo_url: &str, action: &str, head: &str, id: &str) -> (String, Vec<(&'static str, String)>) {
    let payload = json!({
        "action": action, "number": 12,
        "pull_request": {
            "number": 12, "title": "A new front page", "html_url": "https://example.com/o/previewed/pull/12",
            "updated_at": id, "merged": false,
            "head": {"ref": "feature/front", "sha": head, "repo": {"full_name": "o/previewed"}},
            "base": {"ref": "main", "sha": head, "repo": {"full_name": "o/previewed"}},
            "user": {"login": "octocat"},
        },
        "repository": {"clone_url": repo_url},
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    let headers = vec![
        ("x-github-event", "pull_request".to_owned()),
        ("x-github-delivery", id.to_owned()),
        ("x-hub-signature-256", format!("sha256={}", hex::encode(mac.finalize().into_bytes()))),
    ];
    (payload, headers)
}

#[test]
fn a_pull_request_is_previewed_at_its_own_origin_updated_and_removed_on_close() {
    let forge = ForgeRecorder::start();
    let srv = server(&format!("[forges.github]\napi_url = \"{}/api/v3\"\nhosts = [\"file\"]\n", forge.url));
    let repo = Repo::site("previewed", "<h1>main</h1>");
    let body = json!({"name": "previewed", "repo": repo.url});
    let (status, created) = request("POST", &format!("{}/api/v1/projects", srv.url), Some(&body));
    assert_eq!(status, 201, "{created}");
    let secret = created["webhook_secret"].as_str().unwrap().to_owned();
    let link = json!({"forge": "github", "path": "o/previewed", "token": "ghp_preview"});
    assert_eq!(request("PUT", &format!("{}/api/v1/projects/previewed/forge", srv.url), Some(&link)).0, 200);
    let send = |action: &str, head: &str, id: &str| {
        let (payload, headers) = delivery(&secret, &repo.url, action, head, id);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post_with_headers(&format!("{}/api/v1/hooks/github", srv.url), &headers, &payload)
    };
    let port = srv.url.rsplit(':').next().unwrap().to_owned();
    let origin = format!("http://pr-12--previewed.preview.localhost:{port}/");
    let by_path = format!("{}/sites/preview/previewed/pr-12/", srv.url);

    let first = repo.pull_request(12, &[("build.js", &build_script("<h1>pull request one</h1>"))], "front page");
    let (status, opened) = send("opened", &first, "d-1");
    assert_eq!(status, 202, "{opened}");
    let id = opened["task"].as_i64().unwrap();
    let task = srv.wait_done(id);
    assert_eq!(task.state, TaskState::Succeeded, "{}", srv.output(id));
    assert_eq!(task.commit.as_deref(), Some(first.as_str()));
    assert!(
        srv.output(id).contains("preview of pull request #12 \"A new front page\" by octocat"),
        "{}",
        srv.output(id)
    );
    assert_eq!(get_text(&origin), (200, "<h1>pull request one</h1>".to_owned()));
    assert_eq!(get_text(&by_path).1, "<h1>pull request one</h1>");
    assert_eq!(get_text(&srv.site_url("test", "previewed")).0, 404, "test is untouched");
    assert_eq!(task.url.as_deref(), Some(origin.as_str()), "the task's URL is the preview's");

    // New commits on the pull request: published again at the same origin.
    let second = repo.pull_request(12, &[("build.js", &build_script("<h1>pull request two</h1>"))], "again");
    let (_, updated) = send("synchronize", &second, "d-2");
    let id = updated["task"].as_i64().unwrap();
    assert_eq!(srv.wait_done(id).state, TaskState::Succeeded, "{}", srv.output(id));
    assert_eq!(get_text(&origin).1, "<h1>pull request two</h1>");
    let calls = forge
        .wait_for(|c| c.body["state"] == "success" && c.path.ends_with(&second), std::time::Duration::from_secs(30));
    let last = calls.last().unwrap();
    assert_eq!(last.body["context"], "cloudbuild/preview", "{calls:?}");
    assert!(last.body["description"].as_str().unwrap().ends_with(&origin), "{calls:?}");
    let listed = srv.cli(&repo.work, &["previews", "list", "previewed"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("#12") && listed.contains(&origin) && listed.contains("A new front page"), "{listed}");

    let (status, closed) = send("closed", &second, "d-3");
    assert_eq!((status, closed["outcome"].as_str()), (200, Some("deleted")), "{closed}");
    assert_eq!(get_text(&origin).0, 404, "removed with its pull request");
    assert_eq!(get_text(&by_path).0, 404);
    let (_, previews) = request("GET", &format!("{}/api/v1/projects/previewed/previews", srv.url), None);
    assert_eq!(previews["previews"], json!([]));
}
