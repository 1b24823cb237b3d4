//! The SQLite backend: the embedded default, one file in the data directory.
//!
//! Writes go through a pool of exactly one connection, so transactions never race to upgrade a
//! read lock (SQLite has one writer anyway) and there is no `SQLITE_BUSY` to retry. Reads use a
//! separate pool: in WAL mode they run beside the writer. `synchronous=NORMAL` in WAL mode keeps
//! every committed transaction across a process crash (SIGKILL); only an OS crash or power loss
//! can lose the last few.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use cloudbuild_proto::event::{EventBody, EventKind, WireEvent};
use cloudbuild_proto::task::{actions, Environment, Stage, Task, TaskId, TaskState, Trigger};
use cloudbuild_proto::time::Timestamp;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::{
    final_stage_event, Appended, CancelOutcome, Fence, Finish, NewTask, RequeueOutcome, Result,
    Store, StoreError, TaskQuery,
};

/// Tasks and events in one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }
}

const TASK_COLUMNS: &str = "id, name, version, repo, branch, commit_sha, build_cmd, env, trigger_kind, requested_by, \
     state, stage, reason, attempt, worker, retry_of, url, cancel_requested, created_us, started_us, finished_us, last_seq";

fn task_from_row(row: &SqliteRow) -> Result<Task> {
    let bad =
        |what: &str, v: &str| StoreError::Database(format!("corrupt {what} `{v}` in tasks table"));
    let env: String = row.try_get("env")?;
    let trigger: String = row.try_get("trigger_kind")?;
    let state: String = row.try_get("state")?;
    let stage: Option<String> = row.try_get("stage")?;
    let stage = match stage {
        Some(s) => Some(Stage::from_action(&s).ok_or_else(|| bad("stage", &s))?),
        None => None,
    };
    Ok(Task {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        repo: row.try_get("repo")?,
        branch: row.try_get("branch")?,
        commit: row.try_get("commit_sha")?,
        build_cmd: row.try_get("build_cmd")?,
        env: Environment::parse(&env).ok_or_else(|| bad("env", &env))?,
        trigger: Trigger::parse(&trigger).ok_or_else(|| bad("trigger", &trigger))?,
        requested_by: row.try_get("requested_by")?,
        state: TaskState::parse(&state).ok_or_else(|| bad("state", &state))?,
        stage,
        reason: row.try_get("reason")?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        worker: row.try_get("worker")?,
        retry_of: row.try_get("retry_of")?,
        url: row.try_get("url")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: Timestamp(row.try_get("created_us")?),
        started_at: row.try_get::<Option<i64>, _>("started_us")?.map(Timestamp),
        finished_at: row.try_get::<Option<i64>, _>("finished_us")?.map(Timestamp),
        last_seq: row.try_get::<i64, _>("last_seq")? as u64,
    })
}

async fn load(conn: &mut SqliteConnection, id: TaskId) -> Result<Task> {
    let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    task_from_row(&row)
}

/// Appends one rendered event inside the caller's transaction.
async fn push(conn: &mut SqliteConnection, id: TaskId, body: &EventBody) -> Result<WireEvent> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE tasks SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let seq = seq as u64;
    let kind = body.kind();
    let data = body.render(id, seq, Timestamp::now());
    sqlx::query("INSERT INTO events (task_id, seq, kind, data) VALUES (?, ?, ?, ?)")
        .bind(id)
        .bind(seq as i64)
        .bind(kind.as_str())
        .bind(&data)
        .execute(&mut *conn)
        .await?;
    Ok(WireEvent { seq, kind, data })
}

fn check_fence(task: &Task, fence: Fence) -> Result<()> {
    if task.state.is_terminal() {
        return Err(StoreError::Terminal(task.id));
    }
    if let Fence::Attempt(given) = fence {
        if task.state != TaskState::Running || given != task.attempt {
            return Err(StoreError::Stale {
                task: task.id,
                current: task.attempt,
                given,
            });
        }
    }
    Ok(())
}

/// Ends a task inside the caller's transaction.
async fn finish_in(
    conn: &mut SqliteConnection,
    task: &Task,
    finish: &Finish,
) -> Result<Vec<WireEvent>> {
    let mut events = vec![push(conn, task.id, &final_stage_event(finish)).await?];
    let (stage, reason, url) = match finish {
        Finish::Succeeded { url } => (task.stage, None, Some(url.clone())),
        Finish::Failed { stage, reason } => (Some(*stage), Some(reason.clone()), None),
        Finish::Cancelled { stage, reason } | Finish::TimedOut { stage, reason } => {
            (stage.or(task.stage), Some(reason.clone()), None)
        }
        Finish::Error { reason } => (task.stage, Some(reason.clone()), None),
    };
    let state = finish.state();
    events.push(
        push(
            conn,
            task.id,
            &EventBody::End {
                state,
                reason: reason.clone(),
                url: url.clone(),
            },
        )
        .await?,
    );
    sqlx::query(
        "UPDATE tasks SET state = ?, stage = ?, reason = ?, url = ?, finished_us = ?, lease_until_us = NULL WHERE id = ?",
    )
    .bind(state.as_str())
    .bind(stage.map(Stage::action))
    .bind(reason)
    .bind(url)
    .bind(Timestamp::now().0)
    .bind(task.id)
    .execute(&mut *conn)
    .await?;
    Ok(events)
}

fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_task(&self, new: NewTask) -> Result<(Task, WireEvent)> {
        let mut tx = self.writer.begin().await?;
        let id: TaskId = sqlx::query_scalar(
            "INSERT INTO tasks (name, version, repo, branch, build_cmd, env, trigger_kind, requested_by, state, \
             retry_of, output_limit, created_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?) RETURNING id",
        )
        .bind(&new.name)
        .bind(&new.version)
        .bind(&new.repo)
        .bind(&new.branch)
        .bind(&new.build_cmd)
        .bind(new.env.as_str())
        .bind(new.trigger.as_str())
        .bind(&new.requested_by)
        .bind(new.retry_of)
        .bind(i64::try_from(new.output_limit).unwrap_or(i64::MAX))
        .bind(Timestamp::now().0)
        .fetch_one(&mut *tx)
        .await?;
        let retry = new
            .retry_of
            .map(|r| format!(" (retry of task {r})"))
            .unwrap_or_default();
        let message = format!(
            "task {id} created: {}@{} from {} branch {} for {}{retry}",
            new.name,
            new.version,
            new.repo,
            new.branch,
            new.env.as_str()
        );
        let event = push(
            &mut tx,
            id,
            &EventBody::Stage {
                action: actions::CREATE_TASK.into(),
                message,
            },
        )
        .await?;
        let task = load(&mut tx, id).await?;
        tx.commit().await?;
        Ok((task, event))
    }

    async fn get_task(&self, id: TaskId) -> Result<Task> {
        let mut conn = self.reader.acquire().await?;
        load(&mut conn, id).await
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<Vec<Task>> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR name = ?1) AND (?2 IS NULL OR state = ?2) \
             AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4"
        ))
        .bind(&q.name)
        .bind(q.state.map(TaskState::as_str))
        .bind(q.before)
        .bind(i64::from(q.limit.clamp(1, 500)))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn claim_next(&self, worker: &str, lease_until: Timestamp) -> Result<Option<Task>> {
        let row = sqlx::query(&format!(
            "UPDATE tasks SET state = 'running', worker = ?, lease_until_us = ? WHERE id = \
             (SELECT id FROM tasks WHERE state = 'queued' ORDER BY id LIMIT 1) RETURNING {TASK_COLUMNS}"
        ))
        .bind(worker)
        .bind(lease_until.0)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn extend_lease(
        &self,
        id: TaskId,
        attempt: u32,
        worker: &str,
        until: Timestamp,
    ) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE tasks SET lease_until_us = ? WHERE id = ? AND attempt = ? AND worker = ? AND state = 'running'",
        )
        .bind(until.0)
        .bind(id)
        .bind(i64::from(attempt))
        .bind(worker)
        .execute(&self.writer)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn expired_leases(&self, now: Timestamp) -> Result<Vec<Task>> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'running' AND lease_until_us < ? ORDER BY id"
        ))
        .bind(now.0)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn running_tasks(&self) -> Result<Vec<Task>> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'running' ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn append_event(&self, id: TaskId, fence: Fence, body: EventBody) -> Result<Appended> {
        let mut tx = self.writer.begin().await?;
        let task = load(&mut tx, id).await?;
        check_fence(&task, fence)?;
        let events = match &body {
            EventBody::Output { stream, text } => {
                let row = sqlx::query(
                    "SELECT output_bytes, output_limit, truncated FROM tasks WHERE id = ?",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                let (used, limit): (i64, i64) =
                    (row.try_get("output_bytes")?, row.try_get("output_limit")?);
                if row.try_get::<i64, _>("truncated")? != 0 {
                    return Ok(Appended::Dropped);
                }
                let room = usize::try_from((limit - used).max(0)).unwrap_or(usize::MAX);
                if text.len() <= room {
                    sqlx::query("UPDATE tasks SET output_bytes = output_bytes + ? WHERE id = ?")
                        .bind(text.len() as i64)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    vec![push(&mut tx, id, &body).await?]
                } else {
                    let kept = cut_at_char_boundary(text, room);
                    let mut out = Vec::new();
                    if !kept.is_empty() {
                        out.push(
                            push(
                                &mut tx,
                                id,
                                &EventBody::Output {
                                    stream: *stream,
                                    text: kept.to_owned(),
                                },
                            )
                            .await?,
                        );
                    }
                    out.push(
                        push(
                            &mut tx,
                            id,
                            &EventBody::Truncated {
                                limit_bytes: limit as u64,
                            },
                        )
                        .await?,
                    );
                    sqlx::query("UPDATE tasks SET output_bytes = ?, truncated = 1 WHERE id = ?")
                        .bind(used + kept.len() as i64)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    out
                }
            }
            EventBody::Stage { action, .. } => {
                if let Some(stage) = Stage::from_action(action) {
                    sqlx::query(
                        "UPDATE tasks SET stage = ?, started_us = CASE WHEN ? AND started_us IS NULL THEN ? \
                         ELSE started_us END WHERE id = ?",
                    )
                    .bind(stage.action())
                    .bind(stage == Stage::Prepare)
                    .bind(Timestamp::now().0)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                vec![push(&mut tx, id, &body).await?]
            }
            EventBody::Truncated { .. } | EventBody::End { .. } => {
                return Err(StoreError::Database(
                    "truncated and end events are written by the store itself".into(),
                ))
            }
        };
        tx.commit().await?;
        Ok(Appended::Events(events))
    }

    async fn set_commit(&self, id: TaskId, attempt: u32, sha: &str) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let task = load(&mut tx, id).await?;
        check_fence(&task, Fence::Attempt(attempt))?;
        sqlx::query("UPDATE tasks SET commit_sha = ? WHERE id = ?")
            .bind(sha)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish(
        &self,
        id: TaskId,
        fence: Fence,
        finish: Finish,
    ) -> Result<Option<Vec<WireEvent>>> {
        let mut tx = self.writer.begin().await?;
        let task = load(&mut tx, id).await?;
        if task.state.is_terminal() {
            return Ok(None);
        }
        check_fence(&task, fence)?;
        let events = finish_in(&mut tx, &task, &finish).await?;
        tx.commit().await?;
        Ok(Some(events))
    }

    async fn request_cancel(&self, id: TaskId) -> Result<CancelOutcome> {
        let mut tx = self.writer.begin().await?;
        let task = load(&mut tx, id).await?;
        let outcome = match task.state {
            TaskState::Cancelled => CancelOutcome::AlreadyCancelled(task),
            s if s.is_terminal() => CancelOutcome::AlreadyFinished(task),
            TaskState::Queued => {
                let finish = Finish::Cancelled {
                    stage: None,
                    reason: "cancelled while queued; it never ran".into(),
                };
                let events = finish_in(&mut tx, &task, &finish).await?;
                sqlx::query("UPDATE tasks SET cancel_requested = 1 WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::CancelledQueued(load(&mut tx, id).await?, events)
            }
            _ => {
                sqlx::query("UPDATE tasks SET cancel_requested = 1 WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Requested(load(&mut tx, id).await?)
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn requeue(
        &self,
        id: TaskId,
        attempt: u32,
        max_attempts: u32,
        why: &str,
    ) -> Result<RequeueOutcome> {
        let mut tx = self.writer.begin().await?;
        let task = load(&mut tx, id).await?;
        if task.state != TaskState::Running || task.attempt != attempt {
            return Ok(RequeueOutcome::Unchanged);
        }
        let outcome = if attempt >= max_attempts || task.cancel_requested {
            let reason = if task.cancel_requested {
                format!("{why}; the task was being cancelled")
            } else {
                format!("worker lost: {why}; gave up after {attempt} attempt(s)")
            };
            let finish = if task.cancel_requested {
                Finish::Cancelled {
                    stage: task.stage,
                    reason,
                }
            } else {
                Finish::Error { reason }
            };
            RequeueOutcome::Failed {
                events: finish_in(&mut tx, &task, &finish).await?,
            }
        } else {
            let next = attempt + 1;
            let message = format!("{why}; requeued as attempt {next} of {max_attempts}");
            let ev = push(
                &mut tx,
                id,
                &EventBody::Stage {
                    action: actions::REQUEUED.into(),
                    message,
                },
            )
            .await?;
            sqlx::query(
                "UPDATE tasks SET state = 'queued', attempt = ?, worker = NULL, stage = NULL, lease_until_us = NULL \
                 WHERE id = ?",
            )
            .bind(i64::from(next))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            RequeueOutcome::Requeued {
                attempt: next,
                events: vec![ev],
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn events_after(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<WireEvent>> {
        let rows = sqlx::query(
            "SELECT seq, kind, data FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                Ok(WireEvent {
                    seq: r.try_get::<i64, _>("seq")? as u64,
                    kind: EventKind::parse(&kind).ok_or_else(|| {
                        StoreError::Database(format!("corrupt event kind `{kind}`"))
                    })?,
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }
}
