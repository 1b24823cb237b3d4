//! Project secrets in the SQLite backend (sealed values only).

use cloudbuild_proto::task::Environment;
use cloudbuild_proto::time::Timestamp;
use sqlx::{Row, SqlitePool};

use super::SqliteStore;
use crate::{Result, StoreError, StoredSecret};

pub(super) async fn put(s: &SqliteStore, secret: &StoredSecret) -> Result<()> {
    let stages = serde_json::to_string(&secret.stages).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO secrets (project, env, name, sealed, stages, updated_us) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT (project, env, name) DO UPDATE SET sealed = excluded.sealed, stages = excluded.stages, \
         updated_us = excluded.updated_us",
    )
    .bind(&secret.project)
    .bind(secret.env.as_str())
    .bind(&secret.name)
    .bind(&secret.sealed)
    .bind(stages)
    .bind(secret.updated_at.0)
    .execute(&mut *s.writer.lock().await)
    .await?;
    Ok(())
}

pub(super) async fn delete(s: &SqliteStore, project: &str, env: Environment, name: &str) -> Result<bool> {
    let res = sqlx::query("DELETE FROM secrets WHERE project = ? AND env = ? AND name = ?")
        .bind(project)
        .bind(env.as_str())
        .bind(name)
        .execute(&mut *s.writer.lock().await)
        .await?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn list(reader: &SqlitePool, project: &str) -> Result<Vec<StoredSecret>> {
    let rows = sqlx::query(
        "SELECT project, env, name, sealed, stages, updated_us FROM secrets WHERE project = ? ORDER BY env, name",
    )
    .bind(project)
    .fetch_all(reader)
    .await?;
    rows.iter()
        .map(|r| {
            let env: String = r.try_get("env")?;
            let stages: String = r.try_get("stages")?;
            Ok(StoredSecret {
                project: r.try_get("project")?,
                env: Environment::parse(&env)
                    .ok_or_else(|| StoreError::Corrupt(format!("env `{env}` in the secrets table")))?,
                name: r.try_get("name")?,
                sealed: r.try_get("sealed")?,
                stages: serde_json::from_str(&stages).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                updated_at: Timestamp(r.try_get("updated_us")?),
            })
        })
        .collect()
}
