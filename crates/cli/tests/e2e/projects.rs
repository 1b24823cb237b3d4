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

/// Forges serve a pull request's commits from the parent repository's URL (`refs/pull/7/head`),
/// so the repository's URL alone does not make code the project's: a task builds a branch or a
/// tag, and a pinned commit must be on its branch.
#[test]
fn a_pull_requests_code_is_not_built_under_the_projects_name() {
    let srv = server("");
    let repo = Repo::site("pr-site", "<h1>ours</h1>");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).current_dir(&repo.work).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["checkout", "-q", "-b", "contribution"]);
    std::fs::write(repo.work.join("build.js"), cloudbuild_testkit::build_script("<h1>theirs</h1>")).unwrap();
    git(&["-c", "user.email=x@x", "-c", "user.name=x", "commit", "-qam", "a pull request"]);
    git(&["push", "-q", "origin", "HEAD:refs/pull/7/head"]);
    let theirs = repo.head();
    git(&["checkout", "-q", "main"]);
    let (status, t) = srv.create(&repo.task_body("pr-site"));
    assert_eq!(status, 201, "{t}");
    assert_eq!(srv.wait_done(t["id"].as_i64().unwrap()).state, TaskState::Succeeded);

    let mut by_ref = repo.task_body("pr-site");
    by_ref["branch"] = "pull/7/head".into();
    let (_, t) = srv.create(&by_ref);
    let t = srv.wait_done(t["id"].as_i64().unwrap());
    assert_eq!((t.state, t.stage), (TaskState::Failed, Some(cloudbuild_proto::task::Stage::DownloadRepo)), "{t:?}");
    let mut by_commit = repo.task_body("pr-site");
    by_commit["commit"] = theirs.clone().into();
    let (_, t) = srv.create(&by_commit);
    let t = srv.wait_done(t["id"].as_i64().unwrap());
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    assert!(t.reason.as_deref().unwrap_or_default().contains(&format!("commit {theirs} is not in")), "{t:?}");
    assert_eq!(cloudbuild_testkit::get_text(&srv.site_url("test", "pr-site")).1, "<h1>ours</h1>");
}

/// A task created before its project moved to another repository does not publish the old
/// repository's build under the project's name.
#[test]
fn a_build_does_not_publish_once_its_project_moved_to_another_repository() {
    let srv = server("");
    let gate = srv.probe.path().join("go");
    let wait = format!(
        "const fs=require('fs');const t=()=>fs.existsSync({:?})?(fs.mkdirSync('dist'),fs.writeFileSync('dist/index.html','old')):setTimeout(t,20);t();",
        gate.to_str().unwrap()
    );
    let old = Repo::new(&[
        ("package.json", &cloudbuild_testkit::package_json("moving-site", &[("build", "node build.js")])),
        ("build.js", &wait),
    ]);
    let (_, t) = srv.create(&old.task_body("moving-site"));
    let id = t["id"].as_i64().unwrap();
    srv.wait_until(id, |t| t.stage == Some(cloudbuild_proto::task::Stage::Build), "the build waits at its gate");
    let new = Repo::site("moving-site", "<h1>new home</h1>");
    let edit = srv.cli(Path::new("."), &["projects", "edit", "moving-site", "--repo", &new.url]);
    assert!(edit.status.success(), "{}", text(&edit));
    std::fs::write(&gate, "").unwrap();
    let t = srv.wait_done(id);
    assert_eq!((t.state, t.stage), (TaskState::Failed, Some(cloudbuild_proto::task::Stage::Publish)), "{t:?}");
    assert!(t.reason.as_deref().unwrap_or_default().contains(&format!("now builds from {}", new.url)), "{t:?}");
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
