//! Applies a batch of task changes with few statements: one `SELECT` of every touched task,
//! the fences, output caps and stage moves computed in memory (`crate::apply`), then one `UPDATE` per touched
//! task and multi-row `INSERT`s for the events.
//!
//! Why: sqlx runs each SQLite statement through a hand-off to the connection's thread, and
//! that hand-off (two context switches) costs far more than SQLite's own work. Statements per
//! batch, not per event, decide throughput. Correctness rests on the single writer: the batch
//! runs in one transaction on the only connection that writes.

use std::collections::{BTreeSet, HashMap};

use cloudbuild_proto::event::WireEvent;
use cloudbuild_proto::task::{Stage, TaskId, TaskState};
use cloudbuild_proto::time::Timestamp;
use sqlx::{Row, SqliteConnection};

use super::{task_from_row, TASK_COLUMNS};
use crate::apply::{self, Live, Op};
use crate::{Result, StoreError};

/// Rows per multi-row insert (4 binds each; far below SQLite's variable limit).
const INSERT_CHUNK: usize = 200;

/// Loads the touched tasks with one `SELECT`.
pub(super) async fn load_live(conn: &mut SqliteConnection, ids: &BTreeSet<TaskId>) -> Result<HashMap<TaskId, Live>> {
    let placeholders = vec!["?"; ids.len()].join(", ");
    let sql = format!(
        "SELECT {TASK_COLUMNS}, output_bytes, output_limit, truncated, worker_seq FROM tasks WHERE id IN ({placeholders})"
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(id);
    }
    let mut live: HashMap<TaskId, Live> = HashMap::with_capacity(ids.len());
    for row in query.fetch_all(&mut *conn).await? {
        let task = task_from_row(&row)?;
        live.insert(
            task.id,
            Live {
                output_bytes: row.try_get("output_bytes")?,
                output_limit: row.try_get("output_limit")?,
                truncated: row.try_get::<i64, _>("truncated")? != 0,
                worker_seq: row.try_get::<i64, _>("worker_seq")? as u64,
                dirty: false,
                task,
            },
        );
    }
    Ok(live)
}

/// Writes back the changed tasks (one `UPDATE` each) and the new events (multi-row `INSERT`s).
/// A task that is no longer running loses its lease.
pub(super) async fn store_live<'a>(
    conn: &mut SqliteConnection,
    live: impl Iterator<Item = &'a Live>,
    rows: &[(TaskId, WireEvent)],
) -> Result<()> {
    for l in live.filter(|l| l.dirty) {
        let t = &l.task;
        sqlx::query(
            "UPDATE tasks SET last_seq = ?, stage = ?, started_us = ?, commit_sha = ?, version = ?, output_bytes = ?, \
             truncated = ?, state = ?, reason = ?, url = ?, finished_us = ?, worker_seq = ?, attempt = ?, \
             worker = ?, cancel_requested = ?, cache = ?, \
             lease_until_us = CASE WHEN ? THEN lease_until_us ELSE NULL END WHERE id = ?",
        )
        .bind(t.last_seq as i64)
        .bind(t.stage.map(Stage::action))
        .bind(t.started_at.map(|s| s.0))
        .bind(&t.commit)
        .bind(&t.version)
        .bind(l.output_bytes)
        .bind(l.truncated)
        .bind(t.state.as_str())
        .bind(&t.reason)
        .bind(&t.url)
        .bind(t.finished_at.map(|s| s.0))
        .bind(l.worker_seq as i64)
        .bind(i64::from(t.attempt))
        .bind(&t.worker)
        .bind(t.cancel_requested)
        .bind(t.cache.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default()))
        .bind(t.state == TaskState::Running)
        .bind(t.id)
        .execute(&mut *conn)
        .await?;
    }
    for chunk in rows.chunks(INSERT_CHUNK) {
        let values = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO events (task_id, seq, kind, data) VALUES {values}");
        let mut insert = sqlx::query(&sql);
        for (id, ev) in chunk {
            insert = insert.bind(id).bind(ev.seq as i64).bind(ev.kind.as_str()).bind(&ev.data);
        }
        insert.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Applies `ops` in order inside the caller's transaction; one result per op.
pub(super) async fn apply(conn: &mut SqliteConnection, ops: &[Op]) -> Result<Vec<Result<Vec<WireEvent>>>> {
    let ids: BTreeSet<TaskId> = ops.iter().map(|o| o.task).collect();
    let mut live = load_live(conn, &ids).await?;
    let now = Timestamp::now();
    let mut rows: Vec<(TaskId, WireEvent)> = Vec::new();
    let results: Vec<Result<Vec<WireEvent>>> = ops
        .iter()
        .map(|op| match live.get_mut(&op.task) {
            Some(l) => apply::apply(l, op, now, &mut rows),
            None => Err(StoreError::NotFound(crate::Missing::Task(op.task))),
        })
        .collect();
    store_live(conn, live.values(), &rows).await?;
    Ok(results)
}
