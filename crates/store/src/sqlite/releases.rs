//! Release queries of the SQLite backend.

use cloudbuild_proto::release::Release;
use cloudbuild_proto::task::Environment;
use cloudbuild_proto::time::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::{Result, StoreError};

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
