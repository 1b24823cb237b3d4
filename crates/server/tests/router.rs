//! The HTTP adapter driven in-process with `tower::ServiceExt::oneshot` (no socket, no worker):
//! extractors, the mapping of domain errors to statuses and stable codes, authentication.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use cloudbuild_server::app_state;
use cloudbuild_server::config::{ApiToken, ServerConfig};
use cloudbuild_store::SqliteStore;
use common::{api, code, TOKEN, WORKER_TOKEN};
use serde_json::json;
use tower::ServiceExt;

#[tokio::test]
async fn task_ids_and_queries_are_checked_at_the_edge() {
    let api = api(|_| {}).await;
    for bad in ["abc", "0", "-3", "1.5"] {
        let (status, body) = api.get(&format!("/api/v1/tasks/{bad}")).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_input"), "{bad}: {body}");
        assert!(body["message"].as_str().unwrap().contains("is not a task id"), "{body}");
    }
    let (status, body) = api.get("/api/v1/tasks/99").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(body["message"], "task 99 does not exist");
    let (status, body) = api.get("/api/v1/tasks?state=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("one of awaiting_approval, gated, queued, running"), "{body}");
    let (status, body) = api.get("/api/v1/tasks?colour=red").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_input"), "{body}");
    let (status, body) = api.get("/api/v1/tasks?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api.get("/api/v1/no-such-thing").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn task_requests_are_validated_before_anything_is_stored() {
    let api = api(|_| {}).await;
    let good = json!({"repo": "https://example.com/app.git", "branch": "main", "name": "app", "version": "1.0.0"});
    let cases = [
        ("repo", json!("file:///etc"), "invalid repo"),
        ("branch", json!("-x"), "invalid branch"),
        ("name", json!("../up"), "invalid name"),
        ("version", json!("1.0.0-01"), "invalid version"),
        ("build_cmd", json!("npm;id"), "invalid build command"),
        ("trigger", json!("retry"), "trigger `retry`"),
        // What only the server starts: a client cannot pass its build off as one.
        ("trigger", json!("webhook:github"), "trigger `webhook:github` is set by the server"),
        ("trigger", json!("schedule"), "trigger `schedule` is set by the server"),
        ("trigger", json!("preview"), "trigger `preview` is set by the server"),
        ("trigger", json!("socket.io"), "trigger `socket.io` is set by the server"),
    ];
    for (field, value, said) in cases {
        let mut body = good.clone();
        body[field] = value;
        let (status, answer) = api.call("POST", "/api/v1/tasks", None, Some(body)).await;
        assert_eq!((status, code(&answer)), (StatusCode::BAD_REQUEST, "invalid_input"), "{field}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(said), "{field}: {answer}");
    }
    let (status, answer) = api.call("POST", "/api/v1/tasks", None, Some(json!({"repo": 1}))).await;
    assert_eq!(code(&answer), "invalid_json", "{status} {answer}");
    let (_, page) = api.get("/api/v1/tasks").await;
    assert_eq!(page["tasks"], json!([]), "nothing was stored");
    let (status, task) = api.call("POST", "/api/v1/tasks", None, Some(good)).await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    assert_eq!(api.get("/api/v1/tasks/1").await.1["name"], "app");
    // A queued task is cancelled at once; a second cancel says so; a retry waits for the end.
    let (status, body) = api.call("POST", "/api/v1/tasks/1/cancel", None, None).await;
    assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("cancelled")));
    assert_eq!(api.call("POST", "/api/v1/tasks/1/cancel", None, None).await.0, StatusCode::OK);
    let (status, retried) = api.call("POST", "/api/v1/tasks/1/retry", None, None).await;
    assert_eq!((status, retried["retry_of"].as_i64()), (StatusCode::CREATED, Some(1)));
    let (status, body) = api.call("POST", "/api/v1/tasks/2/retry", None, None).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "not_finished"));
}

#[tokio::test]
async fn callers_and_workers_prove_who_they_are() {
    let api = api(|c| {
        c.auth.allow_anonymous = Some(false);
        c.auth.tokens.push(ApiToken {
            name: "ci".into(),
            token: TOKEN.into(),
            role: cloudbuild_proto::user::GlobalRole::Admin,
        });
    })
    .await;
    let (status, body) = api.get("/api/v1/tasks").await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert!(body["message"].as_str().unwrap().contains("CLOUDBUILD_TOKEN"), "{body}");
    let (status, _) = api.call("GET", "/api/v1/tasks", Some("wrong-token-0123456789"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.call("GET", "/api/v1/tasks", Some(TOKEN), None).await.0, StatusCode::OK);
    // Publish calls are the workers': an API token is not a worker token; a worker token for an
    // attempt that does not run is refused after authentication.
    let plan = "/api/v1/tasks/1/attempts/1/publish/plan";
    let (status, body) = api.call("POST", plan, Some(TOKEN), Some(json!({}))).await;
    assert_eq!((status, body["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("unknown or revoked worker token")));
    let (status, body) = api.call("POST", plan, Some(WORKER_TOKEN), Some(json!({}))).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{body}");
    let (status, body) = api.call("POST", "/api/v1/tasks/x/attempts/1/publish/plan", Some(WORKER_TOKEN), None).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_input"), "{body}");
}

#[tokio::test]
async fn worker_tokens_and_releases_answer_with_their_own_codes() {
    let api = api(|_| {}).await;
    let (status, made) = api.call("POST", "/api/v1/worker-tokens", None, Some(json!({"name": "pool-a"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(made["token"].as_str().unwrap().starts_with("cbw_"), "{made}");
    let (status, body) = api.call("POST", "/api/v1/worker-tokens", None, Some(json!({"name": "pool-a"}))).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"), "{body}");
    let (status, body) = api.call("DELETE", "/api/v1/worker-tokens/nope", None, None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(api.call("DELETE", "/api/v1/worker-tokens/pool-a", None, None).await.0, StatusCode::NO_CONTENT);

    let (status, body) = api.get("/api/v1/releases?name=../x").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_input"));
    let rollback = json!({"name": "app", "env": "prod"});
    let (status, body) = api.call("POST", "/api/v1/releases/rollback", None, Some(rollback)).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "nothing_to_roll_back_to"), "{body}");
    let to = json!({"name": "app", "env": "prod", "to": "2.0.0"});
    let (status, body) = api.call("POST", "/api/v1/releases/rollback", None, Some(to)).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{body}");
    assert!(body["message"].as_str().unwrap().ends_with("(available: none)"), "{body}");
}

#[tokio::test]
async fn secrets_are_checked_listed_without_values_and_deleted() {
    let api = api(|_| {}).await;
    let put = |name: &str, value: &str| {
        let body = json!({ "value": value });
        let uri = format!("/api/v1/projects/site/secrets/test/{name}");
        (uri, body)
    };
    let (uri, body) = put("npm_token", "abcdefgh");
    let (status, v) = api.call("PUT", &uri, None, Some(body)).await;
    assert_eq!((status, code(&v)), (StatusCode::BAD_REQUEST, "invalid_input"), "{v}");
    let (uri, body) = put("NPM_TOKEN", "abc");
    let (status, v) = api.call("PUT", &uri, None, Some(body)).await;
    assert!(status == StatusCode::BAD_REQUEST && v["message"].as_str().unwrap().contains("shorter than 6"), "{v}");
    let (uri, body) = put("NPM_TOKEN", "npm_0123456789abcdef");
    let (status, v) = api.call("PUT", &uri, None, Some(body.clone())).await;
    assert_eq!((status, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "a project's secrets need the project: {v}");
    let project = json!({"name": "site", "repo": "https://github.com/org/site.git"});
    let (status, v) = api.call("POST", "/api/v1/projects", None, Some(project)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = api.call("PUT", &uri, None, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["stages"], json!(["install", "check", "build"]));
    let (status, v) = api.get("/api/v1/projects/site/secrets").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["secrets"][0]["name"], "NPM_TOKEN");
    assert!(!v.to_string().contains("0123456789abcdef"), "never a value: {v}");
    let (status, v) =
        api.call("PUT", "/api/v1/projects/site/secrets/staging/X_KEY", None, Some(json!({"value": "abcdefgh"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let preview = "/api/v1/projects/site/secrets/preview%2Fpr-3/X_KEY";
    let (status, v) = api.call("PUT", preview, None, Some(json!({"value": "abcdefgh"}))).await;
    assert!(
        status == StatusCode::BAD_REQUEST && v["message"].as_str().unwrap().contains("previews get no secrets"),
        "{v}"
    );
    let (status, _) = api.call("DELETE", "/api/v1/projects/site/secrets/test/NPM_TOKEN", None, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v) = api.call("DELETE", "/api/v1/projects/site/secrets/test/NPM_TOKEN", None, None).await;
    assert_eq!((status, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
}

#[tokio::test]
async fn blob_uploads_past_the_cap_wait_for_a_free_slot() {
    use cloudbuild_store::Store;
    let api = api(|c| c.limits.max_concurrent_uploads = 1).await;
    let body = json!({"repo": "https://example.com/site.git", "branch": "main", "name": "site", "version": "1.0.0"});
    let (status, task) = api.call("POST", "/api/v1/tasks", None, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let task_id = task["id"].as_i64().unwrap();
    let lease = "lease-secret-0123456789";
    let until = cloudbuild_proto::time::Timestamp(cloudbuild_proto::time::Timestamp::now().0 + 600_000_000);
    let hash = cloudbuild_server::secrets::lease_key_hash(lease);
    api.store.claim_next("w1", &[], until, &hash).await.unwrap().unwrap();
    let upload = |content: Body, of: &[u8]| {
        let uri = format!("/api/v1/tasks/{task_id}/attempts/1/publish/blobs/{}", blake3::hash(of).to_hex());
        let req = Request::builder()
            .method("PUT")
            .uri(uri)
            .header(header::HOST, "127.0.0.1:7001")
            .header(header::AUTHORIZATION, format!("Bearer {WORKER_TOKEN}"))
            .header("x-cloudbuild-lease", lease)
            .body(content)
            .unwrap();
        tokio::spawn(api.app.clone().oneshot(req))
    };
    // A slow upload holds the only slot while its body trickles in.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let slow_body = futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|chunk| (chunk, rx)) });
    let slow = upload(Body::from_stream(slow_body), b"slow content");
    tx.send(Ok(bytes::Bytes::from_static(b"slow "))).await.unwrap();
    let mut quick = upload(Body::from("quick content"), b"quick content");
    // While it does, the next upload is not served, however long it waits.
    let waited = tokio::time::timeout(std::time::Duration::from_millis(1500), &mut quick).await;
    assert!(waited.is_err(), "a second upload was served while the only slot was taken");
    tx.send(Ok(bytes::Bytes::from_static(b"content"))).await.unwrap();
    drop(tx);
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(quick.await.unwrap().unwrap().status(), StatusCode::NO_CONTENT, "served once the slot was free");
}

#[tokio::test]
async fn a_name_with_secrets_or_releases_is_not_claimed_by_the_next_publish_after_its_registration_goes() {
    let api = api(|_| {}).await;
    let project = json!({"name": "site", "repo": "https://github.com/org/site.git"});
    assert_eq!(api.call("POST", "/api/v1/projects", None, Some(project)).await.0, StatusCode::CREATED);
    let secret = json!({"value": "npm_0123456789abcdef"});
    let (status, v) = api.call("PUT", "/api/v1/projects/site/secrets/prod/NPM_TOKEN", None, Some(secret)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(api.call("DELETE", "/api/v1/projects/site", None, None).await.0, StatusCode::NO_CONTENT);
    let task =
        json!({"repo": "https://github.com/mallory/site.git", "branch": "main", "name": "site", "version": "1.0.0"});
    let (status, v) = api.call("POST", "/api/v1/tasks", None, Some(task)).await;
    assert_eq!((status, code(&v)), (StatusCode::FORBIDDEN, "project_not_registered"), "{v}");
    assert!(v["message"].as_str().unwrap().contains("has releases or secrets"), "{v}");
}

#[tokio::test]
async fn the_projects_of_earlier_tasks_are_registered_with_their_newest_repository() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() };
    config.git.allow_local_hosts = true;
    let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap());
    // Tasks stored by a version without projects.
    for repo in ["https://github.com/org/old.git", "https://github.com/org/site.git"] {
        let new = cloudbuild_store::NewTask {
            name: "site".into(),
            version: "1.0.0".into(),
            repo: repo.into(),
            branch: "main".into(),
            commit: None,
            build_cmd: None,
            env: cloudbuild_proto::task::Environment::Test,
            trigger: cloudbuild_proto::task::Trigger::Api,
            cause: None,
            force: false,
            requested_by: "ci".into(),
            retry_of: None,
            output_limit: 1 << 20,
            labels: Vec::new(),
            no_cache: false,
            changed: None,
            held: None,
        };
        cloudbuild_store::Store::create_task(&*store, new).await.unwrap();
    }
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let (state, _outbox) =
        app_state(config.validate().unwrap(), store.clone(), "http://127.0.0.1:7001".into(), stopped).unwrap();
    assert_eq!(cloudbuild_server::domain::projects::adopt_existing(&state).await.unwrap(), 1);
    let project = cloudbuild_store::Store::get_project(&*store, "site").await.unwrap().unwrap();
    assert_eq!(project.repo, "https://github.com/org/site.git", "the newest task's repository");
    assert_eq!(cloudbuild_server::domain::projects::adopt_existing(&state).await.unwrap(), 0, "once");
}
