//! Registered projects in the SQLite backend: one row per name, the record as JSON.

use cloudbuild_proto::project::Project;
use sqlx::{Row, SqlitePool};

use super::SqliteStore;
use crate::{Result, StoreError};

fn to_json(p: &Project) -> Result<String> {
    serde_json::to_string(p).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json(data: &str) -> Result<Project> {
    serde_json::from_str(data).map_err(|e| StoreError::Corrupt(format!("a project record: {e}")))
}

pub(super) async fn create(s: &SqliteStore, p: &Project) -> Result<bool> {
    let res = sqlx::query("INSERT INTO projects (name, data) VALUES (?, ?) ON CONFLICT (name) DO NOTHING")
        .bind(&p.name)
        .bind(to_json(p)?)
        .execute(&mut *s.writer.lock().await)
        .await?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn get(reader: &SqlitePool, name: &str) -> Result<Option<Project>> {
    let row = sqlx::query("SELECT data FROM projects WHERE name = ?").bind(name).fetch_optional(reader).await?;
    row.map(|r| from_json(&r.try_get::<String, _>("data")?)).transpose()
}

pub(super) async fn list(reader: &SqlitePool) -> Result<Vec<Project>> {
    let rows = sqlx::query("SELECT data FROM projects ORDER BY name").fetch_all(reader).await?;
    rows.iter().map(|r| from_json(&r.try_get::<String, _>("data")?)).collect()
}

pub(super) async fn update(s: &SqliteStore, old: &Project, new: &Project) -> Result<bool> {
    let res = sqlx::query("UPDATE projects SET data = ? WHERE name = ? AND data = ?")
        .bind(to_json(new)?)
        .bind(&old.name)
        .bind(to_json(old)?)
        .execute(&mut *s.writer.lock().await)
        .await?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn delete(s: &SqliteStore, name: &str) -> Result<bool> {
    let res =
        sqlx::query("DELETE FROM projects WHERE name = ?").bind(name).execute(&mut *s.writer.lock().await).await?;
    Ok(res.rows_affected() == 1)
}
