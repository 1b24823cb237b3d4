//! Pull-request previews driven in-process (no worker: builds stay queued): each forge's pull
//! request event signed as the forge signs it builds the head into `preview/pr-<N>`, a newer
//! head supersedes the queued build, closing removes the preview, fork pull requests build only
//! when the project allows, the sweep removes expired previews, and clients cannot publish to
//! a preview themselves, and a build still running when its pull request closes cannot
//! publish the preview back.

mod common;

use axum::http::StatusCode;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{GlobalRole, ProjectRole};
use cloudbuild_store::Store;
use common::{add_user, api, code, github, hmac_hex, post, site, Api, WORKER_TOKEN};
use serde_json::{json, Value};

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";

async fn world() -> Api {
    let api = api(|c| c.auth.allow_anonymous = Some(false)).await;
    let store: &dyn Store = api.store.as_ref();
    add_user(store, "max", GlobalRole::User, false).await;
    add_user(store, "dev", GlobalRole::User, false).await;
    add_user(store, "root", GlobalRole::Admin, false).await;
    let members = [("max", ProjectRole::Maintainer), ("dev", ProjectRole::Developer)];
    assert!(store.create_project(&site(&members)).await.unwrap());
    api
}

async fn secret(api: &Api) -> String {
    let (_, project) = api.call("GET", "/api/v1/projects/site", Some("cbp_max"), None).await;
    project["webhook_secret"].as_str().unwrap().to_owned()
}

/// GitHub's `pull_request` payload (the documented fields cloudbuild reads).
fn github_pr(action: &str, head: &str, head_repo: &str, updated_at: &str) -> Value {
    json!({
        "action": action, "number": 12,
        "pull_request": {
            "number": 12, "title": "Add the login page", "html_url": "https://example.com/site/pull/12",
            "state": if action == "closed" { "closed" } else { "open" }, "merged": false, "updated_at": updated_at,
            "head": {"ref": "feature/login", "sha": head, "repo": {"full_name": head_repo}},
            "base": {"ref": "main", "sha": A, "repo": {"full_name": "o/site"}},
            "user": {"login": "octocat"},
        },
        "repository": {"clone_url": "https://example.com/site.git", "html_url": "https://example.com/site"},
        "sender": {"login": "octocat"},
    })
}

async fn task(api: &Api, id: i64) -> Value {
    api.call("GET", &format!("/api/v1/tasks/{id}"), Some("cbp_max"), None).await.1
}

async fn previews(api: &Api) -> Vec<Value> {
    let (status, list) = api.call("GET", "/api/v1/projects/site/previews", Some("cbp_dev"), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["previews"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_pull_request_builds_its_preview_a_newer_head_supersedes_and_closing_removes_it() {
    let api = world().await;
    let secret = secret(&api).await;
    let opened = github_pr("opened", A, "o/site", "2026-11-30T10:00:00Z");
    let (status, delivery) = github(&api, &secret, "pull_request", "p-1", &opened).await;
    assert_eq!((status, delivery["outcome"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{delivery}");
    let first = task(&api, delivery["task"].as_i64().unwrap()).await;
    assert_eq!(
        (first["env"].as_str(), first["trigger"].as_str(), first["branch"].as_str(), first["commit"].as_str()),
        (Some("preview/pr-12"), Some("preview"), Some("refs/pull/12/head"), Some(A)),
        "{first}"
    );
    assert_eq!(first["cause"], "github delivery p-1 (pull request #12)");
    let listed = previews(&api).await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0]["number"].as_u64(), listed[0]["head"].as_str()), (Some(12), Some(A)));
    assert_eq!(listed[0]["env"], "preview/pr-12");
    assert!(listed[0]["url"].as_str().unwrap().contains("pr-12"), "{}", listed[0]);
    let expires = listed[0]["expires_at"].as_str().unwrap().to_owned();

    // New commits: the queued build of the old head is superseded.
    let pushed = github_pr("synchronize", B, "o/site", "2026-11-30T11:00:00Z");
    let (_, second) = github(&api, &secret, "pull_request", "p-2", &pushed).await;
    assert_eq!(second["outcome"], "queued", "{second}");
    assert_eq!(task(&api, first["id"].as_i64().unwrap()).await["state"], "cancelled");
    let listed = previews(&api).await;
    assert_eq!((listed[0]["head"].as_str(), listed[0]["task"].as_i64()), (Some(B), second["task"].as_i64()));
    assert!(listed[0]["expires_at"].as_str().unwrap() >= expires.as_str(), "renewed on update");
    // An older update arriving late (forges do not promise order) is not built over it.
    let late = github_pr("synchronize", "3".repeat(40).as_str(), "o/site", "2026-11-30T10:30:00Z");
    let (_, late) = github(&api, &secret, "pull_request", "p-late", &late).await;
    assert_eq!(late["outcome"], "ignored", "{late}");
    assert!(late["detail"].as_str().unwrap().contains("older update"), "{late}");
    assert_eq!(previews(&api).await[0]["head"], B);
    // The same change under another delivery id creates nothing.
    let (_, again) = github(&api, &secret, "pull_request", "p-3", &pushed).await;
    assert_eq!(again["outcome"], "duplicate", "{again}");
    // A title edit builds nothing.
    let (_, edited) = github(&api, &secret, "pull_request", "p-4", &github_pr("edited", B, "o/site", "t5")).await;
    assert_eq!(edited["outcome"], "ignored", "{edited}");

    let (_, closed) = github(&api, &secret, "pull_request", "p-5", &github_pr("closed", B, "o/site", "t6")).await;
    assert_eq!(closed["outcome"], "deleted", "{closed}");
    assert!(previews(&api).await.is_empty());
    assert_eq!(task(&api, second["task"].as_i64().unwrap()).await["state"], "cancelled", "its build is stopped");
    let (_, audit) = api.call("GET", "/api/v1/audit?action=preview.remove", Some("cbp_max"), None).await;
    assert!(audit.to_string().contains("pull request #12 was closed"), "{audit}");
    // Reopened at the same head: built again (the forge's time tells it from the first open).
    let (_, reopened) = github(&api, &secret, "pull_request", "p-6", &github_pr("reopened", B, "o/site", "t7")).await;
    assert_eq!(reopened["outcome"], "queued", "{reopened}");
    assert_eq!(previews(&api).await.len(), 1);
    // Removing it on request: developers may; the number is checked.
    let (status, body) = api.call("DELETE", "/api/v1/projects/site/previews/pr-x", Some("cbp_dev"), None).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_input"), "{body}");
    let (status, _) = api.call("DELETE", "/api/v1/projects/site/previews/12", Some("cbp_dev"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.call("DELETE", "/api/v1/projects/site/previews/12", Some("cbp_dev"), None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{body}");
}

#[tokio::test]
async fn fork_pull_requests_build_only_when_the_project_allows_and_previews_can_be_off() {
    let api = world().await;
    let secret = secret(&api).await;
    let fork = github_pr("opened", A, "alice/site", "t1");
    let (_, refused) = github(&api, &secret, "pull_request", "f-1", &fork).await;
    assert_eq!(refused["outcome"], "ignored");
    assert!(refused["detail"].as_str().unwrap().contains("fork"), "{refused}");
    let allow = json!({"triggers": {"fork_previews": true, "preview_days": 3}});
    let (status, body) = api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(allow)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The forge sends the same delivery again (GitHub's Redeliver keeps its id): built now.
    let (_, built) = github(&api, &secret, "pull_request", "f-1", &fork).await;
    assert_eq!(built["outcome"], "queued", "{built}");
    let (_, again) = github(&api, &secret, "pull_request", "f-1", &fork).await;
    assert_eq!(again["outcome"], "duplicate", "once built, a delivery is not built twice: {again}");
    let listed = previews(&api).await;
    assert_eq!(listed[0]["fork"], true);
    let off = json!({"triggers": {"previews": false}});
    let (status, body) = api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(off)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(previews(&api).await.is_empty(), "turned off: the open ones go too");
    let (_, off) = github(&api, &secret, "pull_request", "f-3", &github_pr("synchronize", B, "o/site", "t3")).await;
    assert_eq!(off["outcome"], "ignored", "{off}");
    let bad = json!({"triggers": {"preview_days": 0}});
    let (status, body) = api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn gitlab_merge_requests_and_gitea_pull_requests() {
    let api = world().await;
    let secret = secret(&api).await;
    let mr = |action: &str, oldrev: Option<&str>, updated: &str| {
        let mut attrs = json!({
            "iid": 5, "title": "MR", "url": "https://example.com/site/-/merge_requests/5", "action": action,
            "source_branch": "feat", "source_project_id": 1, "target_project_id": 1,
            "last_commit": {"id": A}, "updated_at": updated,
        });
        if let Some(rev) = oldrev {
            attrs["oldrev"] = json!(rev);
        }
        json!({"object_kind": "merge_request", "user": {"username": "jsmith"},
               "project": {"git_http_url": "https://example.com/site.git"}, "object_attributes": attrs})
    };
    let gitlab = |body: Value, id: &'static str| {
        let api = &api;
        let secret = secret.clone();
        async move {
            let headers = [
                ("x-gitlab-event", "Merge Request Hook"),
                ("x-gitlab-event-uuid", id),
                ("x-gitlab-token", secret.as_str()),
            ];
            post(api, "/api/v1/hooks/gitlab", &headers, body.to_string().into_bytes()).await.1
        }
    };
    let opened = gitlab(mr("open", None, "2026-11-30 10:00:00 UTC"), "g-1").await;
    assert_eq!(opened["outcome"], "queued", "{opened}");
    assert_eq!(task(&api, opened["task"].as_i64().unwrap()).await["branch"], "refs/merge-requests/5/head");
    assert_eq!(
        gitlab(mr("update", None, "2026-11-30 10:05:00 UTC"), "g-2").await["outcome"],
        "ignored",
        "a title edit"
    );
    assert_eq!(
        gitlab(mr("update", Some(B), "2026-11-30 10:10:00 UTC"), "g-3").await["outcome"],
        "queued",
        "new commits"
    );
    assert_eq!(gitlab(mr("merge", None, "2026-11-30 10:15:00 UTC"), "g-4").await["outcome"], "deleted");

    let gitea = json!({
        "action": "synchronized", "number": 7,
        "pull_request": {"number": 7, "title": "t", "html_url": "https://example.com/site/pulls/7", "updated_at": "v1",
                         "head": {"ref": "dev", "sha": B, "repo_id": 9, "repo": {"id": 9, "full_name": "o/site"}},
                         "base": {"ref": "main", "sha": A, "repo_id": 9, "repo": {"id": 9, "full_name": "o/site"}},
                         "user": {"login": "g"}},
        "repository": {"clone_url": "https://example.com/site.git"},
    });
    let body = gitea.to_string().into_bytes();
    let signature = hmac_hex(&secret, &body);
    let headers = [("x-gitea-event", "pull_request"), ("x-gitea-delivery", "e-1"), ("x-gitea-signature", &signature)];
    let (_, delivery) = post(&api, "/api/v1/hooks/gitea", &headers, body).await;
    assert_eq!(delivery["outcome"], "queued", "{delivery}");
    assert_eq!(task(&api, delivery["task"].as_i64().unwrap()).await["env"], "preview/pr-7");
}

#[tokio::test]
async fn the_sweep_removes_previews_not_updated_for_their_days() {
    let api = world().await;
    let secret = secret(&api).await;
    github(&api, &secret, "pull_request", "s-1", &github_pr("opened", A, "o/site", "t1")).await;
    let day = 86_400 * 1_000_000;
    let now = Timestamp::now().0;
    let sweep = |at: i64| cloudbuild_server::domain::previews::sweep(&api.state, Timestamp(at));
    assert_eq!(sweep(now + 13 * day).await.unwrap(), 0, "14 days by default");
    assert_eq!(previews(&api).await.len(), 1);
    assert_eq!(sweep(now + 15 * day).await.unwrap(), 1);
    assert!(previews(&api).await.is_empty());
    assert_eq!(sweep(now + 16 * day).await.unwrap(), 0, "removed once");
    let (_, audit) = api.call("GET", "/api/v1/audit?action=preview.remove", Some("cbp_max"), None).await;
    assert!(audit.to_string().contains("preview_days = 14"), "{audit}");
}

#[tokio::test]
async fn clients_cannot_publish_to_a_preview_or_a_ref() {
    let api = world().await;
    let task = |env: &str, branch: &str| json!({"repo": "https://example.com/site.git", "branch": branch, "name": "site", "version": "1.0.0", "env": env});
    let (status, body) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(task("preview/pr-1", "main"))).await;
    assert!(body["message"].as_str().unwrap().contains("pull requests"), "{status} {body}");
    assert!(status.is_client_error());
    let (status, body) =
        api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(task("test", "refs/pull/1/head"))).await;
    assert!(status.is_client_error() && body["message"].as_str().unwrap().contains("ref"), "{status} {body}");
}

/// Sends a worker's publish call for `task` at attempt 1 with `lease`.
async fn publish_call(
    api: &Api,
    task: i64,
    lease: &str,
    method: &str,
    step: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    use axum::body::Body;
    use axum::http::{header, Request};
    use tower::ServiceExt;
    let req = Request::builder()
        .method(method)
        .uri(format!("/api/v1/tasks/{task}/attempts/1/publish/{step}"))
        .header(header::HOST, "127.0.0.1:7001")
        .header(header::AUTHORIZATION, format!("Bearer {WORKER_TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-cloudbuild-lease", lease)
        .body(Body::from(body))
        .unwrap();
    let resp = api.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_build_still_running_when_its_pull_request_closes_does_not_publish_the_preview_back() {
    use cloudbuild_store::{Change, WorkerOp};
    let api = world().await;
    let secret = secret(&api).await;
    let (_, opened) = github(&api, &secret, "pull_request", "r-1", &github_pr("opened", A, "o/site", "t1")).await;
    let task = opened["task"].as_i64().unwrap();
    // A worker took it and read its version; then the pull request is closed.
    let lease = "lease-secret-0123456789";
    let until = Timestamp(Timestamp::now().0 + 600_000_000);
    let hash = cloudbuild_server::secrets::lease_key_hash(lease);
    api.store.claim_next("w1", &[], until, &hash).await.unwrap().unwrap();
    let op = WorkerOp { task, attempt: 1, worker: "w1".into(), seq: 1, change: Change::Version("1.0.0".into()) };
    api.store.apply_worker_ops(vec![op]).await.unwrap().remove(0).unwrap();
    // It had planned and uploaded when the pull request is closed; its worker has not stopped
    // yet and commits: refused, nothing written or recorded.
    let content = b"<h1>pr</h1>";
    let file = json!({"path": "index.html", "size": content.len(), "hash": blake3::hash(content).to_hex().to_string()});
    let plan = json!({"files": [file]}).to_string().into_bytes();
    let (status, answer) = publish_call(&api, task, lease, "POST", "plan", plan.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let blob = format!("blobs/{}", blake3::hash(content).to_hex());
    assert_eq!(publish_call(&api, task, lease, "PUT", &blob, content.to_vec()).await.0, StatusCode::NO_CONTENT);
    let (_, closed) = github(&api, &secret, "pull_request", "r-2", &github_pr("closed", A, "o/site", "t2")).await;
    assert_eq!(closed["outcome"], "deleted", "{closed}");
    let (status, refused) = publish_call(&api, task, lease, "POST", "commit", plan.clone()).await;
    assert_eq!((status, code(&refused)), (StatusCode::CONFLICT, "preview_closed"), "{refused}");
    let (status, refused) = publish_call(&api, task, lease, "POST", "plan", plan).await;
    assert_eq!((status, code(&refused)), (StatusCode::CONFLICT, "preview_closed"), "planning too: {refused}");
    let site = api.state.settings.data_dir.join("targets/preview/pr-12/site");
    assert!(!site.exists(), "nothing written for the closed preview");
    let (_, releases) = api.call("GET", "/api/v1/releases?name=site", Some("cbp_max"), None).await;
    assert_eq!(releases["releases"], json!([]), "{releases}");
}

#[tokio::test]
async fn late_deliveries_neither_revive_a_closed_preview_nor_close_a_reopened_one_and_retries_follow_the_head() {
    let api = world().await;
    let secret = secret(&api).await;
    let send = |action: &'static str, head: &'static str, at: &'static str, id: &'static str| {
        let api = &api;
        let secret = secret.clone();
        async move { github(api, &secret, "pull_request", id, &github_pr(action, head, "o/site", at)).await.1 }
    };
    assert_eq!(send("opened", A, "2026-11-30T10:00:00Z", "l-1").await["outcome"], "queued");
    assert_eq!(send("closed", A, "2026-11-30T12:00:00Z", "l-2").await["outcome"], "deleted");
    // An update from before the close, delivered after it: the preview stays closed.
    let late = send("synchronize", B, "2026-11-30T11:00:00Z", "l-3").await;
    assert_eq!(late["outcome"], "ignored", "{late}");
    assert!(late["detail"].as_str().unwrap().contains("after its close"), "{late}");
    assert!(previews(&api).await.is_empty());
    // Reopened; then a close from before the reopening arrives: the preview stays.
    let reopened = send("reopened", B, "2026-11-30T14:00:00Z", "l-4").await;
    assert_eq!(reopened["outcome"], "queued", "{reopened}");
    let stale = send("closed", B, "2026-11-30T13:00:00Z", "l-5").await;
    assert_eq!(stale["outcome"], "ignored", "{stale}");
    // Times are instants whatever their offset: 15:30+02:00 is 13:30Z, before the reopening.
    let offset = send("closed", B, "2026-11-30T15:30:00+02:00", "l-5b").await;
    assert_eq!(offset["outcome"], "ignored", "{offset}");
    assert_eq!(previews(&api).await.len(), 1);

    // A retry builds the preview's head again and becomes its newest build; once the pull
    // request moved on, a retry of the older head is refused.
    let built = reopened["task"].as_i64().unwrap();
    let (status, _) = api.call("POST", &format!("/api/v1/tasks/{built}/cancel"), Some("cbp_dev"), None).await;
    assert!(status.is_success());
    let (status, retry) = api.call("POST", &format!("/api/v1/tasks/{built}/retry"), Some("cbp_dev"), None).await;
    assert_eq!(status, StatusCode::CREATED, "{retry}");
    assert_eq!((retry["env"].as_str(), retry["trigger"].as_str()), (Some("preview/pr-12"), Some("retry")));
    assert_eq!(previews(&api).await[0]["task"], retry["id"]);
    send("synchronize", "3333333333333333333333333333333333333333", "2026-11-30T15:00:00Z", "l-6").await;
    let (status, refused) = api.call("POST", &format!("/api/v1/tasks/{built}/retry"), Some("cbp_dev"), None).await;
    assert!(status.is_client_error() && refused["message"].as_str().unwrap().contains("moved on"), "{refused}");

    // A rollback names a version or a build, not both.
    let both = json!({"name": "site", "env": "preview/pr-12", "to": "1.0.0", "task": built});
    let (status, body) = api.call("POST", "/api/v1/releases/rollback", Some("cbp_max"), Some(both)).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_input"), "{body}");

    // Deleting the project's registration removes its previews first.
    let (status, body) = api.call("DELETE", "/api/v1/projects/site", Some("cbp_root"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, audit) = api.call("GET", "/api/v1/audit?action=preview.remove", Some("cbp_root"), None).await;
    assert!(audit.to_string().contains("registration was deleted"), "{audit}");
}
