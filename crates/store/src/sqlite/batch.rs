//! Applies a batch of task changes with few statements: one `SELECT` of every touched task,
//! the fences, output caps and stage moves computed in memory, then one `UPDATE` per touched
//! task and multi-row `INSERT`s for the events.
//!
//! Why: sqlx runs each SQLite statement through a hand-off to the connection's thread, and
//! that hand-off (two context switches) costs far more than SQLite's own work. Statements per
//! batch, not per event, decide throughput. Correctness rests on the single writer: the batch
//! runs in one transaction on the only connection that writes.

use std::collections::{BTreeSet, HashMap};

use cloudbuild_proto::event::{EventBody, WireEvent};
use cloudbuild_proto::task::{Stage, Task, TaskId, TaskState};
use cloudbuild_proto::time::Timestamp;
use sqlx::{Row, SqliteConnection};

use super::{check_fence, task_from_row, TASK_COLUMNS};
use crate::{final_stage_event, Fence, Finish, Result, StoreError};

/// One change to one task.
#[derive(Debug)]
pub(super) struct Op<'a> {
    pub(super) task: TaskId,
    pub(super) fence: Fence,
    pub(super) kind: OpKind<'a>,
}

#[derive(Debug)]
pub(super) enum OpKind<'a> {
    Append(&'a EventBody),
    Commit(&'a str),
    Finish(&'a Finish),
}

/// A task row as the batch changes it.
struct Live {
    task: Task,
    output_bytes: i64,
    output_limit: i64,
    truncated: bool,
    dirty: bool,
}

/// Rows per multi-row insert (4 binds each; far below SQLite's variable limit).
const INSERT_CHUNK: usize = 200;

/// The terminal columns a task gets when it ends this way: state, stage, reason, url.
pub(super) fn finish_fields(
    task: &Task,
    finish: &Finish,
) -> (TaskState, Option<Stage>, Option<String>, Option<String>) {
    let (stage, reason, url) = match finish {
        Finish::Succeeded { url } => (task.stage, None, Some(url.clone())),
        Finish::Failed { stage, reason } => (Some(*stage), Some(reason.clone()), None),
        Finish::Cancelled { stage, reason } | Finish::TimedOut { stage, reason } => {
            (stage.or(task.stage), Some(reason.clone()), None)
        }
        Finish::Error { reason } => (task.stage, Some(reason.clone()), None),
    };
    (finish.state(), stage, reason, url)
}

/// Applies `ops` in order inside the caller's transaction; one result per op.
pub(super) async fn apply(conn: &mut SqliteConnection, ops: &[Op<'_>]) -> Result<Vec<Result<Vec<WireEvent>>>> {
    let ids: BTreeSet<TaskId> = ops.iter().map(|o| o.task).collect();
    let placeholders = vec!["?"; ids.len()].join(", ");
    let sql =
        format!("SELECT {TASK_COLUMNS}, output_bytes, output_limit, truncated FROM tasks WHERE id IN ({placeholders})");
    let mut query = sqlx::query(&sql);
    for id in &ids {
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
                dirty: false,
                task,
            },
        );
    }

    let now = Timestamp::now();
    let mut rows: Vec<(TaskId, WireEvent)> = Vec::new();
    let results: Vec<Result<Vec<WireEvent>>> = ops
        .iter()
        .map(|op| match live.get_mut(&op.task) {
            Some(l) => apply_one(l, op, now, &mut rows),
            None => Err(StoreError::NotFound(op.task)),
        })
        .collect();

    for l in live.values().filter(|l| l.dirty) {
        let t = &l.task;
        sqlx::query(
            "UPDATE tasks SET last_seq = ?, stage = ?, started_us = ?, commit_sha = ?, output_bytes = ?, \
             truncated = ?, state = ?, reason = ?, url = ?, finished_us = ?, \
             lease_until_us = CASE WHEN ? THEN NULL ELSE lease_until_us END WHERE id = ?",
        )
        .bind(t.last_seq as i64)
        .bind(t.stage.map(Stage::action))
        .bind(t.started_at.map(|s| s.0))
        .bind(&t.commit)
        .bind(l.output_bytes)
        .bind(l.truncated)
        .bind(t.state.as_str())
        .bind(&t.reason)
        .bind(&t.url)
        .bind(t.finished_at.map(|s| s.0))
        .bind(t.state.is_terminal())
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
    Ok(results)
}

/// Gives the next sequence number to `body` and queues its row.
fn emit(l: &mut Live, body: &EventBody, now: Timestamp, rows: &mut Vec<(TaskId, WireEvent)>) -> WireEvent {
    l.task.last_seq += 1;
    l.dirty = true;
    let seq = l.task.last_seq;
    let ev = WireEvent { seq, kind: body.kind(), data: body.render(l.task.id, seq, now) };
    rows.push((l.task.id, ev.clone()));
    ev
}

fn apply_one(l: &mut Live, op: &Op<'_>, now: Timestamp, rows: &mut Vec<(TaskId, WireEvent)>) -> Result<Vec<WireEvent>> {
    if let OpKind::Finish(_) = op.kind {
        if l.task.state.is_terminal() {
            return Ok(Vec::new()); // the first ending wins
        }
    }
    check_fence(&l.task, op.fence)?;
    match op.kind {
        OpKind::Finish(finish) => {
            let first = emit(l, &final_stage_event(finish), now, rows);
            let (state, stage, reason, url) = finish_fields(&l.task, finish);
            let end = EventBody::End { state, reason: reason.clone(), url: url.clone() };
            (l.task.state, l.task.stage, l.task.reason, l.task.url) = (state, stage, reason, url);
            l.task.finished_at = Some(now);
            let last = emit(l, &end, now, rows);
            Ok(vec![first, last])
        }
        OpKind::Commit(sha) => {
            l.task.commit = Some(sha.to_owned());
            l.dirty = true;
            Ok(Vec::new())
        }
        OpKind::Append(body @ EventBody::Stage { action, .. }) => {
            if let Some(stage) = Stage::from_action(action) {
                l.task.stage = Some(stage);
                if stage == Stage::Prepare && l.task.started_at.is_none() {
                    l.task.started_at = Some(now);
                }
            }
            Ok(vec![emit(l, body, now, rows)])
        }
        OpKind::Append(body @ EventBody::Output { stream, text }) => {
            if l.truncated {
                return Ok(Vec::new());
            }
            let room = usize::try_from((l.output_limit - l.output_bytes).max(0)).unwrap_or(usize::MAX);
            if text.len() <= room {
                l.output_bytes += text.len() as i64;
                return Ok(vec![emit(l, body, now, rows)]);
            }
            let kept = cut_at_char_boundary(text, room);
            let mut out = Vec::new();
            if !kept.is_empty() {
                out.push(emit(l, &EventBody::Output { stream: *stream, text: kept.to_owned() }, now, rows));
            }
            l.output_bytes += kept.len() as i64;
            l.truncated = true;
            out.push(emit(l, &EventBody::Truncated { limit_bytes: l.output_limit as u64 }, now, rows));
            Ok(out)
        }
        OpKind::Append(EventBody::Truncated { .. } | EventBody::End { .. }) => {
            Err(StoreError::Database("truncated and end events are written by the store itself".into()))
        }
    }
}

fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
