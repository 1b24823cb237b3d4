//! The role × endpoint matrix: every route of the router (read from `api/mod.rs`, so that a
//! new route without a rule here fails the test), called by a guest, a revoked token, a
//! disabled user, a worker, a stranger, a reporter, a developer, a maintainer and an admin, each
//! answered as docs/permissions.md says: 401 without valid credentials, 404 for what the caller
//! may not read (no probing of names and ids), 403 for what its role does not allow.

mod common;

use axum::http::StatusCode;
use cloudbuild_proto::user::{GlobalRole, ProjectRole};
use cloudbuild_store::Store;
use common::{add_user, api, code, site, Api, WORKER_TOKEN};
use serde_json::{json, Value};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Anyone, without credentials.
    Guest,
    /// Workers only (worker tokens).
    Worker,
    /// Any valid API credentials.
    SignedIn,
    /// A role in the project `site` at least.
    Project(ProjectRole),
    /// Admins only.
    Admin,
    /// Admins only, about the project `site`: hidden from those who may not read it.
    ProjectAdmin,
    /// Admins and the maintainers of some project (the audit log).
    SomeMaintainer,
}

/// The rule of each route, by method and path as written in the router.
fn rule(method: &str, path: &str) -> Option<Rule> {
    use ProjectRole::*;
    use Rule::*;
    Some(match (method, path) {
        (_, "/healthz" | "/project/oss" | "/oss/get" | "/sites/{env}/{*path}" | "/releases/{env}/{*path}") => Guest,
        // Webhooks: the delivery's signature is the credential (tests/hooks.rs).
        ("POST", "/api/v1/login" | "/api/v1/setup" | "/api/v1/hooks/{forge}") => Guest,
        (_, p) if p.contains("/publish/") || p == "/api/v1/workers/connect" => Worker,
        ("GET", "/api/v1/tasks" | "/api/v1/projects" | "/api/v1/user" | "/api/v1/user/tokens") => SignedIn,
        ("POST", "/api/v1/logout" | "/api/v1/user/tokens" | "/api/v1/projects") => SignedIn,
        ("DELETE", "/api/v1/user/tokens/{name}") => SignedIn,
        ("GET", "/api/v1/tasks/{id}" | "/api/v1/tasks/{id}/events" | "/api/v1/releases") => Project(Reporter),
        ("GET", "/api/v1/projects/{name}" | "/api/v1/projects/{name}/members") => Project(Reporter),
        ("GET", "/api/v1/projects/{name}/deliveries") => Project(Reporter),
        ("POST", "/api/v1/projects/{name}/webhook-secret") => Project(Maintainer),
        ("PUT" | "DELETE", "/api/v1/projects/{name}/forge") => Project(Maintainer),
        ("GET", "/api/v1/projects/{name}/schedules" | "/api/v1/projects/{name}/previews") => Project(Reporter),
        ("DELETE", "/api/v1/projects/{name}/previews/{number}") => Project(Developer),
        ("POST", "/api/v1/projects/{name}/schedules") => Project(Maintainer),
        ("DELETE", "/api/v1/projects/{name}/schedules/{schedule}") => Project(Maintainer),
        // The schedule `nightly` builds for test.
        ("POST", "/api/v1/projects/{name}/schedules/{schedule}/run") => Project(Developer),
        ("POST", "/api/v1/tasks" | "/api/v1/tasks/{id}/cancel" | "/api/v1/tasks/{id}/retry") => Project(Developer),
        ("POST", "/api/v1/releases/rollback") => Project(Maintainer),
        ("PATCH", "/api/v1/projects/{name}") => Project(Maintainer),
        ("PUT" | "DELETE", "/api/v1/projects/{name}/members/{user}") => Project(Maintainer),
        ("GET", "/api/v1/projects/{name}/secrets") => Project(Maintainer),
        ("PUT" | "DELETE", "/api/v1/projects/{name}/secrets/{env}/{secret}") => Project(Maintainer),
        ("GET", "/api/v1/audit") => SomeMaintainer,
        ("GET", "/api/v1/freeze" | "/api/v1/freeze/status") => SignedIn,
        ("POST", "/api/v1/freeze") | ("DELETE", "/api/v1/freeze/{id}") => Admin,
        ("GET", "/api/v1/projects/{name}/freeze") => Project(Reporter),
        ("POST", "/api/v1/projects/{name}/freeze") => Project(Maintainer),
        ("DELETE", "/api/v1/projects/{name}/freeze/{id}") => Project(Maintainer),
        // Task 1 publishes to test: those who may publish there may override its gate.
        ("POST", "/api/v1/tasks/{id}/override" | "/api/v1/tasks/{id}/approve" | "/api/v1/tasks/{id}/reject") => {
            Project(Developer)
        }
        ("DELETE", "/api/v1/projects/{name}") => ProjectAdmin,
        (_, "/api/v1/workers" | "/api/v1/worker-tokens" | "/api/v1/worker-tokens/{name}") => Admin,
        (_, "/api/v1/users" | "/api/v1/users/{name}") => Admin,
        _ => return None,
    })
}

/// Every `(method, path)` the router defines, read from its source (`api` routes are nested
/// under `/api/v1`).
fn routes() -> Vec<(String, String)> {
    let src = include_str!("../src/api/mod.rs");
    let (api_part, root_part) = src.split_at(src.find("let socketio").expect("the router's shape"));
    let mut out = Vec::new();
    for (part, prefix) in [(api_part, "/api/v1"), (root_part, "")] {
        for chunk in part.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("a quoted path");
            let body = chunk.split(".route(").next().unwrap_or_default();
            for (method, call) in [
                ("GET", "get("),
                ("POST", "post("),
                ("PUT", "put("),
                ("PATCH", "patch("),
                ("DELETE", "delete("),
                ("GET", "any("),
            ] {
                if body.contains(call) {
                    out.push((method.to_owned(), format!("{prefix}{path}")));
                }
            }
        }
    }
    out
}

/// The callers of the matrix: name, bearer token, and what the test expects of them.
#[derive(Debug, Clone, Copy)]
struct Who {
    name: &'static str,
    token: Option<&'static str>,
    /// `None`: no valid API credentials. Else the role in `site` (or none) and whether admin.
    role: Option<(Option<ProjectRole>, bool)>,
    worker: bool,
}

const CALLERS: [Who; 9] = [
    Who { name: "guest", token: None, role: None, worker: false },
    Who { name: "revoked", token: Some("cbp_revoked"), role: None, worker: false },
    Who { name: "disabled", token: Some("cbp_disabled"), role: None, worker: false },
    Who { name: "worker", token: Some(WORKER_TOKEN), role: None, worker: true },
    Who { name: "stranger", token: Some("cbp_stranger"), role: Some((None, false)), worker: false },
    Who { name: "rep", token: Some("cbp_rep"), role: Some((Some(ProjectRole::Reporter), false)), worker: false },
    Who { name: "dev", token: Some("cbp_dev"), role: Some((Some(ProjectRole::Developer), false)), worker: false },
    Who { name: "max", token: Some("cbp_max"), role: Some((Some(ProjectRole::Maintainer), false)), worker: false },
    Who { name: "root", token: Some("cbp_root"), role: Some((Some(ProjectRole::Maintainer), true)), worker: false },
];

/// What the matrix expects a caller to get from a route.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Allowed,
    Unauthorized,
    Hidden,
    Forbidden,
}

fn expect(who: &Who, rule: Rule) -> Expect {
    use Expect::*;
    match (rule, who.role) {
        (Rule::Guest, _) => Allowed,
        (Rule::Worker, _) => {
            if who.worker {
                Allowed
            } else {
                Unauthorized
            }
        }
        (_, None) => Unauthorized,
        (Rule::SignedIn, Some(_)) => Allowed,
        (Rule::Project(need), Some((role, _))) => match role {
            None => Hidden,
            Some(r) if r >= need => Allowed,
            Some(_) => Forbidden,
        },
        (Rule::Admin, Some((_, admin))) => {
            if admin {
                Allowed
            } else {
                Forbidden
            }
        }
        (Rule::ProjectAdmin, Some((None, false))) => Hidden,
        (Rule::ProjectAdmin, Some((_, admin))) => {
            if admin {
                Allowed
            } else {
                Forbidden
            }
        }
        (Rule::SomeMaintainer, Some((role, _))) => {
            if role == Some(ProjectRole::Maintainer) {
                Allowed
            } else {
                Forbidden
            }
        }
    }
}

/// What a caller got: a refusal is told by its status and code (a domain answer such as
/// "nothing to roll back to" or "no such secret" means the caller was let through).
fn got(status: StatusCode, body: &Value) -> Expect {
    let hidden = body["message"].as_str().is_some_and(|m| m.ends_with("does not exist"));
    match (status, code(body)) {
        (StatusCode::UNAUTHORIZED, "unauthorized") => Expect::Unauthorized,
        (StatusCode::FORBIDDEN, "forbidden") => Expect::Forbidden,
        (StatusCode::NOT_FOUND, "not_found") if hidden => Expect::Hidden,
        _ => Expect::Allowed,
    }
}

/// A server that requires sign-in, its users, the project `site` with its members, and one
/// queued task of `site`.
async fn world() -> Api {
    world_with(|_| {}).await
}

async fn world_with(configure: impl FnOnce(&mut cloudbuild_server::config::ServerConfig)) -> Api {
    let api = api(|c| {
        c.auth.allow_anonymous = Some(false);
        configure(c);
    })
    .await;
    let store: &dyn Store = api.store.as_ref();
    for (name, role, disabled) in [
        ("stranger", GlobalRole::User, false),
        ("rep", GlobalRole::User, false),
        ("dev", GlobalRole::User, false),
        ("max", GlobalRole::User, false),
        ("root", GlobalRole::Admin, false),
        ("disabled", GlobalRole::User, true),
        ("revoked", GlobalRole::User, false),
        ("newbie", GlobalRole::User, false),
    ] {
        add_user(store, name, role, disabled).await;
    }
    assert!(store.delete_api_token("revoked", "t").await.unwrap());
    let members = [
        ("dev", ProjectRole::Developer),
        ("disabled", ProjectRole::Developer),
        ("max", ProjectRole::Maintainer),
        ("rep", ProjectRole::Reporter),
    ];
    assert!(store.create_project(&site(&members)).await.unwrap());
    let body = task_body();
    let (status, task) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(body)).await;
    assert_eq!((status, task["id"].as_i64()), (StatusCode::CREATED, Some(1)), "{task}");
    let nightly = json!({"name": "nightly", "cron": "0 3 * * *"});
    let (status, made) = api.call("POST", "/api/v1/projects/site/schedules", Some("cbp_max"), Some(nightly)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    api
}

fn task_body() -> Value {
    json!({"repo": "https://example.com/site.git", "branch": "main", "name": "site", "version": "1.0.0"})
}

/// The concrete request for a route: its path with the world's names, and a body.
fn request_for(method: &str, path: &str, who: &Who) -> (String, Option<Value>) {
    let uri = path
        .replace("{id}", "1")
        .replace("{attempt}", "1")
        .replace("{hash}", &"a".repeat(64))
        .replace("/members/{user}", "/members/newbie")
        .replace("/users/{name}", "/users/newbie")
        .replace("/worker-tokens/{name}", "/worker-tokens/nope")
        .replace("/user/tokens/{name}", "/user/tokens/nope")
        .replace("{name}", "site")
        .replace("{schedule}", "nightly")
        .replace("{number}", "12")
        .replace("{env}", "test")
        .replace("{secret}", "API_KEY")
        .replace("{*path}", "site/index.html");
    let uri = match uri.as_str() {
        "/api/v1/releases" => "/api/v1/releases?name=site".to_owned(),
        "/api/v1/tasks/1/events" => "/api/v1/tasks/1/events?follow=false".to_owned(),
        "/oss/get" => "/oss/get?name=site&file=index.html".to_owned(),
        "/project/oss" => "/project/oss?name=site".to_owned(),
        _ => uri,
    };
    let body = match (method, path) {
        ("POST", "/api/v1/tasks") => Some(task_body()),
        ("POST", "/api/v1/login") => Some(json!({"user": "newbie", "password": "correct horse battery"})),
        ("POST", "/api/v1/setup") => {
            Some(json!({"setup_token": "x", "user": "x", "password": "correct horse battery"}))
        }
        ("POST", "/api/v1/user/tokens") => Some(json!({"name": format!("made-by-{}", who.name)})),
        ("POST", "/api/v1/projects") => {
            Some(json!({"name": format!("p-{}", who.name), "repo": format!("https://example.com/{}.git", who.name)}))
        }
        ("PATCH", "/api/v1/projects/{name}") => Some(json!({"default_branch": "main"})),
        ("POST", "/api/v1/projects/{name}/schedules") => {
            Some(json!({"name": format!("s-{}", who.name), "cron": "@daily"}))
        }
        ("PUT", "/api/v1/projects/{name}/members/{user}") => Some(json!({"role": "reporter"})),
        ("PUT", "/api/v1/projects/{name}/forge") => {
            Some(json!({"forge": "github", "path": "octo/site", "token": "ghp_example"}))
        }
        ("PUT", _) if path.contains("/secrets/") => Some(json!({"value": "s3cr3t-value"})),
        ("POST", "/api/v1/releases/rollback") => Some(json!({"name": "site", "env": "test"})),
        ("POST", "/api/v1/freeze" | "/api/v1/projects/{name}/freeze") => {
            Some(json!({"reason": "launch", "from": "2030-01-01T00:00:00Z", "to": "2030-01-02T00:00:00Z"}))
        }
        ("POST", "/api/v1/tasks/{id}/override" | "/api/v1/tasks/{id}/approve" | "/api/v1/tasks/{id}/reject") => {
            Some(json!({"reason": "incident"}))
        }
        ("POST", "/api/v1/worker-tokens") => Some(json!({"name": format!("w-{}", who.name)})),
        ("POST", "/api/v1/users") => {
            Some(json!({"name": format!("u-{}", who.name), "password": "correct horse battery"}))
        }
        ("PATCH", "/api/v1/users/{name}") => Some(json!({"disabled": false})),
        _ if path.contains("/publish/") => Some(json!({})),
        _ => None,
    };
    (uri, body)
}

#[tokio::test]
async fn every_route_answers_each_caller_as_the_table_says() {
    let api = world().await;
    let mut routes = routes();
    assert!(routes.len() >= 35, "the router's routes were read: {routes:?}");
    let unruled: Vec<_> = routes.iter().filter(|(m, p)| rule(m, p).is_none()).collect();
    assert!(unruled.is_empty(), "routes without a rule in this test and docs/permissions.md: {unruled:?}");
    // Destructive calls last: the admin's DELETE of the project ends the walk, and a logout
    // (which revokes the caller's token) comes after the caller's other calls.
    routes.sort_by_key(|(m, p)| (p == "/api/v1/logout", m == "DELETE" && p == "/api/v1/projects/{name}"));
    let mut wrong = Vec::new();
    for who in &CALLERS {
        for (method, path) in &routes {
            let (uri, body) = request_for(method, path, who);
            let (status, answer) = api.call(method, &uri, who.token, body).await;
            let want = expect(who, rule(method, path).unwrap());
            let have = got(status, &answer);
            if want != have {
                wrong.push(format!("{} {method} {uri}: want {want:?}, got {status} {answer}", who.name));
            }
        }
    }
    assert!(wrong.is_empty(), "{} answers differ from the table:\n{}", wrong.len(), wrong.join("\n"));
}

#[tokio::test]
async fn publishing_to_prod_and_rolling_back_need_a_maintainer() {
    let api = world().await;
    let mut prod = task_body();
    prod["env"] = "prod".into();
    let (status, e) = api.call("POST", "/api/v1/tasks", Some("cbp_dev"), Some(prod.clone())).await;
    assert_eq!((status, code(&e)), (StatusCode::FORBIDDEN, "forbidden"), "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("publishing to prod in project site needs the maintainer role"),
        "{e}"
    );
    assert_eq!(api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(prod)).await.0, StatusCode::CREATED);
    // A developer may retry a test task but not a prod one.
    assert_eq!(api.call("POST", "/api/v1/tasks/2/cancel", Some("cbp_dev"), None).await.0, StatusCode::OK);
    let (status, e) = api.call("POST", "/api/v1/tasks/2/retry", Some("cbp_dev"), None).await;
    assert_eq!((status, code(&e)), (StatusCode::FORBIDDEN, "forbidden"), "{e}");
    // A stranger learns nothing: every task id answers as missing, existing or not.
    let (_, seen) = api.call("GET", "/api/v1/tasks/1", Some("cbp_stranger"), None).await;
    let (_, missing) = api.call("GET", "/api/v1/tasks/999", Some("cbp_stranger"), None).await;
    assert_eq!(seen["message"], "task 1 does not exist");
    assert_eq!(missing["message"], "task 999 does not exist");
    let (_, list) = api.call("GET", "/api/v1/tasks", Some("cbp_stranger"), None).await;
    assert_eq!(list["tasks"], json!([]), "the list shows only readable projects' tasks");
    let (_, list) = api.call("GET", "/api/v1/tasks", Some("cbp_rep"), None).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 2);
    // An internal project is read by every signed-in user, changed by its members only.
    let edit = json!({"visibility": "internal"});
    assert_eq!(api.call("PATCH", "/api/v1/projects/site", Some("cbp_max"), Some(edit)).await.0, StatusCode::OK);
    assert_eq!(api.call("GET", "/api/v1/tasks/1", Some("cbp_stranger"), None).await.0, StatusCode::OK);
    let (status, _) = api.call("POST", "/api/v1/tasks/1/retry", Some("cbp_stranger"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn members_and_users_refuse_what_would_lock_everyone_out_and_fields_they_do_not_have() {
    let api = world().await;
    let (status, e) = api.call("DELETE", "/api/v1/projects/site/members/max", Some("cbp_max"), None).await;
    assert_eq!((status, code(&e)), (StatusCode::CONFLICT, "last_maintainer"), "{e}");
    let (status, e) =
        api.call("PUT", "/api/v1/projects/site/members/max", Some("cbp_max"), Some(json!({"role": "developer"}))).await;
    assert_eq!((status, code(&e)), (StatusCode::CONFLICT, "last_maintainer"), "{e}");
    let (status, _) = api
        .call("PUT", "/api/v1/projects/site/members/ghost", Some("cbp_max"), Some(json!({"role": "developer"})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "members are existing users");
    // Mass assignment: a field that is not the request's is refused, not ignored.
    let sneaky = json!({"role": "reporter", "user": "root", "admin": true});
    let (status, e) = api.call("PUT", "/api/v1/projects/site/members/newbie", Some("cbp_max"), Some(sneaky)).await;
    assert_eq!((status, code(&e)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_json"), "{e}");
    let sneaky = json!({"name": "newbie", "role": "admin"});
    let (status, _) = api.call("POST", "/api/v1/user/tokens", Some("cbp_dev"), Some(sneaky)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, e) = api.call("PATCH", "/api/v1/users/root", Some("cbp_root"), Some(json!({"role": "user"}))).await;
    assert_eq!((status, code(&e)), (StatusCode::CONFLICT, "refused"), "the last admin stays: {e}");
    // Disabling a user stops their token at once.
    assert_eq!(api.call("GET", "/api/v1/user", Some("cbp_dev"), None).await.0, StatusCode::OK);
    let (status, _) = api.call("PATCH", "/api/v1/users/dev", Some("cbp_root"), Some(json!({"disabled": true}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.call("GET", "/api/v1/user", Some("cbp_dev"), None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_new_password_revokes_the_users_tokens_and_expiries_are_bounded() {
    let api = world().await;
    assert_eq!(api.call("GET", "/api/v1/user", Some("cbp_dev"), None).await.0, StatusCode::OK);
    let reset = json!({"password": "a brand new password"});
    assert_eq!(api.call("PATCH", "/api/v1/users/dev", Some("cbp_root"), Some(reset)).await.0, StatusCode::OK);
    let (status, _) = api.call("GET", "/api/v1/user", Some("cbp_dev"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a password reset revokes the tokens that may have leaked with it");
    for days in [0, 3651, u32::MAX] {
        let body = json!({"name": format!("t{days}"), "expires_in_days": days});
        let (status, e) = api.call("POST", "/api/v1/user/tokens", Some("cbp_rep"), Some(body)).await;
        assert_eq!((status, code(&e)), (StatusCode::CONFLICT, "refused"), "{days}: {e}");
    }
    let body = json!({"name": "ten-years", "expires_in_days": 3650});
    assert_eq!(api.call("POST", "/api/v1/user/tokens", Some("cbp_rep"), Some(body)).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn without_auto_create_a_stranger_cannot_tell_a_private_project_from_an_unregistered_name() {
    let api = world_with(|c| c.projects.auto_create = false).await;
    let mut other = task_body();
    other["name"] = "unregistered".into();
    other["repo"] = "https://example.com/unregistered.git".into();
    let (s1, taken) = api.call("POST", "/api/v1/tasks", Some("cbp_stranger"), Some(task_body())).await;
    let (s2, free) = api.call("POST", "/api/v1/tasks", Some("cbp_stranger"), Some(other)).await;
    assert_eq!((s1, code(&taken)), (s2, code(&free)), "{taken} / {free}");
    assert_eq!(code(&free), "project_not_registered");
    let (status, _) = api.call("POST", "/api/v1/tasks", Some("cbp_dev"), Some(task_body())).await;
    assert_eq!(status, StatusCode::CREATED, "members publish as before");
}
