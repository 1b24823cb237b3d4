//! The dashboard's release gates driven in-process: the freeze page lists the windows that
//! apply with their state and next times, escaped, in zh-CN and en-US; a build awaiting
//! approval shows approve and reject buttons to another maintainer only, and the forms (with
//! their CSRF token) decide it.

mod common;

use axum::http::StatusCode;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{GlobalRole, ProjectRole};
use cloudbuild_store::Store;
use common::{add_user, api, send, session, site, Api};
use serde_json::json;

async fn world() -> Api {
    let api = api(|c| c.auth.allow_anonymous = Some(false)).await;
    let store: &dyn Store = api.store.as_ref();
    for name in ["max", "mia", "dev"] {
        add_user(store, name, GlobalRole::User, false).await;
    }
    add_user(store, "root", GlobalRole::Admin, false).await;
    let members = [("max", ProjectRole::Maintainer), ("mia", ProjectRole::Maintainer), ("dev", ProjectRole::Developer)];
    assert!(store.create_project(&site(&members)).await.unwrap());
    api
}

#[tokio::test]
async fn the_freeze_page_shows_each_window_and_whether_prod_is_frozen_in_both_languages() {
    let api = world().await;
    let now = Timestamp::now().0;
    let active = json!({"reason": "<b>launch</b> week", "from": Timestamp(now - 60_000_000).to_string(), "to": Timestamp(now + 3_600_000_000).to_string()});
    let (status, _) = api.call("POST", "/api/v1/freeze", Some("cbp_root"), Some(active)).await;
    assert_eq!(status, StatusCode::CREATED);
    let weekly = json!({"reason": "weekend", "start_cron": "0 18 * * 5", "end_cron": "0 8 * * 1", "timezone": "Europe/Berlin", "environments": ["test"]});
    let (status, _) = api.call("POST", "/api/v1/projects/site/freeze", Some("cbp_max"), Some(weekly)).await;
    assert_eq!(status, StatusCode::CREATED);

    let en = send(&api, "GET", "/freeze?project=site&locale=en-US", Some(&session("dev")), None, &[]).await;
    assert_eq!(en.status, StatusCode::OK, "{}", en.body);
    assert!(!en.body.contains("<b>launch"), "escaped: {}", en.body);
    assert!(en.body.contains("b&#62;launch") || en.body.contains("b&gt;launch"), "shown: {}", en.body);
    assert!(en.body.contains("0 18 * * 5 → 0 8 * * 1 (Europe/Berlin)"), "{}", en.body);
    assert!(en.body.contains("Freeze windows") && en.body.contains(">frozen<") && en.body.contains("holds until"));
    let zh = send(&api, "GET", "/freeze?project=site&locale=zh-CN", Some(&session("dev")), None, &[]).await;
    assert!(zh.body.contains("封网窗口") && zh.body.contains("封网中") && zh.body.contains("下次封网"), "{}", zh.body);
    // The global page, without the project's window; a project its viewer may not read is hidden.
    let global = send(&api, "GET", "/freeze", Some(&session("dev")), None, &[]).await;
    assert!(!global.body.contains("weekend"));
    add_user(api.store.as_ref(), "stranger", GlobalRole::User, false).await;
    let hidden = send(&api, "GET", "/freeze?project=site", Some(&session("stranger")), None, &[]).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn another_maintainer_approves_or_rejects_from_the_build_page() {
    let api = world().await;
    let rule = json!({"approvals": {"prod": true}});
    assert_eq!(api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(rule)).await.0, StatusCode::OK);
    let body = json!({"repo": "https://example.com/site.git", "branch": "main", "name": "site", "version": "1.0.0", "env": "prod"});
    for _ in 0..2 {
        let (status, _) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(body.clone())).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let own = send(&api, "GET", "/tasks/1", Some(&session("max")), None, &[]).await;
    assert!(!own.body.contains("/tasks/1/approve"), "the requester has no approve button");
    let dev = send(&api, "GET", "/tasks/1", Some(&session("dev")), None, &[]).await;
    assert!(!dev.body.contains("/tasks/1/approve"), "a developer has none");
    let posted =
        send(&api, "POST", "/tasks/1/approve", Some(&session("max")), Some(&format!("csrf={}", own.csrf())), &[]).await;
    assert_eq!(posted.status, StatusCode::FORBIDDEN, "and the post is refused");

    let mia = send(&api, "GET", "/tasks/1?locale=zh-CN", Some(&session("mia")), None, &[]).await;
    assert!(
        mia.body.contains("action=\"/tasks/1/approve\"") && mia.body.contains("批准") && mia.body.contains("待审批")
    );
    let forged = send(&api, "POST", "/tasks/1/approve", Some(&session("mia")), Some("csrf=0000"), &[]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let form = format!("csrf={}&reason=looks+good", mia.csrf());
    let approved = send(&api, "POST", "/tasks/1/approve", Some(&session("mia")), Some(&form), &[]).await;
    assert_eq!((approved.status, approved.header("location")), (StatusCode::SEE_OTHER, "/tasks/1".to_owned()));
    assert_eq!(api.store.get_task(1).await.unwrap().state.as_str(), "queued");

    let page = send(&api, "GET", "/tasks/2", Some(&session("mia")), None, &[]).await;
    let empty = send(
        &api,
        "POST",
        "/tasks/2/reject",
        Some(&session("mia")),
        Some(&format!("csrf={}&reason=", page.csrf())),
        &[],
    )
    .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST, "a rejection needs a reason");
    let form = format!("csrf={}&reason=not+today", page.csrf());
    let rejected = send(&api, "POST", "/tasks/2/reject", Some(&session("mia")), Some(&form), &[]).await;
    assert_eq!(rejected.status, StatusCode::SEE_OTHER);
    let t = api.store.get_task(2).await.unwrap();
    assert_eq!((t.state.as_str(), t.reason.as_deref()), ("cancelled", Some("rejected by mia: not today")));
}
