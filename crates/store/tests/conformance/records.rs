//! Conformance stories of stored records over time, run on both backends: a project's name is
//! registered once and its record replaced only by compare-and-set; a project record
//! written by an earlier version is still changed by compare-and-set; a push's changed files
//! are kept with its task; each pull request's preview is an environment of its own.

use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::task::Environment;
use cloudbuild_store::{NewRelease, NewTask, RedisOptions, RedisStore, SqliteStore, Store};

use super::new_task;

/// A project record as a version before triggers, members and schedules wrote it.
const LEGACY_PROJECT: &str = r#"{"name":"old","repo":"https://example.com/old.git","repo_identity":"example.com/old","default_branch":"main","visibility":"internal","created_by":"max","created_at":"2026-01-01T00:00:00.000000Z","updated_at":"2026-01-01T00:00:00.000000Z"}"#;

/// A record stored before a field was added is still changed by compare-and-set (read with
/// the field's default, compared as this version writes it), and a stale copy still is not.
/// A push's changed files are kept with its task, and a task without them has none.
pub(crate) async fn changed_files_story(store: &dyn Store) {
    let files = vec!["docs/a.md".to_owned(), "src/b.ts".to_owned()];
    let (t, _) = store.create_task(NewTask { changed: Some(files.clone()), ..new_task("pushed", 10) }).await.unwrap();
    assert_eq!(store.get_task(t.id).await.unwrap().changed, Some(files));
    let (u, _) = store.create_task(new_task("published", 10)).await.unwrap();
    assert_eq!(store.get_task(u.id).await.unwrap().changed, None);
}

/// Tasks and releases of `preview/pr-<N>` round-trip, and each pull request's releases,
/// current release and contents are apart from every other's and from `test`.
pub(crate) async fn preview_story(store: &dyn Store) {
    let (p3, p4) = (Environment::Preview(3), Environment::Preview(4));
    let (t, _) = store.create_task(NewTask { env: p3, ..new_task("previewed", 10) }).await.unwrap();
    assert_eq!(store.get_task(t.id).await.unwrap().env, p3);
    let file = |hash: char| ManifestFile {
        path: "index.html".into(),
        size: 3,
        hash: hash.to_string().repeat(64),
        fingerprinted: false,
    };
    let release = |env: Environment, hash: char| {
        let new = NewRelease {
            env,
            name: "previewed".into(),
            version: "1.0.0".into(),
            task_id: t.id,
            commit: None,
            requested_by: "webhook:github".into(),
        };
        async move { store.record_release(new, &[file(hash)]).await.unwrap() }
    };
    let (a, b, c) = (release(p3, 'a').await, release(p4, 'b').await, release(Environment::Test, 'c').await);
    for r in [&a, &b, &c] {
        store.set_current(r.id).await.unwrap();
    }
    let listed = store.list_releases(Some(p3), "previewed").await.unwrap();
    assert_eq!(listed.iter().map(|r| (r.id, r.env, r.current)).collect::<Vec<_>>(), vec![(a.id, p3, true)]);
    assert!(store.get_release(b.id).await.unwrap().unwrap().current, "each preview has its own current");
    assert_eq!(store.list_releases(None, "previewed").await.unwrap().len(), 3);
    let held = store.find_contents(p3, &["b".repeat(64), "a".repeat(64)]).await.unwrap();
    assert_eq!(held.iter().map(|h| h.release.id).collect::<Vec<_>>(), vec![a.id], "another preview's contents are not");
    // A preview removed whole: its last release is nobody's current one any more.
    store.mark_pruned(&[a.id]).await.unwrap();
    let gone = store.list_releases(Some(p3), "previewed").await.unwrap();
    assert_eq!(gone.iter().map(|r| (r.pruned, r.current)).collect::<Vec<_>>(), vec![(true, false)]);
    assert!(!store.get_release(a.id).await.unwrap().unwrap().current);
    assert!(store.get_release(b.id).await.unwrap().unwrap().current, "the other preview keeps its own");
}

async fn legacy_record_story(store: &dyn Store) {
    let old = store.get_project("old").await.unwrap().expect("the legacy record reads");
    assert!(old.schedules.is_empty() && old.members.is_empty());
    let mut new = old.clone();
    new.default_branch = "trunk".into();
    assert!(store.update_project(&old, &new).await.unwrap(), "the first edit of an old record lands");
    assert_eq!(store.get_project("old").await.unwrap().unwrap().default_branch, "trunk");
    let mut stale = old.clone();
    stale.default_branch = "dev".into();
    assert!(!store.update_project(&old, &stale).await.unwrap(), "a stale copy does not");
}

#[tokio::test]
async fn sqlite_changes_records_stored_by_earlier_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    let url = format!("sqlite://{}", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO projects (name, data) VALUES ('old', ?)")
        .bind(LEGACY_PROJECT)
        .execute(&pool)
        .await
        .unwrap();
    legacy_record_story(&store).await;
}

#[tokio::test]
async fn redis_changes_records_stored_by_earlier_versions() {
    let redis = cloudbuild_testkit::RedisServer::start().unwrap();
    let store = RedisStore::open(&RedisOptions::new(&redis.url())).await.unwrap();
    let mut con = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::AsyncCommands::hset(&mut con, "cb:projects", "old", LEGACY_PROJECT).await.unwrap();
    legacy_record_story(&store).await;
}

/// A project's name is registered once; its record is replaced only while it exists.
pub(crate) async fn project_story(store: &dyn Store) {
    use cloudbuild_proto::project::{Project, Visibility};
    let project = |name: &str, repo: &str| Project {
        name: name.into(),
        repo: format!("https://{repo}.git"),
        repo_identity: repo.into(),
        default_branch: "main".into(),
        visibility: Visibility::Private,
        members: vec![cloudbuild_proto::user::Member {
            user: "alice".into(),
            role: cloudbuild_proto::user::ProjectRole::Maintainer,
        }],
        triggers: Default::default(),
        webhook_secret: None,
        forge: None,
        schedules: Vec::new(),
        previews: Vec::new(),
        closed_pull_requests: Vec::new(),
        freeze: Vec::new(),
        approvals: Default::default(),
        created_by: "alice".into(),
        created_at: cloudbuild_proto::time::Timestamp(1),
        updated_at: cloudbuild_proto::time::Timestamp(1),
    };
    let site = project("@team/site", "github.com/team/site");
    assert!(store.create_project(&site).await.unwrap());
    assert!(!store.create_project(&project("@team/site", "github.com/other/site")).await.unwrap(), "once");
    assert_eq!(store.get_project("@team/site").await.unwrap(), Some(site.clone()), "the first one stays");
    assert!(store.create_project(&project("blog", "gitlab.com/a/blog")).await.unwrap());
    let names: Vec<String> = store.list_projects().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["@team/site", "blog"]);
    let mut edited = site.clone();
    edited.default_branch = "release".into();
    edited.visibility = Visibility::Internal;
    assert!(store.update_project(&site, &edited).await.unwrap());
    assert_eq!(store.get_project("@team/site").await.unwrap(), Some(edited.clone()));
    // Compare-and-set: an update from a stale copy changes nothing.
    let mut stale = site.clone();
    stale.default_branch = "stale".into();
    assert!(!store.update_project(&site, &stale).await.unwrap(), "the stored record is no longer `site`");
    assert_eq!(store.get_project("@team/site").await.unwrap(), Some(edited));
    let ghost = project("ghost", "x.org/y");
    assert!(!store.update_project(&ghost, &ghost).await.unwrap(), "no record appears by an update");
    assert_eq!(store.get_project("ghost").await.unwrap(), None);
    assert!(store.delete_project("blog").await.unwrap());
    assert!(!store.delete_project("blog").await.unwrap());
    assert_eq!(store.list_projects().await.unwrap().len(), 1);
}
