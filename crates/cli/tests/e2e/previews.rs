//! A pull request's preview with the real binary: a GitHub `pull_request` delivery signed with
//! the project's webhook secret, for a `file://` repository whose origin keeps the head at
//! `refs/pull/12/head` as a forge does, builds the head and publishes it at its own origin
//! (`pr-12--<site>.preview.localhost`) and under `/sites/preview/<name>/pr-12/`, leaving
//! `test` untouched; new commits publish again; the forge is told with context
//! `cloudbuild/preview`; the CLI lists the preview; closing the pull request removes the site.
//! With an S3 preview target, the preview is under `<prefix>/pr-<N>/` and its removal deletes
//! every key there.

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{build_script, get_text, post_with_headers, request, ForgeRecorder, Repo, S3Server, Server};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::server;

/// Registers `name` building from `repo`; returns its webhook secret.
fn register(srv: &Server, name: &str, repo: &Repo) -> String {
    let body = json!({"name": name, "repo": repo.url});
    let (status, created) = request("POST", &format!("{}/api/v1/projects", srv.url), Some(&body));
    assert_eq!(status, 201, "{created}");
    created["webhook_secret"].as_str().unwrap().to_owned()
}

/// Sends a signed GitHub `pull_request` delivery of pull request `number`.
fn send(
    srv: &Server,
    secret: &str,
    repo: &Repo,
    (number, action, head, id): (u32, &str, &str, &str),
) -> (u16, serde_json::Value) {
    let (payload, headers) = delivery(secret, &repo.url, number, action, head, id);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post_with_headers(&format!("{}/api/v1/hooks/github", srv.url), &headers, &payload)
}

/// A signed GitHub `pull_request` delivery of `head` from `repo_url`.
fn delivery(
    secret: &str,
    repo_url: &str,
    number: u32,
    action: &str,
    head: &str,
    id: &str,
) -> (String, Vec<(&'static str, String)>) {
    let payload = json!({
        "action": action, "number": number,
        "pull_request": {
            "number": number, "title": "A new front page", "html_url": "https://example.com/o/previewed/pull/12",
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
    let secret = register(&srv, "previewed", &repo);
    let link = json!({"forge": "github", "path": "o/previewed", "token": "ghp_preview"});
    assert_eq!(request("PUT", &format!("{}/api/v1/projects/previewed/forge", srv.url), Some(&link)).0, 200);
    let send = |action: &str, head: &str, id: &str| send(&srv, &secret, &repo, (12, action, head, id));
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
    let first_build = id;
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
    // Both builds are version 1.0.0: the older one is switched back to by its task.
    let back = ["rollback", "previewed", "--env", "preview/pr-12", "--task", &first_build.to_string()];
    let rolled = srv.cli(&repo.work, &back);
    assert!(rolled.status.success(), "{}", String::from_utf8_lossy(&rolled.stderr));
    assert_eq!(get_text(&origin).1, "<h1>pull request one</h1>");
    let listed = srv.cli(&repo.work, &["previews", "list", "previewed"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("#12") && listed.contains(&origin) && listed.contains("A new front page"), "{listed}");
    assert!(listed.contains("succeeded"), "its newest build's state: {listed}");
    // In the checkout, `logs` and `open` mean the project's own publishes, not previews.
    let open = srv.cli(&repo.work, &["open", "--print"]);
    assert!(!String::from_utf8_lossy(&open.stdout).contains("preview"), "{}", String::from_utf8_lossy(&open.stdout));

    // A head the pull request's ref no longer holds (pushed over before the build ran) fails
    // with a reason about the pull request, not a branch.
    let gone = "ab".repeat(20);
    let (_, stale) = send("synchronize", &gone, "d-2b");
    let id = stale["task"].as_i64().unwrap();
    let failed = srv.wait_done(id);
    assert_eq!(failed.state, TaskState::Failed);
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.contains("is not refs/pull/12/head"), "{reason}");
    let (status, closed) = send("closed", &second, "d-3");
    assert_eq!((status, closed["outcome"].as_str()), (200, Some("deleted")), "{closed}");
    assert_eq!(get_text(&origin).0, 404, "removed with its pull request");
    assert_eq!(get_text(&by_path).0, 404);
    let pr_dir = srv.data.path().join("data/targets/preview/pr-12");
    assert!(!pr_dir.join("previewed").exists(), "nothing is left of it on disk");
    assert!(std::fs::symlink_metadata(pr_dir.join(".labels/previewed")).is_err(), "nor its host label");
    let (_, previews) = request("GET", &format!("{}/api/v1/projects/previewed/previews", srv.url), None);
    assert_eq!(previews["previews"], json!([]));
}

#[test]
fn an_s3_preview_target_holds_each_preview_under_its_pull_requests_prefix() {
    let s3 = S3Server::start("previews-bucket").unwrap();
    let toml = format!(
        "[targets.preview]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"previews-bucket\"\nprefix = \"web\"\nallow_http = true\npublic_url = \"https://cdn.example.com/web\"\n",
        s3.endpoint
    );
    let env = [("AWS_ACCESS_KEY_ID", s3.access_key.as_str()), ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str())];
    let srv = Server::start_with_env(crate::bin(), &toml, &env).unwrap();
    let repo = Repo::site("bucketed", "<h1>main</h1>");
    let secret = register(&srv, "bucketed", &repo);
    let head = repo.pull_request(4, &[("build.js", &build_script("<h1>in the bucket</h1>"))], "change");
    let (status, opened) = send(&srv, &secret, &repo, (4, "opened", &head, "s-1"));
    assert_eq!(status, 202, "{opened}");
    let id = opened["task"].as_i64().unwrap();
    let task = srv.wait_done(id);
    assert_eq!(task.state, TaskState::Succeeded, "{}", srv.output(id));
    assert_eq!(task.url.as_deref(), Some("https://cdn.example.com/web/pr-4/bucketed/"));
    let site = s3.root.path().join("previews-bucket/web/pr-4/bucketed");
    assert_eq!(std::fs::read_to_string(site.join("index.html")).unwrap(), "<h1>in the bucket</h1>", "current copy");
    assert!(site.join(format!("1.0.0/{id}/index.html")).exists(), "the immutable release");
    let (_, closed) = send(&srv, &secret, &repo, (4, "closed", &head, "s-2"));
    assert_eq!(closed["outcome"], "deleted", "{closed}");
    let left: Vec<_> = walkdir(&site);
    assert!(left.is_empty(), "every key of the preview is deleted: {left:?}");
}

/// The files under `dir` (none when it is gone).
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walkdir(&e.path()) } else { vec![e.path()] }).collect()
}
