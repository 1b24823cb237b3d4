//! Registered projects: the first publish registers a name with its repository, a publish of
//! that name from another repository is refused, `[projects] auto_create = false` leaves
//! registration to `cloudbuild projects create`; the CLI and the REST API.

use std::path::Path;

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{get_json, request, Repo};

use crate::server;

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_project_is_bound_to_the_repository_of_its_first_publish() {
    let srv = server("");
    let ours = Repo::site("bound-site", "<h1>ours</h1>");
    let (status, t) = srv.create(&ours.task_body("bound-site"));
    assert_eq!(status, 201, "{t}");
    assert_eq!(srv.wait_done(t["id"].as_i64().unwrap()).state, TaskState::Succeeded);
    let project = get_json(&format!("{}/api/v1/projects/bound-site", srv.url)).unwrap();
    assert_eq!(
        (project["repo"].as_str(), project["created_by"].as_str()),
        (Some(ours.url.as_str()), Some("anonymous"))
    );

    // Someone else's repository, the same name: refused before anything is created.
    let theirs = Repo::site("bound-site", "<h1>theirs</h1>");
    let before = get_json(&format!("{}/api/v1/tasks", srv.url)).unwrap()["tasks"].as_array().unwrap().len();
    let (status, e) = srv.create(&theirs.task_body("bound-site"));
    assert_eq!((status, e["code"].as_str()), (409, Some("project_repository_mismatch")), "{e}");
    assert!(e["message"].as_str().unwrap().contains(&format!("builds from {}", ours.url)), "{e}");
    let after = get_json(&format!("{}/api/v1/tasks", srv.url)).unwrap()["tasks"].as_array().unwrap().len();
    assert_eq!(before, after, "no task was created");
    // The same repository by another spelling of its URL is the same repository.
    let mut body = ours.task_body("bound-site");
    body["repo"] = format!("{}/", ours.url).into();
    assert_eq!(srv.create(&body).0, 201);

    // The CLI: list, show, edit (moving the project to the other repository), delete.
    let cli = |args: &[&str]| srv.cli(Path::new("."), args);
    let list = cli(&["projects", "list"]);
    assert!(list.status.success() && text(&list).contains("bound-site"), "{}", text(&list));
    let edit = cli(&["projects", "edit", "bound-site", "--repo", &theirs.url]);
    assert!(edit.status.success(), "{}", text(&edit));
    assert_eq!(srv.create(&theirs.task_body("bound-site")).0, 201);
    assert_eq!(srv.create(&ours.task_body("bound-site")).0, 409);
    // Only the fields an edit may change: anything else is refused, not ignored.
    let (status, e) = request(
        "PATCH",
        &format!("{}/api/v1/projects/bound-site", srv.url),
        Some(&serde_json::json!({"created_by": "mallory"})),
    );
    assert_eq!((status, e["code"].as_str()), (422, Some("invalid_json")), "{e}");
    let show = cli(&["projects", "show", "bound-site", "--json"]);
    assert!(text(&show).contains("\"created_by\": \"anonymous\""), "{}", text(&show));
    let delete = cli(&["projects", "delete", "bound-site"]);
    assert!(delete.status.success(), "{}", text(&delete));
    let gone = cli(&["projects", "show", "bound-site"]);
    assert!(!gone.status.success() && text(&gone).contains("no project named bound-site"), "{}", text(&gone));
}

#[test]
fn without_auto_create_only_a_registered_project_publishes() {
    let srv = server("[projects]\nauto_create = false\n");
    let repo = Repo::site("listed-site", "<h1>hi</h1>");
    let (status, e) = srv.create(&repo.task_body("listed-site"));
    assert_eq!((status, e["code"].as_str()), (403, Some("project_not_registered")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("cloudbuild projects create listed-site"), "{e}");
    let create = srv.cli(Path::new("."), &["projects", "create", "listed-site", "--repo", &repo.url]);
    assert!(create.status.success(), "{}", text(&create));
    let again = srv.cli(Path::new("."), &["projects", "create", "listed-site", "--repo", &repo.url]);
    assert!(!again.status.success() && text(&again).contains("exists already"), "{}", text(&again));
    let (status, t) = srv.create(&repo.task_body("listed-site"));
    assert_eq!(status, 201, "{t}");
    assert_eq!(srv.wait_done(t["id"].as_i64().unwrap()).state, TaskState::Succeeded);
}
