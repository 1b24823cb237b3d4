//! Tokens in the SQLite backend. Personal API tokens: one row per token, keyed by its hash,
//! unique by (user, name); the last use in a column of its own so that a use rewrites no
//! record. Worker tokens: created, revoked, listed, looked up by hash.

use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::ApiTokenRecord;
use cloudbuild_proto::worker::WorkerToken;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

use super::SqliteStore;
use crate::{Result, StoreError};

fn from_row(row: &SqliteRow) -> Result<ApiTokenRecord> {
    let mut rec: ApiTokenRecord = serde_json::from_str(&row.try_get::<String, _>("data")?)
        .map_err(|e| StoreError::Corrupt(format!("an API token record: {e}")))?;
    rec.token.last_used_at = row.try_get::<Option<i64>, _>("last_used_us")?.map(Timestamp);
    Ok(rec)
}

pub(super) async fn create(s: &SqliteStore, t: &ApiTokenRecord) -> Result<bool> {
    let data = serde_json::to_string(t).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let res = sqlx::query(
        "INSERT INTO api_tokens (hash, user, name, data, last_used_us) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(&t.hash)
    .bind(&t.token.user)
    .bind(&t.token.name)
    .bind(data)
    .bind(t.token.last_used_at.map(|t| t.0))
    .execute(&mut *s.writer.lock().await)
    .await?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn by_hash(reader: &SqlitePool, hash: &str) -> Result<Option<ApiTokenRecord>> {
    let row = sqlx::query("SELECT data, last_used_us FROM api_tokens WHERE hash = ?")
        .bind(hash)
        .fetch_optional(reader)
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub(super) async fn list(reader: &SqlitePool, user: &str) -> Result<Vec<ApiTokenRecord>> {
    let rows = sqlx::query("SELECT data, last_used_us FROM api_tokens WHERE user = ? ORDER BY name")
        .bind(user)
        .fetch_all(reader)
        .await?;
    rows.iter().map(from_row).collect()
}

pub(super) async fn delete(s: &SqliteStore, user: &str, name: &str) -> Result<bool> {
    let res = sqlx::query("DELETE FROM api_tokens WHERE user = ? AND name = ?")
        .bind(user)
        .bind(name)
        .execute(&mut *s.writer.lock().await)
        .await?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn touch(s: &SqliteStore, hash: &str, at: Timestamp) -> Result<()> {
    sqlx::query("UPDATE api_tokens SET last_used_us = ? WHERE hash = ?")
        .bind(at.0)
        .bind(hash)
        .execute(&mut *s.writer.lock().await)
        .await?;
    Ok(())
}

pub(super) async fn list_worker_tokens(reader: &SqlitePool) -> Result<Vec<WorkerToken>> {
    let rows =
        sqlx::query("SELECT name, created_us, revoked_us FROM worker_tokens ORDER BY name").fetch_all(reader).await?;
    rows.iter()
        .map(|r| {
            Ok(WorkerToken {
                name: r.try_get("name")?,
                created_at: Timestamp(r.try_get("created_us")?),
                revoked_at: r.try_get::<Option<i64>, _>("revoked_us")?.map(Timestamp),
            })
        })
        .collect()
}

pub(super) async fn worker_token_name(reader: &SqlitePool, hash: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT name FROM worker_tokens WHERE hash = ? AND revoked_us IS NULL")
        .bind(hash)
        .fetch_optional(reader)
        .await?)
}

pub(super) async fn create_worker_token(s: &SqliteStore, name: &str, hash: &str) -> Result<WorkerToken> {
    let created = Timestamp::now();
    let res = sqlx::query("INSERT INTO worker_tokens (name, hash, created_us) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
        .bind(name)
        .bind(hash)
        .bind(created.0)
        .execute(&mut *s.writer.lock().await)
        .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::Conflict { what: format!("a worker token named `{name}`") });
    }
    Ok(WorkerToken { name: name.to_owned(), created_at: created, revoked_at: None })
}

pub(super) async fn revoke_worker_token(s: &SqliteStore, name: &str) -> Result<bool> {
    let res = sqlx::query("UPDATE worker_tokens SET revoked_us = ? WHERE name = ? AND revoked_us IS NULL")
        .bind(Timestamp::now().0)
        .bind(name)
        .execute(&mut *s.writer.lock().await)
        .await?;
    Ok(res.rows_affected() == 1)
}
