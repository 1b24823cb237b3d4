//! Webhook deliveries in the SQLite backend: claimed once per key (`INSERT … ON CONFLICT DO
//! NOTHING`), their outcome replaced, listed per project; older than [`crate::DELIVERY_DAYS`]
//! removed when a new one is claimed.

use cloudbuild_proto::webhook::Delivery;
use sqlx::{Row, SqlitePool};

use super::SqliteStore;
use crate::{Result, StoreError, DELIVERY_DAYS};

fn to_json(d: &Delivery) -> Result<String> {
    serde_json::to_string(d).map_err(|e| StoreError::Corrupt(format!("a delivery record: {e}")))
}

pub(super) async fn claim(s: &SqliteStore, key: &str, d: &Delivery, listed: bool) -> Result<bool> {
    let mut conn = s.writer.lock().await;
    // Once per delivery (at its listed key), not at each of its keys.
    if listed {
        let oldest = d.received_at.0 - DELIVERY_DAYS * 86_400_000_000;
        sqlx::query("DELETE FROM deliveries WHERE received_us < ?").bind(oldest).execute(&mut *conn).await?;
    }
    let res = sqlx::query(
        "INSERT INTO deliveries (key, project, received_us, listed, data) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(&d.project)
    .bind(d.received_at.0)
    .bind(listed)
    .bind(to_json(d)?)
    .execute(&mut *conn)
    .await?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn set(s: &SqliteStore, key: &str, d: &Delivery) -> Result<()> {
    sqlx::query("UPDATE deliveries SET data = ? WHERE key = ?")
        .bind(to_json(d)?)
        .bind(key)
        .execute(&mut *s.writer.lock().await)
        .await?;
    Ok(())
}

pub(super) async fn release(s: &SqliteStore, key: &str) -> Result<()> {
    sqlx::query("DELETE FROM deliveries WHERE key = ?").bind(key).execute(&mut *s.writer.lock().await).await?;
    Ok(())
}

pub(super) async fn get(reader: &SqlitePool, key: &str) -> Result<Option<Delivery>> {
    let row = sqlx::query("SELECT data FROM deliveries WHERE key = ?").bind(key).fetch_optional(reader).await?;
    row.map(|r| {
        let data: String = r.try_get("data")?;
        serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(format!("a delivery record: {e}")))
    })
    .transpose()
}

pub(super) async fn list(reader: &SqlitePool, project: &str, limit: u32) -> Result<Vec<Delivery>> {
    let rows = sqlx::query(
        "SELECT data FROM deliveries WHERE project = ? AND listed ORDER BY received_us DESC, rowid DESC LIMIT ?",
    )
    .bind(project)
    .bind(limit)
    .fetch_all(reader)
    .await?;
    rows.iter()
        .map(|r| {
            let data: String = r.try_get("data")?;
            serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(format!("a delivery record: {e}")))
        })
        .collect()
}
