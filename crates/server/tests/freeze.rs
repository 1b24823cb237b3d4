//! Freeze windows driven in-process (no worker: tasks stay queued): who may add and remove
//! global and project windows; a window refuses a prod publish with its reason and the time it
//! opens in the caller's zone, lets test through, queues with `gate: queue` (a `gated` task
//! the loop releases once the window has opened, and a cancel ends); overrides need a reason
//! and an allowed role, for one task, audited and written in its log; rollbacks pass unless a
//! window holds them.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{GlobalRole, ProjectRole};
use cloudbuild_server::domain::freeze;
use cloudbuild_store::Store;
use common::{add_user, api, code, site, Api};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn world() -> Api {
    let api = api(|c| c.auth.allow_anonymous = Some(false)).await;
    let store: &dyn Store = api.store.as_ref();
    add_user(store, "max", GlobalRole::User, false).await;
    add_user(store, "mia", GlobalRole::User, false).await;
    add_user(store, "dev", GlobalRole::User, false).await;
    add_user(store, "root", GlobalRole::Admin, false).await;
    let members = [("max", ProjectRole::Maintainer), ("mia", ProjectRole::Maintainer), ("dev", ProjectRole::Developer)];
    assert!(store.create_project(&site(&members)).await.unwrap());
    api
}

fn publish(env: &str) -> Value {
    json!({"repo": "https://example.com/site.git", "branch": "main", "name": "site", "version": "1.0.0", "env": env})
}

/// A one-off window from an hour ago to `minutes` from now.
fn window_until(reason: &str, minutes: i64, extra: Value) -> Value {
    let now = Timestamp::now().0;
    let at = |us: i64| Timestamp(us).to_string();
    let mut w = json!({"reason": reason, "from": at(now - 3_600_000_000), "to": at(now + minutes * 60_000_000)});
    for (k, v) in extra.as_object().unwrap() {
        w[k] = v.clone();
    }
    w
}

/// `call` with a `Time-Zone` header.
async fn call_in_zone(api: &Api, uri: &str, token: &str, body: Value, zone: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::HOST, "127.0.0.1:7001")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("time-zone", zone)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = api.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn actions(api: &Api, id: i64) -> Vec<(String, String)> {
    let events = api.store.events_after(id, 0, 100).await.unwrap();
    events
        .iter()
        .filter_map(|e| {
            let v: Value = serde_json::from_str(&e.data).ok()?;
            let action = v["data"]["action"].as_str()?.to_owned();
            Some((action, v["data"]["payload"]["message"].as_str().unwrap_or_default().to_owned()))
        })
        .collect()
}

async fn audit(api: &Api, action: &str) -> Vec<Value> {
    let (status, page) = api.call("GET", &format!("/api/v1/audit?action={action}"), Some("cbp_root"), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn windows_are_managed_by_admins_globally_and_by_maintainers_in_their_project() {
    let api = world().await;
    let w = window_until("release freeze", 60, json!({}));
    let (status, body) = api.call("POST", "/api/v1/freeze", Some("cbp_max"), Some(w.clone())).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"), "{body}");
    let (status, body) = api.call("POST", "/api/v1/projects/site/freeze", Some("cbp_dev"), Some(w.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, global) = api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(w.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{global}");
    assert_eq!((global["active"].as_bool(), global["environments"].clone()), (Some(true), json!(["prod"])));
    let (status, own) = api.call("POST", "/api/v1/projects/site/freeze", Some("cbp_max"), Some(w.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    assert_eq!(own["project"], "site");

    // Bad windows are refused with the field named, and add nothing.
    for (bad, field) in [
        (json!({"reason": "", "from": "2030-01-01T00:00:00Z", "to": "2030-01-02T00:00:00Z"}), "reason"),
        (json!({"reason": "x", "from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"}), "to"),
        (json!({"reason": "x", "start_cron": "0 18 * * 5", "timezone": "Asia/Shanghai"}), "end"),
        (
            json!({"reason": "x", "start_cron": "0 18 * * 5", "end_cron": "0 8 * * 1", "timezone": "Mars/Base"}),
            "timezone",
        ),
        (
            json!({"reason": "x", "from": "2030-01-01T00:00:00Z", "to": "2030-01-02T00:00:00Z", "environments": ["staging"]}),
            "environments",
        ),
    ] {
        let (status, body) = api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
        assert!(body["message"].as_str().unwrap().contains(field), "{bad} → {body}");
    }

    // The project's list has both; the global list only the global one; readers read them.
    let (_, list) = api.call("GET", "/api/v1/projects/site/freeze", Some("cbp_dev"), None).await;
    assert_eq!(list["windows"].as_array().unwrap().len(), 2, "{list}");
    let (_, list) = api.call("GET", "/api/v1/freeze", Some("cbp_dev"), None).await;
    assert_eq!(list["windows"].as_array().unwrap().len(), 1, "{list}");
    let (_, status) = api.call("GET", "/api/v1/freeze/status?project=site", Some("cbp_dev"), None).await;
    let prod = &status["environments"].as_array().unwrap().iter().find(|e| e["environment"] == "prod").unwrap();
    assert_eq!((prod["frozen"].as_bool(), prod["windows"].as_array().unwrap().len()), (Some(true), 2), "{status}");

    let gid = global["id"].as_str().unwrap();
    let oid = own["id"].as_str().unwrap();
    assert_eq!(
        api.call("DELETE", &format!("/api/v1/freeze/{gid}"), Some("cbp_max"), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.call("DELETE", &format!("/api/v1/projects/site/freeze/{oid}"), Some("cbp_dev"), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.call("DELETE", &format!("/api/v1/freeze/{gid}"), Some("cbp_root"), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call("DELETE", &format!("/api/v1/projects/site/freeze/{oid}"), Some("cbp_max"), None).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, body) = api.call("DELETE", &format!("/api/v1/freeze/{gid}"), Some("cbp_root"), None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let adds = audit(&api, "freeze.add").await;
    assert_eq!(adds.iter().filter(|e| e["outcome"] == "ok").count(), 2, "{adds:?}");
    assert_eq!(audit(&api, "freeze.remove").await.iter().filter(|e| e["outcome"] == "ok").count(), 2);
}

#[tokio::test]
async fn an_active_window_refuses_prod_with_its_reason_and_reopening_time_and_lets_test_through() {
    let api = world().await;
    let w = window_until("双十一封网", 30, json!({}));
    let (status, win) = api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(w)).await;
    assert_eq!(status, StatusCode::CREATED);
    let opens = Timestamp::parse(win["active_until"].as_str().unwrap()).unwrap();

    let (status, body) = call_in_zone(&api, "/api/v1/tasks", "cbp_max", publish("prod"), "Asia/Shanghai").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "frozen"), "{body}");
    let message = body["message"].as_str().unwrap();
    let local = cloudbuild_proto::gate::render_in_zone(opens, Some("Asia/Shanghai"));
    assert!(
        message.contains("双十一封网") && message.contains(&local) && local.ends_with("CST (Asia/Shanghai)"),
        "{message}"
    );
    let (_, page) = api.call("GET", "/api/v1/tasks", Some("cbp_max"), None).await;
    assert!(page["tasks"].as_array().unwrap().is_empty(), "nothing was created: {page}");
    let refusals = audit(&api, "gate.refuse").await;
    assert!(refusals[0]["outcome"].as_str().unwrap().contains("双十一封网"), "{refusals:?}");

    let (status, test) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(publish("test"))).await;
    assert_eq!((status, test["state"].as_str()), (StatusCode::CREATED, Some("queued")), "{test}");
}

#[tokio::test]
async fn a_queued_publish_waits_gated_and_starts_when_the_window_opens_or_is_cancelled() {
    let api = world().await;
    let (_, win) =
        api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(window_until("launch", 10, json!({})))).await;
    let opens = Timestamp::parse(win["active_until"].as_str().unwrap()).unwrap();
    let queue = json!({"gate": "queue"});
    let mut body = publish("prod");
    body["gate"] = queue["gate"].clone();
    let (status, gated) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(body.clone())).await;
    assert_eq!((status, gated["state"].as_str()), (StatusCode::CREATED, Some("gated")), "{gated}");
    let id = gated["id"].as_i64().unwrap();
    assert!(actions(&api, id).await.iter().any(|(a, m)| a == "gated" && m.contains(win["id"].as_str().unwrap())));
    let (_, listed) = api.call("GET", "/api/v1/tasks?state=gated", Some("cbp_max"), None).await;
    assert_eq!(listed["tasks"][0]["id"].as_i64(), Some(id), "listed by its state");
    assert_eq!(audit(&api, "gate.queue").await.len(), 1);

    // Still closed: nothing is released. Past its end: released once, and only once.
    assert_eq!(freeze::release_open(&api.state, Timestamp::now()).await.unwrap(), 0);
    assert_eq!(api.store.get_task(id).await.unwrap().state.as_str(), "gated");
    let later = Timestamp(opens.0 + 1);
    assert_eq!(freeze::release_open(&api.state, later).await.unwrap(), 1);
    assert_eq!(freeze::release_open(&api.state, later).await.unwrap(), 0);
    assert_eq!(api.store.get_task(id).await.unwrap().state.as_str(), "queued");
    assert!(actions(&api, id).await.iter().any(|(a, _)| a == "gate open"), "{:?}", actions(&api, id).await);
    assert_eq!(audit(&api, "gate.release").await[0]["actor"], "cloudbuild");

    // A second gated task is cancelled while it waits: it never runs, and is not released.
    let (_, second) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(body)).await;
    let second = second["id"].as_i64().unwrap();
    let (status, cancelled) = api.call("POST", &format!("/api/v1/tasks/{second}/cancel"), Some("cbp_dev"), None).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let t = api.store.get_task(second).await.unwrap();
    assert_eq!((t.state.as_str(), t.reason.as_deref()), ("cancelled", Some("cancelled while gated; it never ran")));
    assert_eq!(freeze::release_open(&api.state, later).await.unwrap(), 0);
}

#[tokio::test]
async fn an_override_needs_a_reason_and_an_allowed_role_and_is_for_one_task() {
    let api = world().await;
    let (_, win) =
        api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(window_until("audit week", 60, json!({})))).await;
    let mut body = publish("prod");
    body["override"] = json!("hotfix for INC-7");
    // The window names no role: maintainers may not override it; admins may.
    let (status, denied) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(body.clone())).await;
    assert_eq!((status, code(&denied)), (StatusCode::FORBIDDEN, "override_denied"), "{denied}");
    let mut no_reason = body.clone();
    no_reason["override"] = json!("   ");
    let (status, refused) = api.call("POST", "/api/v1/tasks", Some("cbp_root"), Some(no_reason)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("needs a reason"), "{refused}");
    let (status, task) = api.call("POST", "/api/v1/tasks", Some("cbp_root"), Some(body.clone())).await;
    assert_eq!((status, task["state"].as_str()), (StatusCode::CREATED, Some("queued")), "{task}");
    let id = task["id"].as_i64().unwrap();
    let logged = actions(&api, id).await;
    assert!(
        logged.iter().any(|(a, m)| a == "gate override" && m.contains("root") && m.contains("hotfix for INC-7")),
        "{logged:?}"
    );
    let overrides = audit(&api, "gate.override").await;
    assert!(overrides[0]["target"].as_str().unwrap().contains("hotfix for INC-7"), "{overrides:?}");
    // For that task only: the next publish is refused again.
    let (status, body2) = api.call("POST", "/api/v1/tasks", Some("cbp_root"), Some(publish("prod"))).await;
    assert_eq!((status, code(&body2)), (StatusCode::CONFLICT, "frozen"));

    // A project window naming `developer` may be overridden by a developer of that project,
    // but the global window still needs an admin.
    let own = window_until("team freeze", 60, json!({"override_role": "developer"}));
    let (status, _) = api.call("POST", "/api/v1/projects/site/freeze", Some("cbp_max"), Some(own)).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut test_body = publish("prod");
    test_body["override"] = json!("go");
    let (status, _) = api.call("POST", "/api/v1/tasks", Some("cbp_root"), Some(test_body.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    let gid = win["id"].as_str().unwrap();
    assert_eq!(
        api.call("DELETE", &format!("/api/v1/freeze/{gid}"), Some("cbp_root"), None).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, by_dev) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(test_body)).await;
    assert_eq!((status, by_dev["state"].as_str()), (StatusCode::CREATED, Some("queued")), "{by_dev}");

    // A gated task released by an override (`POST /tasks/{id}/override`).
    let mut queue = publish("prod");
    queue["gate"] = json!("queue");
    let (_, gated) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(queue)).await;
    let gid = gated["id"].as_i64().unwrap();
    let uri = format!("/api/v1/tasks/{gid}/override");
    // A developer may not publish to prod at all, so not release a prod task either.
    let (status, body) = api.call("POST", &uri, Some("cbp_dev"), Some(json!({"reason": "go"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = api.call("POST", &uri, Some("cbp_mia"), Some(json!({"reason": ""}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, released) = api.call("POST", &uri, Some("cbp_mia"), Some(json!({"reason": "customer outage"}))).await;
    assert_eq!((status, released["state"].as_str()), (StatusCode::OK, Some("queued")), "{released}");
    assert!(actions(&api, gid).await.iter().any(|(a, m)| a == "gate override" && m.contains("customer outage")));
    let (status, again) = api.call("POST", &uri, Some("cbp_mia"), Some(json!({"reason": "again"}))).await;
    assert_eq!((status, code(&again)), (StatusCode::CONFLICT, "not_gated"), "{again}");
}

#[tokio::test]
async fn rollbacks_pass_a_window_unless_it_holds_them() {
    let api = world().await;
    let rollback = json!({"name": "site", "env": "prod"});
    let (_, win) =
        api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(window_until("freeze", 60, json!({})))).await;
    // Not held: the rollback goes on to find there is nothing to roll back to.
    let (_, body) = api.call("POST", "/api/v1/releases/rollback", Some("cbp_max"), Some(rollback.clone())).await;
    assert_eq!(code(&body), "nothing_to_roll_back_to", "{body}");
    let gid = win["id"].as_str().unwrap();
    api.call("DELETE", &format!("/api/v1/freeze/{gid}"), Some("cbp_root"), None).await;
    let held = window_until("full freeze", 60, json!({"rollbacks": true}));
    api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(held)).await;
    let (status, body) = api.call("POST", "/api/v1/releases/rollback", Some("cbp_max"), Some(rollback.clone())).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "frozen"), "{body}");
    assert!(body["message"].as_str().unwrap().contains("rollbacks are refused"), "{body}");
    let mut overridden = rollback.clone();
    overridden["override"] = json!("bad release in prod");
    let (_, body) = api.call("POST", "/api/v1/releases/rollback", Some("cbp_root"), Some(overridden)).await;
    assert_eq!(code(&body), "nothing_to_roll_back_to", "the override passed the gate: {body}");
    let overrides = audit(&api, "gate.override").await;
    assert!(overrides[0]["target"].as_str().unwrap().contains("bad release in prod"), "{overrides:?}");
    // Test is not held by a prod window.
    let test = json!({"name": "site", "env": "test"});
    let (_, body) = api.call("POST", "/api/v1/releases/rollback", Some("cbp_max"), Some(test)).await;
    assert_eq!(code(&body), "nothing_to_roll_back_to", "{body}");
}

#[tokio::test]
async fn a_window_begun_after_a_task_was_queued_holds_it_unless_overridden_for_that_window() {
    let api = world().await;
    let (_, queued) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(publish("prod"))).await;
    let queued = queued["id"].as_i64().unwrap();
    let (_, a) =
        api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(window_until("window a", 60, json!({})))).await;
    let mut overridden = publish("prod");
    overridden["override"] = json!("ship the fix");
    let (_, through) = api.call("POST", "/api/v1/tasks", Some("cbp_root"), Some(overridden)).await;
    let through = through["id"].as_i64().unwrap();
    assert_eq!(freeze::release_open(&api.state, Timestamp::now()).await.unwrap(), 0);
    let t = api.store.get_task(queued).await.unwrap();
    assert_eq!(t.state.as_str(), "gated", "held again before a worker took it");
    assert!(actions(&api, queued).await.iter().any(|(a, m)| a == "gated" && m.contains("began before it started")));
    assert_eq!(api.store.get_task(through).await.unwrap().state.as_str(), "queued", "overridden for window a");
    // A stricter window added afterwards is not covered by that override.
    let (_, b) =
        api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(window_until("window b", 90, json!({})))).await;
    freeze::release_open(&api.state, Timestamp::now()).await.unwrap();
    assert_eq!(api.store.get_task(through).await.unwrap().state.as_str(), "gated");
    let later = Timestamp::parse(b["active_until"].as_str().unwrap()).unwrap();
    assert!(later > Timestamp::parse(a["active_until"].as_str().unwrap()).unwrap());
    assert_eq!(freeze::release_open(&api.state, Timestamp(later.0 + 1)).await.unwrap(), 2);
}

#[tokio::test]
async fn a_schedules_newer_run_supersedes_its_run_still_waiting_for_a_window() {
    let api = world().await;
    let nightly = json!({"name": "nightly", "cron": "0 3 * * *", "env": "prod"});
    let (status, body) = api.call("POST", "/api/v1/projects/site/schedules", Some("cbp_max"), Some(nightly)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(window_until("freeze", 60, json!({})))).await;
    let run = || api.call("POST", "/api/v1/projects/site/schedules/nightly/run", Some("cbp_max"), None);
    let (status, first) = run().await;
    assert_eq!((status, first["state"].as_str()), (StatusCode::CREATED, Some("gated")), "{first}");
    let (_, second) = run().await;
    assert_eq!(second["state"], "gated");
    let first = api.store.get_task(first["id"].as_i64().unwrap()).await.unwrap();
    assert_eq!(first.state.as_str(), "cancelled", "one run waits for the window, not one per due time");
}
