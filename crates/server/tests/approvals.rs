//! Approvals driven in-process (no worker: tasks stay queued): a project's rule makes its
//! `prod` publishes wait `awaiting_approval`; the requester may not approve their own (an
//! admin may, said in the log), a developer may not approve at all, another maintainer may;
//! a rejection needs a reason and ends the task; an approval not given in time expires; an
//! approved task a freeze window holds waits gated. Every decision is in the task's log and
//! the audit log.

mod common;

use axum::http::StatusCode;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{GlobalRole, ProjectRole};
use cloudbuild_server::domain::{approvals, freeze};
use cloudbuild_store::Store;
use common::{add_user, api, code, site, Api};
use serde_json::{json, Value};

async fn world() -> Api {
    let api = api(|c| c.auth.allow_anonymous = Some(false)).await;
    let store: &dyn Store = api.store.as_ref();
    for name in ["max", "mia", "dev"] {
        add_user(store, name, GlobalRole::User, false).await;
    }
    add_user(store, "root", GlobalRole::Admin, false).await;
    let members = [("max", ProjectRole::Maintainer), ("mia", ProjectRole::Maintainer), ("dev", ProjectRole::Developer)];
    assert!(store.create_project(&site(&members)).await.unwrap());
    let rule = json!({"approvals": {"prod": true, "expire_hours": 2}});
    let (status, body) = api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(rule)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api
}

fn publish(env: &str) -> Value {
    json!({"repo": "https://example.com/site.git", "branch": "main", "name": "site", "version": "1.0.0", "env": env, "force": true})
}

async fn submit(api: &Api, who: &str, body: Value) -> Value {
    let (status, task) = api.call("POST", "/api/v1/tasks", Some(who), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    task
}

async fn decide(api: &Api, who: &str, id: i64, verb: &str, reason: Option<&str>) -> (StatusCode, Value) {
    api.call("POST", &format!("/api/v1/tasks/{id}/{verb}"), Some(who), Some(json!({"reason": reason}))).await
}

async fn logged(api: &Api, id: i64) -> Vec<String> {
    let events = api.store.events_after(id, 0, 100).await.unwrap();
    events
        .iter()
        .filter_map(|e| {
            let v: Value = serde_json::from_str(&e.data).ok()?;
            Some(format!(
                "{}: {}",
                v["data"]["action"].as_str()?,
                v["data"]["payload"]["message"].as_str().unwrap_or("")
            ))
        })
        .collect()
}

async fn audit(api: &Api, action: &str) -> Vec<Value> {
    let (_, page) = api.call("GET", &format!("/api/v1/audit?action={action}"), Some("cbp_root"), None).await;
    page["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_prod_publish_waits_for_another_maintainers_approval() {
    let api = world().await;
    let bad = json!({"approvals": {"prod": true, "expire_hours": 0}});
    let (status, body) = api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) =
        api.call("PATCH", "/api/v1/projects/site", Some("cbp_dev"), Some(json!({"approvals": {"prod": false}}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "developers do not set the rule");
    // One maintainer alone may not turn the rule off (and publish unapproved); an admin may.
    let off = json!({"approvals": {"prod": false}});
    let (status, body) = api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(off.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(api.call("PATCH", "/api/v1/projects/site", Some("cbp_root"), Some(off)).await.0, StatusCode::OK);
    let on = json!({"approvals": {"prod": true, "expire_hours": 2}});
    assert_eq!(api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(on)).await.0, StatusCode::OK);

    let test = submit(&api, "cbp_max", publish("test")).await;
    assert_eq!(test["state"], "queued", "test needs no approval");
    let task = submit(&api, "cbp_max", publish("prod")).await;
    assert_eq!(task["state"], "awaiting_approval", "{task}");
    let id = task["id"].as_i64().unwrap();
    assert!(logged(&api, id)
        .await
        .iter()
        .any(|l| l.starts_with("awaiting approval: ") && l.contains("cloudbuild approve")));

    let (status, body) = decide(&api, "cbp_max", id, "approve", Some("lgtm")).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "own_task"), "{body}");
    let (status, body) = decide(&api, "cbp_dev", id, "approve", None).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"), "{body}");
    let (status, approved) = decide(&api, "cbp_mia", id, "approve", Some("release notes checked")).await;
    assert_eq!((status, approved["state"].as_str()), (StatusCode::OK, Some("queued")), "{approved}");
    assert!(logged(&api, id).await.iter().any(|l| l == "approved: approved by mia: release notes checked"));
    let (status, body) = decide(&api, "cbp_mia", id, "approve", None).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "not_awaiting_approval"), "{body}");
    let approvals = audit(&api, "approval.approve").await;
    assert_eq!(approvals.iter().filter(|e| e["outcome"] == "ok").count(), 1, "{approvals:?}");
    assert_eq!(approvals.iter().filter(|e| e["outcome"] != "ok").count(), 3, "refusals are audited too");

    // An admin may approve their own publish; the log says so.
    let own = submit(&api, "cbp_root", publish("prod")).await;
    let (status, body) = decide(&api, "cbp_root", own["id"].as_i64().unwrap(), "approve", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(logged(&api, own["id"].as_i64().unwrap()).await.iter().any(|l| l.contains("an admin approving their own")));
}

#[tokio::test]
async fn a_rejection_needs_a_reason_and_an_approval_expires() {
    let api = world().await;
    let id = submit(&api, "cbp_max", publish("prod")).await["id"].as_i64().unwrap();
    let (status, body) = decide(&api, "cbp_mia", id, "reject", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("a rejection needs a reason"), "{body}");
    let (status, rejected) = decide(&api, "cbp_max", id, "reject", Some("wrong branch")).await;
    assert_eq!((status, rejected["state"].as_str()), (StatusCode::OK, Some("cancelled")), "the requester may withdraw");
    assert_eq!(rejected["reason"], "rejected by max: wrong branch");
    assert_eq!(audit(&api, "approval.reject").await.iter().filter(|e| e["outcome"] == "ok").count(), 1);

    let late = submit(&api, "cbp_max", publish("prod")).await["id"].as_i64().unwrap();
    assert_eq!(approvals::expire_due(&api.state, Timestamp::now()).await.unwrap(), 0);
    let after = Timestamp(Timestamp::now().0 + 2 * 3_600_000_000 + 1_000_000);
    assert_eq!(approvals::expire_due(&api.state, after).await.unwrap(), 1);
    assert_eq!(approvals::expire_due(&api.state, after).await.unwrap(), 0, "once");
    let t = api.store.get_task(late).await.unwrap();
    assert_eq!(t.state.as_str(), "cancelled");
    assert_eq!(t.reason.as_deref(), Some("nobody approved it within 2 h: the approval expired"));
    let (status, body) = decide(&api, "cbp_mia", late, "approve", None).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "not_awaiting_approval"), "{body}");
    assert_eq!(audit(&api, "approval.expire").await[0]["actor"], "cloudbuild");
}

#[tokio::test]
async fn an_approved_publish_a_freeze_window_holds_waits_gated() {
    let api = world().await;
    let now = Timestamp::now().0;
    let window = json!({"reason": "launch", "from": Timestamp(now - 60_000_000).to_string(), "to": Timestamp(now + 600_000_000).to_string()});
    let (_, win) = api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(window)).await;
    // Refused outright: no point waiting for an approval it could not use.
    let (status, body) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(publish("prod"))).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "frozen"), "{body}");
    let mut queued = publish("prod");
    queued["gate"] = json!("queue");
    let id = submit(&api, "cbp_max", queued).await["id"].as_i64().unwrap();
    assert_eq!(api.store.get_task(id).await.unwrap().state.as_str(), "awaiting_approval", "approval first");
    let (status, approved) = decide(&api, "cbp_mia", id, "approve", None).await;
    assert_eq!((status, approved["state"].as_str()), (StatusCode::OK, Some("gated")), "{approved}");
    assert!(logged(&api, id)
        .await
        .iter()
        .any(|l| l.contains(win["id"].as_str().unwrap()) && l.starts_with("approved:")));
    let opens = Timestamp::parse(win["active_until"].as_str().unwrap()).unwrap();
    assert_eq!(freeze::release_open(&api.state, Timestamp(opens.0 + 1)).await.unwrap(), 1);
    assert_eq!(api.store.get_task(id).await.unwrap().state.as_str(), "queued");
}
