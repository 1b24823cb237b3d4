//! Release queries of the SQLite backend.

use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::release::Release;
use cloudbuild_proto::task::Environment;
use cloudbuild_proto::time::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection, Row, SqliteConnection};

use crate::{NewRelease, Result, StoreError};

const RELEASE_COLUMNS: &str = "r.id, r.env, r.name, r.version, r.task_id, r.commit_sha, r.requested_by, r.created_us, \
     r.files, r.bytes, r.pruned, (c.release_id IS NOT NULL) AS current";
/// Joined to `releases r`, tells whether each release is its environment's current one.
const CURRENT_JOIN: &str = "LEFT JOIN current_releases c ON c.env = r.env AND c.name = r.name AND c.release_id = r.id";

fn from_row(row: &SqliteRow) -> Result<Release> {
    let env: String = row.try_get("env")?;
    Ok(Release {
        id: row.try_get("id")?,
        env: Environment::parse(&env)
            .ok_or_else(|| StoreError::Corrupt(format!("env `{env}` in the releases table")))?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        task_id: row.try_get("task_id")?,
        commit: row.try_get("commit_sha")?,
        requested_by: row.try_get("requested_by")?,
        created_at: Timestamp(row.try_get("created_us")?),
        files: row.try_get::<i64, _>("files")? as u64,
        bytes: row.try_get::<i64, _>("bytes")? as u64,
        current: row.try_get::<i64, _>("current")? != 0,
        pruned: row.try_get::<i64, _>("pruned")? != 0,
    })
}

pub(super) async fn load(conn: &mut SqliteConnection, id: i64) -> Result<Option<Release>> {
    let row = sqlx::query(&format!("SELECT {RELEASE_COLUMNS} FROM releases r {CURRENT_JOIN} WHERE r.id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub(super) async fn list(conn: &mut SqliteConnection, env: Option<Environment>, name: &str) -> Result<Vec<Release>> {
    let rows = sqlx::query(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases r {CURRENT_JOIN} WHERE r.name = ?1 AND (?2 IS NULL OR r.env = ?2) ORDER BY r.id DESC"
    ))
    .bind(name)
    .bind(env.map(Environment::as_str))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(from_row).collect()
}

pub(super) async fn find_contents(
    conn: &mut SqliteConnection,
    env: Environment,
    hashes: &[String],
) -> Result<Vec<crate::ContentHolder>> {
    let mut out = Vec::new();
    for chunk in hashes.chunks(400) {
        let placeholders = vec!["?"; chunk.len()].join(", ");
        // One holder per hash: the newest live release that has it.
        let sql = format!(
            "SELECT f.hash, f.path, {RELEASE_COLUMNS} FROM release_files f JOIN releases r ON r.id = f.release_id {CURRENT_JOIN} \
             WHERE r.env = ? AND r.pruned = 0 AND f.hash IN ({placeholders}) ORDER BY r.id DESC"
        );
        let mut q = sqlx::query(&sql).bind(env.as_str());
        for h in chunk {
            q = q.bind(h);
        }
        let mut seen = std::collections::HashSet::new();
        for row in q.fetch_all(&mut *conn).await? {
            let hash: String = row.try_get("hash")?;
            if seen.insert(hash.clone()) {
                out.push(crate::ContentHolder { hash, release: from_row(&row)?, path: row.try_get("path")? });
            }
        }
    }
    Ok(out)
}

/// Records a release and its files in one transaction.
pub(super) async fn record(conn: &mut SqliteConnection, new: NewRelease, files: &[ManifestFile]) -> Result<Release> {
    let mut tx = conn.begin().await?;
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO releases (env, name, version, task_id, commit_sha, requested_by, created_us, files, bytes) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(new.env.as_str())
    .bind(&new.name)
    .bind(&new.version)
    .bind(new.task_id)
    .bind(&new.commit)
    .bind(&new.requested_by)
    .bind(Timestamp::now().0)
    .bind(files.len() as i64)
    .bind(bytes as i64)
    .fetch_one(&mut *tx)
    .await?;
    for chunk in files.chunks(200) {
        let values = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO release_files (release_id, path, hash, size) VALUES {values}");
        let mut insert = sqlx::query(&sql);
        for f in chunk {
            insert = insert.bind(id).bind(&f.path).bind(&f.hash).bind(f.size as i64);
        }
        insert.execute(&mut *tx).await?;
    }
    let release = load(&mut tx, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("release {id} vanished while it was recorded")))?;
    tx.commit().await?;
    Ok(release)
}

/// Makes a release current; the one it replaced.
pub(super) async fn set_current(conn: &mut SqliteConnection, release_id: i64) -> Result<Option<Release>> {
    let mut tx = conn.begin().await?;
    let release = load(&mut tx, release_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("release {release_id} is not in the store")))?;
    let previous: Option<i64> =
        sqlx::query_scalar("SELECT release_id FROM current_releases WHERE env = ? AND name = ?")
            .bind(release.env.as_str())
            .bind(&release.name)
            .fetch_optional(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO current_releases (env, name, release_id, switched_us) VALUES (?, ?, ?, ?) \
         ON CONFLICT (env, name) DO UPDATE SET release_id = excluded.release_id, switched_us = excluded.switched_us",
    )
    .bind(release.env.as_str())
    .bind(&release.name)
    .bind(release_id)
    .bind(Timestamp::now().0)
    .execute(&mut *tx)
    .await?;
    let previous = match previous.filter(|p| *p != release_id) {
        Some(p) => load(&mut tx, p).await?,
        None => None,
    };
    tx.commit().await?;
    Ok(previous)
}
