//! Webhook deliveries driven in-process (no worker: builds stay queued): each forge's push
//! signed as the forge signs it, bad and missing signatures, SHA-1 only, an oversized body, a
//! replayed delivery id and one push under two ids, unknown events and projects, ping, trigger
//! rules for branches and tags, `[skip ci]`, a newer push superseding a queued build, a
//! deleted branch's builds cancelled; the webhook secret shown to maintainers only and
//! regenerated.

mod common;

use axum::http::StatusCode;
use cloudbuild_proto::user::{GlobalRole, ProjectRole};
use cloudbuild_store::Store;
use common::{add_user, api, code, github, github_push, hmac_hex, post, site, Api};
use serde_json::{json, Value};

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";

/// A server requiring sign-in with the project `site` (max maintainer, rep reporter).
async fn world() -> Api {
    let api = api(|c| c.auth.allow_anonymous = Some(false)).await;
    let store: &dyn Store = api.store.as_ref();
    add_user(store, "max", GlobalRole::User, false).await;
    add_user(store, "rep", GlobalRole::User, false).await;
    assert!(store
        .create_project(&site(&[("max", ProjectRole::Maintainer), ("rep", ProjectRole::Reporter)]))
        .await
        .unwrap());
    api
}

async fn secret(api: &Api) -> String {
    let (status, project) = api.call("GET", "/api/v1/projects/site", Some("cbp_max"), None).await;
    assert_eq!(status, StatusCode::OK, "{project}");
    project["webhook_secret"].as_str().expect("a maintainer sees the webhook secret").to_owned()
}

async fn task_count(api: &Api) -> usize {
    let (_, page) = api.call("GET", "/api/v1/tasks?limit=200", Some("cbp_max"), None).await;
    page["tasks"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_signed_github_push_queues_one_build_and_repeats_create_nothing() {
    let api = world().await;
    let secret = secret(&api).await;
    let push = github_push("refs/heads/main", A, "Add a page");
    let (status, delivery) = github(&api, &secret, "push", "d-1", &push).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{delivery}");
    assert_eq!((delivery["outcome"].as_str(), delivery["project"].as_str()), (Some("queued"), Some("site")));
    let id = delivery["task"].as_i64().unwrap();
    let (_, task) = api.call("GET", &format!("/api/v1/tasks/{id}"), Some("cbp_max"), None).await;
    assert_eq!(
        (task["trigger"].as_str(), task["branch"].as_str(), task["commit"].as_str()),
        (Some("webhook:github"), Some("main"), Some(A))
    );
    assert_eq!(
        (task["env"].as_str(), task["version"].as_str()),
        (Some("test"), Some("")),
        "the commit's version, read when built"
    );
    assert_eq!(task["requested_by"], "webhook:github");
    assert_eq!(task["cause"], "github delivery d-1", "the delivery that caused it");
    // The same delivery again, and the same push under another delivery id: nothing new.
    let (status, again) = github(&api, &secret, "push", "d-1", &push).await;
    assert_eq!((status, again["outcome"].as_str()), (StatusCode::OK, Some("duplicate")), "{again}");
    let (status, other_id) = github(&api, &secret, "push", "d-2", &push).await;
    assert_eq!((status, other_id["outcome"].as_str()), (StatusCode::OK, Some("duplicate")), "{other_id}");
    assert_eq!(task_count(&api).await, 1);
    // Recorded, newest first, for the project's readers.
    let (status, list) = api.call("GET", "/api/v1/projects/site/deliveries", Some("cbp_rep"), None).await;
    assert_eq!(status, StatusCode::OK);
    let outcomes: Vec<&str> =
        list["deliveries"].as_array().unwrap().iter().map(|d| d["outcome"].as_str().unwrap()).collect();
    // d-1 replayed is d-1 (one record); d-2 is the same push under another id.
    assert_eq!(outcomes, ["duplicate", "queued"], "each delivery listed once, newest first: {list}");
    // A force-push back to the same commit (another `before`) is a new push: it builds.
    let mut back = push.clone();
    back["before"] = json!(B);
    let (status, rebuilt) = github(&api, &secret, "push", "d-9", &back).await;
    assert_eq!((status, rebuilt["outcome"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{rebuilt}");
    let (_, ping) =
        github(&api, &secret, "ping", "d-3", &json!({"zen": "Keep it simple.", "repository": push["repository"]}))
            .await;
    assert_eq!(ping["outcome"], "pong");
}

#[tokio::test]
async fn unverified_deliveries_are_refused_and_create_nothing() {
    let api = world().await;
    let secret = secret(&api).await;
    let push = github_push("refs/heads/main", A, "x");
    let (status, body) = github(&api, "not-the-secret", "push", "d-1", &push).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "bad_signature"), "{body}");
    let bytes = push.to_string().into_bytes();
    let unsigned = post(&api, "/api/v1/hooks/github", &[("x-github-event", "push")], bytes.clone()).await;
    assert_eq!(unsigned.0, StatusCode::UNAUTHORIZED);
    assert!(unsigned.1["message"].as_str().unwrap().contains("X-Hub-Signature-256"), "{}", unsigned.1);
    let sha1 = [("x-github-event", "push"), ("x-hub-signature", "sha1=0123")];
    let (status, body) = post(&api, "/api/v1/hooks/github", &sha1, bytes.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("SHA-1"), "{body}");
    let big = vec![b' '; (2 << 20) + 1];
    let (status, body) = post(&api, "/api/v1/hooks/github", &[("x-github-event", "push")], big).await;
    assert_eq!((status, code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"), "{body}");
    let (status, body) = github(&api, &secret, "issues", "d-4", &json!({})).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "unsupported_event"), "{body}");
    let mut elsewhere = push.clone();
    elsewhere["repository"] = json!({"clone_url": "https://example.com/unknown.git"});
    let (status, body) = github(&api, &secret, "push", "d-5", &elsewhere).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "bad_signature"), "names nothing: {body}");
    let wrong = github(&api, "wrong", "push", "d-7", &push).await.1;
    assert_eq!(body["message"], wrong["message"], "one answer for an unknown repository and a wrong secret");
    let bad_ref = github_push("refs/heads/--upload-pack=x", A, "x");
    let (status, body) = github(&api, &secret, "push", "d-6", &bad_ref).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_payload"), "{body}");
    let (status, body) = post(&api, "/api/v1/hooks/svn", &[], b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(task_count(&api).await, 0);
    let (_, list) = api.call("GET", "/api/v1/projects/site/deliveries", Some("cbp_max"), None).await;
    assert!(list["deliveries"].as_array().unwrap().is_empty(), "nothing recorded: {list}");
}

#[tokio::test]
async fn gitlab_and_gitea_deliveries_follow_the_trigger_rules() {
    let api = world().await;
    let secret = secret(&api).await;
    // GitLab: the secret token itself; a tag matching `v*` builds for prod.
    let tag = json!({
        "object_kind": "tag_push", "ref": "refs/tags/v1.0.0", "before": "0".repeat(40), "after": A,
        "user_username": "jsmith", "commits": [],
        "project": {"git_http_url": "https://example.com/site.git", "git_ssh_url": "git@example.com:site.git",
                    "web_url": "https://example.com/site"},
    });
    let headers =
        [("x-gitlab-event", "Tag Push Hook"), ("x-gitlab-token", secret.as_str()), ("x-gitlab-event-uuid", "u-1")];
    let (status, body) = post(&api, "/api/v1/hooks/gitlab", &headers, tag.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, task) = api.call("GET", &format!("/api/v1/tasks/{}", body["task"]), Some("cbp_max"), None).await;
    assert_eq!((task["env"].as_str(), task["branch"].as_str()), (Some("prod"), Some("v1.0.0")));
    let wrong = [("x-gitlab-event", "Tag Push Hook"), ("x-gitlab-token", "nope"), ("x-gitlab-event-uuid", "u-2")];
    assert_eq!(
        post(&api, "/api/v1/hooks/gitlab", &wrong, tag.to_string().into_bytes()).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Gitea: a bare hex HMAC; a branch that no rule names is recorded as ignored.
    let gitea = |reference: &str, after: &str, message: &str| {
        json!({"ref": reference, "after": after, "pusher": {"login": "g"}, "repository": {"clone_url": "https://example.com/site.git"},
               "commits": [{"id": after, "message": message}]})
        .to_string()
        .into_bytes()
    };
    let send_gitea = |body: Vec<u8>, id: &'static str| {
        let signature = hmac_hex(&secret, &body);
        let api = &api;
        async move {
            post(
                api,
                "/api/v1/hooks/gitea",
                &[("x-gitea-event", "push"), ("x-gitea-delivery", id), ("x-gitea-signature", &signature)],
                body,
            )
            .await
        }
    };
    let (status, body) = send_gitea(gitea("refs/heads/feature", B, "wip"), "g-1").await;
    assert_eq!((status, body["outcome"].as_str()), (StatusCode::OK, Some("ignored")), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("branch feature"), "{body}");
    let (_, body) = send_gitea(gitea("refs/heads/main", B, "Docs only [skip ci]"), "g-2").await;
    assert_eq!(body["outcome"], "skipped", "{body}");
    assert_eq!(task_count(&api).await, 1, "only the tag built");
    // The rules are the project's: a maintainer adds `release/*`.
    let rules = json!({"triggers": {"branches": ["main", "release/*"]}});
    assert_eq!(api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(rules)).await.0, StatusCode::OK);
    let (status, body) = send_gitea(gitea("refs/heads/release/2.0", B, "ship"), "g-3").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // A forge that sends no delivery id: the same push twice is one build, and the repeat
    // leaves the first one's record as it was.
    let unnamed = gitea("refs/heads/release/2.0", A, "again");
    let signature = hmac_hex(&secret, &unnamed);
    let headers = [("x-gitea-event", "push"), ("x-gitea-signature", signature.as_str())];
    assert_eq!(post(&api, "/api/v1/hooks/gitea", &headers, unnamed.clone()).await.0, StatusCode::ACCEPTED);
    let (status, repeat) = post(&api, "/api/v1/hooks/gitea", &headers, unnamed).await;
    assert_eq!((status, repeat["outcome"].as_str()), (StatusCode::OK, Some("duplicate")), "{repeat}");
    let (_, list) = api.call("GET", "/api/v1/projects/site/deliveries", Some("cbp_max"), None).await;
    assert_eq!(list["deliveries"][0]["outcome"], "queued", "{list}");
    let bad = json!({"triggers": {"branches": ["release/["]}});
    let (status, body) = api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(bad)).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_triggers"), "{body}");
}

#[tokio::test]
async fn a_newer_push_supersedes_a_queued_build_and_a_deleted_branch_cancels_its_builds() {
    let api = world().await;
    let secret = secret(&api).await;
    let (_, first) = github(&api, &secret, "push", "d-1", &github_push("refs/heads/main", A, "one")).await;
    // The second push changed only docs: its build counts the first one's files too, so
    // that path filters do not drop what the cancelled build would have built.
    let mut docs_only = github_push("refs/heads/main", B, "two");
    docs_only["commits"][0]["added"] = json!(["docs/guide.md"]);
    let (_, second) = github(&api, &secret, "push", "d-2", &docs_only).await;
    let changed = api.store.get_task(second["task"].as_i64().unwrap()).await.unwrap().changed;
    assert_eq!(changed, Some(vec!["docs/guide.md".to_owned(), "src/new.js".to_owned()]));
    let state = |id: &Value| {
        let api = &api;
        let id = id.as_i64().unwrap();
        async move { api.store.get_task(id).await.unwrap().state.as_str() }
    };
    assert_eq!(state(&first["task"]).await, "cancelled", "superseded by the newer push");
    assert_eq!(state(&second["task"]).await, "queued");
    // A build a worker took is not superseded: it runs on.
    let later = cloudbuild_proto::time::Timestamp(cloudbuild_proto::time::Timestamp::now().0 + 60_000_000);
    let taken = api.store.claim_next("w1", &[], later, "key").await.unwrap().unwrap();
    assert_eq!(taken.id, second["task"].as_i64().unwrap());
    const C: &str = "3333333333333333333333333333333333333333";
    let (_, third) = github(&api, &secret, "push", "d-4", &github_push("refs/heads/main", C, "three")).await;
    let running = api.store.get_task(taken.id).await.unwrap();
    assert_eq!((running.state.as_str(), running.cancel_requested), ("running", false), "left alone");
    let second = third;
    let (status, gone) =
        github(&api, &secret, "push", "d-3", &github_push("refs/heads/main", &"0".repeat(40), "")).await;
    assert_eq!((status, gone["outcome"].as_str()), (StatusCode::OK, Some("deleted")), "{gone}");
    assert!(gone["detail"].as_str().unwrap().contains("1 queued builds"), "{gone}");
    assert_eq!(state(&second["task"]).await, "cancelled");
}

#[tokio::test]
async fn the_webhook_secret_is_the_maintainers_and_regenerating_it_retires_the_old_one() {
    let api = world().await;
    let old = secret(&api).await;
    assert_eq!(old.len(), 64);
    assert_eq!(secret(&api).await, old, "made once, then kept");
    let (_, as_reporter) = api.call("GET", "/api/v1/projects/site", Some("cbp_rep"), None).await;
    assert!(as_reporter.get("webhook_secret").is_none(), "{as_reporter}");
    let (_, list) = api.call("GET", "/api/v1/projects", Some("cbp_max"), None).await;
    assert!(list["projects"][0].get("webhook_secret").is_none(), "not in lists: {list}");
    let stored = api.store.get_project("site").await.unwrap().unwrap().webhook_secret.unwrap();
    assert!(!stored.contains(&old), "sealed in the store");
    let (status, _) = api.call("POST", "/api/v1/projects/site/webhook-secret", Some("cbp_rep"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, fresh) = api.call("POST", "/api/v1/projects/site/webhook-secret", Some("cbp_max"), None).await;
    assert_eq!(status, StatusCode::OK);
    let fresh = fresh["webhook_secret"].as_str().unwrap().to_owned();
    assert_ne!(fresh, old);
    let push = github_push("refs/heads/main", A, "x");
    assert_eq!(github(&api, &old, "push", "d-1", &push).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(github(&api, &fresh, "push", "d-2", &push).await.0, StatusCode::ACCEPTED);
    let (_, audit) = api.call("GET", "/api/v1/audit?project=site", Some("cbp_max"), None).await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(
        actions.contains(&"project.webhook_secret.regenerate") && actions.contains(&"hook.delivery"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn a_delivery_that_could_not_be_acted_on_is_not_taken_for_a_duplicate_later() {
    // A project whose repository today's policy refuses (a loopback host): its build cannot be
    // queued, and the forge's retry must be tried again, not answered "duplicate".
    let api = api(|c| {
        c.auth.allow_anonymous = Some(false);
        c.git.allow_local_hosts = false;
    })
    .await;
    let store: &dyn Store = api.store.as_ref();
    add_user(store, "max", GlobalRole::User, false).await;
    let mut project = site(&[("max", ProjectRole::Maintainer)]);
    project.repo = "https://127.0.0.1/site.git".into();
    project.repo_identity = "127.0.0.1/site".into();
    assert!(store.create_project(&project).await.unwrap());
    let secret = secret(&api).await;
    let mut push = github_push("refs/heads/main", A, "x");
    push["repository"] = json!({"clone_url": "https://127.0.0.1/site.git"});
    let first = github(&api, &secret, "push", "d-1", &push).await;
    assert!(first.0.is_client_error() && first.1["outcome"].is_null(), "refused: {first:?}");
    let again = github(&api, &secret, "push", "d-1", &push).await;
    assert_eq!(again, first, "tried again, not a duplicate");
}

#[tokio::test]
async fn an_older_push_arriving_late_builds_nothing_but_a_force_push_back_builds() {
    let api = world().await;
    let secret = secret(&api).await;
    const Z: &str = "9999999999999999999999999999999999999999";
    let push = |before: &str, after: &str| {
        let mut p = github_push("refs/heads/main", after, "change");
        p["before"] = json!(before);
        p
    };
    // A→B is delivered first; Z→A, pushed before it, comes late.
    let (status, newer) = github(&api, &secret, "push", "d-new", &push(A, B)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{newer}");
    let (status, late) = github(&api, &secret, "push", "d-old", &push(Z, A)).await;
    assert_eq!((status, late["outcome"].as_str()), (StatusCode::OK, Some("ignored")), "{late}");
    assert!(late["detail"].as_str().unwrap().contains("older push arriving late: delivery d-new"), "{late}");
    assert_eq!(task_count(&api).await, 1);
    let kept = api.store.get_task(newer["task"].as_i64().unwrap()).await.unwrap();
    assert_eq!(kept.state.as_str(), "queued", "the newer build is not superseded by the older push");
    // B→A is a force-push back to A: it builds.
    let (status, back) = github(&api, &secret, "push", "d-back", &push(B, A)).await;
    assert_eq!((status, back["outcome"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{back}");
    // Onwards A→C→D, then a force-push back over both, D→A: it moves the branch on from its
    // newest push, so it builds (the ignored late delivery and the older pushes do not count).
    const C: &str = "3333333333333333333333333333333333333333";
    const D: &str = "4444444444444444444444444444444444444444";
    for (id, before, after) in [("d-c", A, C), ("d-d", C, D)] {
        let (status, answer) = github(&api, &secret, "push", id, &push(before, after)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    let (status, far_back) = github(&api, &secret, "push", "d-far", &push(D, A)).await;
    assert_eq!((status, far_back["outcome"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{far_back}");
    // A `before` that is not a full commit id is refused, not dropped.
    let (status, short) = github(&api, &secret, "push", "d-short", &push("a23644d", C)).await;
    assert_eq!((status, code(&short)), (StatusCode::BAD_REQUEST, "invalid_payload"), "{short}");
}
