//! The audit log in the SQLite backend: one table, appended to, read newest first.

use cloudbuild_proto::audit::AuditEntry;
use cloudbuild_proto::time::Timestamp;
use sqlx::{Row, SqlitePool};

use super::SqliteStore;
use crate::{AuditQuery, Result};

pub(super) async fn append(s: &SqliteStore, e: &AuditEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit (at_us, actor, address, action, target, project, outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(e.at.0)
    .bind(&e.actor)
    .bind(&e.address)
    .bind(&e.action)
    .bind(&e.target)
    .bind(&e.project)
    .bind(&e.outcome)
    .execute(&mut *s.writer.lock().await)
    .await?;
    Ok(())
}

pub(super) async fn list(reader: &SqlitePool, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT id, at_us, actor, address, action, target, project, outcome FROM audit \
         WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR actor = ?2) AND (?3 IS NULL OR action = ?3) \
         AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5",
    )
    .bind(&q.project)
    .bind(&q.actor)
    .bind(&q.action)
    .bind(q.before)
    .bind(i64::from(q.limit))
    .fetch_all(reader)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.try_get("id")?,
                at: Timestamp(r.try_get("at_us")?),
                actor: r.try_get("actor")?,
                address: r.try_get("address")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                project: r.try_get("project")?,
                outcome: r.try_get("outcome")?,
            })
        })
        .collect()
}
