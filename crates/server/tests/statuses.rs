//! Commit statuses driven in-process (no worker: builds are cancelled rather than built) to a
//! recording forge on loopback: a linked project's webhook build is told `pending` once, then
//! its end; the calls have the forge's shape (path, token header, state, context, link); 5xx
//! answers are retried and 4xx ones are not; every outcome is listed with the deliveries; the
//! token is never shown; an unlinked project's builds call nothing.

mod common;

use axum::http::StatusCode;
use cloudbuild_proto::user::{GlobalRole, ProjectRole};
use cloudbuild_server::domain::statuses::Reporter;
use cloudbuild_store::Store;
use cloudbuild_testkit::ForgeRecorder;
use common::{add_user, api, code, github, github_push, site, Api};
use serde_json::json;

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";
const TOKEN: &str = "ghp_0123456789abcdefXYZ";

async fn world(forge: &ForgeRecorder) -> Api {
    let url = forge.url.clone();
    let api = api(move |c| {
        c.auth.allow_anonymous = Some(false);
        c.forges.github.api_url = format!("{url}/api/v3");
        // The project's repository is on example.com; the forge's API on loopback.
        c.forges.github.hosts = vec!["example.com".into()];
    })
    .await;
    let store: &dyn Store = api.store.as_ref();
    add_user(store, "max", GlobalRole::User, false).await;
    add_user(store, "dev", GlobalRole::User, false).await;
    let members = [("max", ProjectRole::Maintainer), ("dev", ProjectRole::Developer)];
    assert!(store.create_project(&site(&members)).await.unwrap());
    api
}

async fn push(api: &Api, id: &str, after: &str) -> i64 {
    let (_, project) = api.call("GET", "/api/v1/projects/site", Some("cbp_max"), None).await;
    let secret = project["webhook_secret"].as_str().unwrap().to_owned();
    let (status, delivery) = github(api, &secret, "push", id, &github_push("refs/heads/main", after, "change")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{delivery}");
    delivery["task"].as_i64().unwrap()
}

#[tokio::test]
async fn a_linked_projects_build_is_told_pending_then_its_end_once() {
    let forge = ForgeRecorder::start();
    let api = world(&forge).await;
    let mut reporter = Reporter::new().unwrap();
    // Not linked yet: nothing is called.
    let first = push(&api, "d-0", B).await;
    reporter.report(&api.state).await.unwrap();
    assert!(forge.calls().is_empty());

    let link = json!({"forge": "github", "path": "octo/site", "token": TOKEN});
    let (status, body) = api.call("PUT", "/api/v1/projects/site/forge", Some("cbp_dev"), Some(link.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "maintainers only: {body}");
    for (bad, said) in [
        (json!({"forge": "github", "path": "octo/../x", "token": TOKEN}), "forge path"),
        (json!({"forge": "github", "path": "octo/site", "token": "tök en"}), "visible ASCII"),
        // gitlab.com's API does not serve example.com: its token is not sent there.
        (json!({"forge": "gitlab", "path": "octo/site", "token": TOKEN}), "does not serve"),
        (json!({"forge": "gitea", "path": "octo/site", "token": TOKEN}), "no [forges.gitea] api_url"),
    ] {
        let (status, body) = api.call("PUT", "/api/v1/projects/site/forge", Some("cbp_max"), Some(bad)).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_input"), "{body}");
        assert!(body["message"].as_str().unwrap().contains(said), "{said}: {body}");
    }
    let (status, body) = api.call("PUT", "/api/v1/projects/site/forge", Some("cbp_max"), Some(link)).await;
    assert_eq!((status, body["path"].as_str(), body.get("token")), (StatusCode::OK, Some("octo/site"), None));
    let (_, shown) = api.call("GET", "/api/v1/projects/site", Some("cbp_max"), None).await;
    assert_eq!(shown["forge"]["forge"], "github");
    let (_, listed) = api.call("GET", "/api/v1/projects", Some("cbp_max"), None).await;
    for answer in [&shown, &listed] {
        assert!(answer["forge"].get("token").is_none() && !answer.to_string().contains(TOKEN), "{answer}");
    }
    let stored = api.store.get_project("site").await.unwrap().unwrap();
    assert!(!serde_json::to_string(&stored).unwrap().contains(TOKEN), "sealed in the store");

    // Superseded by the next push: the first build (from before the link) is cancelled while
    // queued, and is not told: only builds after the link are.
    let id = push(&api, "d-1", A).await;
    reporter.report(&api.state).await.unwrap();
    let calls = forge.calls();
    let paths: Vec<(String, &str)> =
        calls.iter().map(|c| (c.path.clone(), c.body["state"].as_str().unwrap_or_default())).collect();
    assert_eq!(paths, [(format!("/api/v3/repos/octo/site/statuses/{A}"), "pending")], "task {first} is not told");
    let pending = &calls[0];
    assert_eq!(pending.method, "POST");
    assert_eq!(pending.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(pending.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(pending.body["context"], "cloudbuild/test");
    assert_eq!(pending.body["target_url"], format!("http://127.0.0.1:7001/tasks/{id}"));
    // Told once: another look calls nothing.
    reporter.report(&api.state).await.unwrap();
    assert_eq!(forge.calls().len(), 1);
    // A second server (another reporter) does not tell it again either.
    Reporter::new().unwrap().report(&api.state).await.unwrap();
    assert_eq!(forge.calls().len(), 1);

    // Two server errors, then the forge takes it: one status, three tries.
    forge.answer_with(&[502, 503]);
    let (status, _) = api.call("POST", &format!("/api/v1/tasks/{id}/cancel"), Some("cbp_max"), None).await;
    assert_eq!(status, StatusCode::OK);
    reporter.report(&api.state).await.unwrap();
    let calls = forge.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls[1..].iter().all(|c| c.body["state"] == "error" && c.body["description"] == "cloudbuild: cancelled"));

    // A refusal (401) is not retried, and says so.
    let third = push(&api, "d-2", "3333333333333333333333333333333333333333").await;
    forge.answer_with(&[401]);
    reporter.report(&api.state).await.unwrap();
    assert_eq!(forge.calls().len(), 5);

    let (_, deliveries) = api.call("GET", "/api/v1/projects/site/deliveries", Some("cbp_max"), None).await;
    let statuses: Vec<(String, String, String)> = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["event"] == "commit status")
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
            (s("outcome"), s("detail"), d["task"].to_string())
        })
        .collect();
    let of = |task: i64, what: &str| {
        statuses.iter().find(|(_, d, t)| *t == task.to_string() && d.starts_with(what)).cloned()
    };
    assert_eq!(of(id, "error").map(|s| s.0), Some("sent".into()), "{statuses:?}");
    assert!(of(id, "error").unwrap().1.contains("after 3 tries"), "{statuses:?}");
    let refused = of(third, "pending").expect("recorded");
    assert_eq!(refused.0, "failed");
    assert!(refused.1.contains("HTTP 401") && !refused.1.contains("tries"), "{refused:?}");
    assert!(!deliveries.to_string().contains(TOKEN));

    // Unlinked: no more calls.
    let (status, _) = api.call("DELETE", "/api/v1/projects/site/forge", Some("cbp_max"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    push(&api, "d-3", "4444444444444444444444444444444444444444").await;
    reporter.report(&api.state).await.unwrap();
    assert_eq!(forge.calls().len(), 5);
}

/// Another server's claim, as it stands in the store.
fn claim(task: i64, outcome: &str, age_secs: i64) -> cloudbuild_proto::webhook::Delivery {
    cloudbuild_proto::webhook::Delivery {
        forge: "github".into(),
        id: String::new(),
        project: "site".into(),
        event: "commit status".into(),
        reference: Some("main".into()),
        after: Some(A.into()),
        before: None,
        received_at: cloudbuild_proto::time::Timestamp(
            cloudbuild_proto::time::Timestamp::now().0 - age_secs * 1_000_000,
        ),
        outcome: outcome.into(),
        detail: format!("pending for task {task}"),
        task: Some(task),
    }
}

#[tokio::test]
async fn the_end_waits_for_a_pending_still_being_sent_and_a_dead_senders_claim_is_taken_over() {
    let forge = ForgeRecorder::start();
    let api = world(&forge).await;
    let link = json!({"forge": "github", "path": "octo/site", "token": TOKEN});
    assert_eq!(api.call("PUT", "/api/v1/projects/site/forge", Some("cbp_max"), Some(link)).await.0, StatusCode::OK);
    let id = push(&api, "d-1", A).await;
    // Another server claimed `pending` a moment ago and is still sending it.
    let key = format!("status:site:{id}:pending");
    assert!(api.store.claim_delivery(&key, &claim(id, "sending", 1), true).await.unwrap());
    let mut reporter = Reporter::new().unwrap();
    reporter.report(&api.state).await.unwrap();
    assert!(forge.calls().is_empty(), "its pending is the other server's");
    api.call("POST", &format!("/api/v1/tasks/{id}/cancel"), Some("cbp_max"), None).await;
    reporter.report(&api.state).await.unwrap();
    assert!(forge.calls().is_empty(), "the end waits: a pending landing after it would stay on the commit");
    api.store.set_delivery(&key, &claim(id, "sent", 1)).await.unwrap();
    reporter.report(&api.state).await.unwrap();
    let states: Vec<String> = forge.calls().iter().map(|c| c.body["state"].as_str().unwrap().to_owned()).collect();
    assert_eq!(states, ["error"]);

    // A claim left `sending` for minutes: its server died; this one takes it over.
    let next = push(&api, "d-2", B).await;
    let key = format!("status:site:{next}:pending");
    assert!(api.store.claim_delivery(&key, &claim(next, "sending", 600), true).await.unwrap());
    reporter.report(&api.state).await.unwrap();
    let calls = forge.calls();
    assert_eq!((calls.len(), calls[1].body["state"].as_str()), (2, Some("pending")), "{calls:?}");
    assert_eq!(api.store.get_delivery(&key).await.unwrap().map(|d| d.outcome), Some("sent".into()));
}

#[tokio::test]
async fn the_token_goes_only_to_a_forge_that_still_serves_the_repository() {
    let forge = ForgeRecorder::start();
    let api = world(&forge).await;
    let link = json!({"forge": "github", "path": "octo/site", "token": TOKEN});
    assert_eq!(api.call("PUT", "/api/v1/projects/site/forge", Some("cbp_max"), Some(link)).await.0, StatusCode::OK);
    let id = push(&api, "d-1", A).await;
    // The repository moved to a host this forge does not serve, after the link was made.
    let old = api.store.get_project("site").await.unwrap().unwrap();
    let moved = cloudbuild_proto::project::Project { repo_identity: "elsewhere.example/site".into(), ..old.clone() };
    assert!(api.store.update_project(&old, &moved).await.unwrap());
    Reporter::new().unwrap().report(&api.state).await.unwrap();
    assert!(forge.calls().is_empty(), "nothing sent");
    let record = api.store.get_delivery(&format!("status:site:{id}:pending")).await.unwrap().unwrap();
    assert_eq!(record.outcome, "not sent");
    assert!(record.detail.contains("does not serve elsewhere.example"), "{}", record.detail);
}
