//! Conformance stories of stored records over time, run on both backends: a project record
//! written by an earlier version is still changed by compare-and-set; a push's changed files
//! are kept with its task.

use cloudbuild_store::{NewTask, RedisOptions, RedisStore, SqliteStore, Store};

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
