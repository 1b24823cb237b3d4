//! Schedules driven in-process (no worker: builds stay queued): added, listed with their next
//! run, refused when malformed or asked by the wrong role; a due time fires one build (trigger
//! `schedule`, its cause named) and is claimed once; after downtime one run, not one per
//! missed time; run-now by a role that may publish; removal.

mod common;

use axum::http::StatusCode;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{GlobalRole, ProjectRole};
use cloudbuild_server::domain::schedules::fire_due;
use cloudbuild_store::Store;
use common::{add_user, api, code, site, Api};
use serde_json::json;

async fn world() -> Api {
    let api = api(|c| c.auth.allow_anonymous = Some(false)).await;
    let store: &dyn Store = api.store.as_ref();
    for name in ["max", "dev", "rep"] {
        add_user(store, name, GlobalRole::User, false).await;
    }
    let members = [("max", ProjectRole::Maintainer), ("dev", ProjectRole::Developer), ("rep", ProjectRole::Reporter)];
    assert!(store.create_project(&site(&members)).await.unwrap());
    api
}

fn at(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

async fn tasks(api: &Api) -> Vec<serde_json::Value> {
    let (_, page) = api.call("GET", "/api/v1/tasks", Some("cbp_max"), None).await;
    page["tasks"].as_array().unwrap().clone()
}

#[tokio::test]
async fn schedules_are_validated_and_kept_for_maintainers() {
    let api = world().await;
    let path = "/api/v1/projects/site/schedules";
    let good = json!({"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin"});
    let (status, body) = api.call("POST", path, Some("cbp_dev"), Some(good.clone())).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"), "a developer may not: {body}");
    for (field, value, said) in [
        ("cron", json!("0 3 * *"), "five fields"),
        ("cron", json!("0 0 3 * * *"), "five fields"),
        ("timezone", json!("Europe/Atlantis"), "IANA time zone"),
        ("name", json!("../x"), "schedule name"),
        ("branch", json!("--upload-pack=x"), "branch"),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        let (status, body) = api.call("POST", path, Some("cbp_max"), Some(bad)).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid_input"), "{field}: {body}");
        assert!(body["message"].as_str().unwrap().contains(said), "{field}: {body}");
    }
    let (status, made) = api.call("POST", path, Some("cbp_max"), Some(good.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!((made["branch"].as_str(), made["env"].as_str()), (Some("main"), Some("test")), "defaults: {made}");
    let local = made["next_run_local"].as_str().unwrap();
    assert!(local.contains("T03:00:00+0"), "03:00 in Berlin: {made}");
    let (status, again) = api.call("POST", path, Some("cbp_max"), Some(good)).await;
    assert_eq!((status, code(&again)), (StatusCode::CONFLICT, "schedule_exists"));
    // Readers see it with its next run; the project's record keeps it.
    let (status, list) = api.call("GET", path, Some("cbp_rep"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["schedules"][0]["name"], "nightly");
    assert!(Timestamp::parse(list["schedules"][0]["next_run"].as_str().unwrap()).unwrap() > Timestamp::now());
    let (status, body) = api.call("DELETE", &format!("{path}/nightly"), Some("cbp_dev"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(api.call("DELETE", &format!("{path}/nightly"), Some("cbp_max"), None).await.0, StatusCode::NO_CONTENT);
    let (status, body) = api.call("DELETE", &format!("{path}/nightly"), Some("cbp_max"), None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (_, audit) = api.call("GET", "/api/v1/audit?project=site", Some("cbp_max"), None).await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"schedule.add") && actions.contains(&"schedule.remove"), "{actions:?}");
}

#[tokio::test]
async fn a_due_time_fires_one_build_and_downtime_fires_one_more() {
    let api = world().await;
    let path = "/api/v1/projects/site/schedules";
    let body = json!({"name": "hourly", "cron": "0 * * * *", "timezone": "Asia/Shanghai", "branch": "release"});
    assert_eq!(api.call("POST", path, Some("cbp_max"), Some(body)).await.0, StatusCode::CREATED);
    // Move the schedule's creation back so that past due times count (the clock is the test's).
    let mut project = api.store.get_project("site").await.unwrap().unwrap();
    let old = project.clone();
    project.schedules[0].created_at = at("2026-01-01T00:00:00Z");
    assert!(api.store.update_project(&old, &project).await.unwrap());
    let edited = project.updated_at;

    assert_eq!(fire_due(&api.state, at("2026-01-01T00:59:00Z")).await.unwrap(), 0, "nothing due yet");
    assert_eq!(fire_due(&api.state, at("2026-01-01T01:00:10Z")).await.unwrap(), 1);
    assert_eq!(fire_due(&api.state, at("2026-01-01T01:00:15Z")).await.unwrap(), 0, "that time is claimed");
    let list = tasks(&api).await;
    assert_eq!(list.len(), 1);
    let task = &list[0];
    assert_eq!(
        (task["trigger"].as_str(), task["branch"].as_str(), task["env"].as_str()),
        (Some("schedule"), Some("release"), Some("test"))
    );
    let cause = task["cause"].as_str().unwrap();
    assert!(cause.contains("schedule hourly") && cause.contains("2026-01-01T09:00:00+08:00"), "{cause}");
    assert_eq!(task["commit"], serde_json::Value::Null, "the branch head is built");
    // Down for two days: one run for the latest time, none for the 47 before it.
    assert_eq!(fire_due(&api.state, at("2026-01-03T01:30:00Z")).await.unwrap(), 1);
    assert_eq!(tasks(&api).await.len(), 2);
    let (_, list) = api.call("GET", path, Some("cbp_rep"), None).await;
    let shown = &list["schedules"][0];
    assert_eq!(shown["last_due"].as_str().map(at), Some(at("2026-01-03T01:00:00Z")));
    assert_eq!(shown["last_task"].as_i64(), tasks(&api).await[0]["id"].as_i64());
    // Firing is the schedule's bookkeeping, not an edit of the project.
    assert_eq!(api.store.get_project("site").await.unwrap().unwrap().updated_at, edited);
}

#[tokio::test]
async fn run_now_needs_the_right_to_publish_to_the_schedules_environment() {
    let api = world().await;
    let path = "/api/v1/projects/site/schedules";
    for (name, env) in [("t", "test"), ("p", "prod")] {
        let body = json!({"name": name, "cron": "@daily", "env": env});
        assert_eq!(api.call("POST", path, Some("cbp_max"), Some(body)).await.0, StatusCode::CREATED);
    }
    let (status, body) = api.call("POST", &format!("{path}/t/run"), Some("cbp_rep"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a reporter: {body}");
    let (status, body) = api.call("POST", &format!("{path}/p/run"), Some("cbp_dev"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a developer, prod: {body}");
    let (status, task) = api.call("POST", &format!("{path}/t/run"), Some("cbp_dev"), None).await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    assert_eq!(task["trigger"], "schedule");
    assert!(task["cause"].as_str().unwrap().contains("run now by dev"), "{task}");
    let (_, list) = api.call("GET", path, Some("cbp_rep"), None).await;
    let t = list["schedules"].as_array().unwrap().iter().find(|s| s["name"] == "t").unwrap().clone();
    assert_eq!((t["last_task"].as_i64(), t.get("last_due")), (task["id"].as_i64(), None), "shown as its last build");
    let (status, body) = api.call("POST", &format!("{path}/nope/run"), Some("cbp_dev"), None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(tasks(&api).await.len(), 1);
}
