//! The audit log: each change of state (and each refusal) is recorded with who, from where,
//! what and how it ended; filtered by project, action and paged, over REST and the CLI.

use std::path::Path;

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{get_json, request, Repo};

use crate::server;

#[test]
fn changes_and_refusals_are_recorded_with_who_from_where_and_the_outcome() {
    let srv = server("[releases]\nkeep = 1\n");
    let ours = Repo::site("audit-site", "<h1>ours</h1>");
    let (_, t) = srv.create(&ours.task_body("audit-site"));
    let first = t["id"].as_i64().unwrap();
    assert_eq!(srv.wait_done(first).state, TaskState::Succeeded);
    // A second release switches the site and, keeping one, prunes the first.
    ours.commit(&[("build.js", &cloudbuild_testkit::build_script("<h1>ours, again</h1>"))], "again");
    let (_, t) = srv.create(&ours.task_body("audit-site"));
    let id = t["id"].as_i64().unwrap();
    assert_eq!(srv.wait_done(id).state, TaskState::Succeeded);
    let theirs = Repo::site("audit-site", "<h1>theirs</h1>");
    assert_eq!(srv.create(&theirs.task_body("audit-site")).0, 409);
    assert_eq!(request("POST", &format!("{}/api/v1/tasks/{id}/cancel", srv.url), None).0, 409);
    let edit = srv.cli(Path::new("."), &["projects", "edit", "audit-site", "--default-branch", "release"]);
    assert!(edit.status.success(), "{}", String::from_utf8_lossy(&edit.stderr));
    assert_eq!(
        request("POST", &format!("{}/api/v1/worker-tokens", srv.url), Some(&serde_json::json!({"name": "pool"}))).0,
        201
    );

    let page = get_json(&format!("{}/api/v1/audit", srv.url)).unwrap();
    let entries = page["entries"].as_array().unwrap();
    let seen: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["outcome"].as_str().unwrap().to_owned()))
        .collect();
    let outcome = |action: &str, nth: usize| seen.iter().filter(|(a, _)| a == action).map(|(_, o)| o.as_str()).nth(nth);
    assert_eq!(seen[0].0, "worker_token.create", "newest first: {seen:?}");
    assert_eq!(outcome("project.edit", 0), Some("ok"));
    assert!(
        outcome("task.cancel", 0).is_some_and(|o| o.starts_with("refused: task") && o.contains("already ended")),
        "{seen:?}"
    );
    assert!(
        outcome("task.create", 0).is_some_and(|o| o.starts_with("refused: project audit-site builds from")),
        "{seen:?}"
    );
    assert_eq!(outcome("task.create", 1), Some("ok"));
    assert!(outcome("project.create", 0).is_some(), "the first publish registered it: {seen:?}");
    assert_eq!((outcome("release.switch", 0), outcome("release.switch", 1)), (Some("ok"), Some("ok")), "{seen:?}");
    assert_eq!(outcome("release.prune", 0), Some("ok"), "{seen:?}");
    assert!(entries.iter().all(|e| e["actor"] == "anonymous"), "{page}");
    // What callers asked for has their address; what the server did on a task's behalf (the
    // switch and the pruning at its publish) has none.
    for e in entries {
        let by_server = e["action"].as_str().unwrap().starts_with("release.");
        assert_eq!(e["address"].is_null(), by_server, "{e}");
        assert!(by_server || e["address"] == "127.0.0.1", "{e}");
    }
    assert!(!page.to_string().contains("cbw_"), "no token secret in the log");

    // Filters and pages.
    let creates = get_json(&format!("{}/api/v1/audit?action=task.create&limit=1", srv.url)).unwrap();
    assert_eq!(creates["entries"].as_array().unwrap().len(), 1);
    let before = creates["next_before"].as_i64().expect("a next page");
    let rest = get_json(&format!("{}/api/v1/audit?action=task.create&before={before}", srv.url)).unwrap();
    assert_eq!(rest["entries"][0]["outcome"], "ok");
    let cli = srv.cli(Path::new("."), &["audit", "--project", "audit-site"]);
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success() && text.contains("project.edit") && !text.contains("worker_token"), "{text}");
}
