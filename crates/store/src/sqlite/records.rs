//! Records kept as JSON in a table keyed by name (projects, users, global freeze windows) in the SQLite backend:
//! registered once, replaced only by compare-and-set, removed by name.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{Row, SqlitePool};

use super::SqliteStore;
use crate::{Result, StoreError};

/// A table of `(name TEXT PRIMARY KEY, data TEXT)`; `what` names a record in errors.
#[derive(Debug, Clone, Copy)]
pub(super) struct Table {
    pub name: &'static str,
    pub what: &'static str,
}

pub(super) const PROJECTS: Table = Table { name: "projects", what: "a project record" };
pub(super) const USERS: Table = Table { name: "users", what: "a user record" };
pub(super) const FREEZE_WINDOWS: Table = Table { name: "freeze_windows", what: "a freeze window" };

fn to_json(t: Table, r: &impl Serialize) -> Result<String> {
    serde_json::to_string(r).map_err(|e| StoreError::Corrupt(format!("{}: {e}", t.what)))
}

fn from_json<T: DeserializeOwned>(t: Table, data: &str) -> Result<T> {
    serde_json::from_str(data).map_err(|e| StoreError::Corrupt(format!("{}: {e}", t.what)))
}

/// Inserts the record unless its name is taken; false if it was.
pub(super) async fn create(s: &SqliteStore, t: Table, name: &str, r: &impl Serialize) -> Result<bool> {
    let sql = format!("INSERT INTO {} (name, data) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", t.name);
    let res = sqlx::query(&sql).bind(name).bind(to_json(t, r)?).execute(&mut *s.writer.lock().await).await?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn get<T: DeserializeOwned>(reader: &SqlitePool, t: Table, name: &str) -> Result<Option<T>> {
    let sql = format!("SELECT data FROM {} WHERE name = ?", t.name);
    let row = sqlx::query(&sql).bind(name).fetch_optional(reader).await?;
    row.map(|r| from_json(t, &r.try_get::<String, _>("data")?)).transpose()
}

/// Every record, by name.
pub(super) async fn list<T: DeserializeOwned>(reader: &SqlitePool, t: Table) -> Result<Vec<T>> {
    let sql = format!("SELECT data FROM {} ORDER BY name", t.name);
    let rows = sqlx::query(&sql).fetch_all(reader).await?;
    rows.iter().map(|r| from_json(t, &r.try_get::<String, _>("data")?)).collect()
}

/// Replaces the record of `name` by `new` while it is still `old`. The stored record is
/// compared as this version writes it, so one stored before a field was added (which `old`,
/// read from it, now carries with its default) still matches.
pub(super) async fn update<T: Serialize + DeserializeOwned>(
    s: &SqliteStore,
    t: Table,
    name: &str,
    old: &T,
    new: &T,
) -> Result<bool> {
    // One write connection: nothing changes the row between this read and the write.
    let mut writer = s.writer.lock().await;
    let sql = format!("SELECT data FROM {} WHERE name = ?", t.name);
    let Some(row) = sqlx::query(&sql).bind(name).fetch_optional(&mut *writer).await? else { return Ok(false) };
    let stored: String = row.try_get("data")?;
    if to_json(t, &from_json::<T>(t, &stored)?)? != to_json(t, old)? {
        return Ok(false);
    }
    let sql = format!("UPDATE {} SET data = ? WHERE name = ?", t.name);
    let res = sqlx::query(&sql).bind(to_json(t, new)?).bind(name).execute(&mut *writer).await?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn delete(s: &SqliteStore, t: Table, name: &str) -> Result<bool> {
    let sql = format!("DELETE FROM {} WHERE name = ?", t.name);
    let res = sqlx::query(&sql).bind(name).execute(&mut *s.writer.lock().await).await?;
    Ok(res.rows_affected() == 1)
}
