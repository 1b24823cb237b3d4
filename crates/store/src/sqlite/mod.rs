//! The SQLite backend: the embedded default, one file in the data directory.
//!
//! Writes go through one connection held behind an async mutex, so transactions never race to
//! upgrade a read lock (SQLite has one writer anyway) and there is no `SQLITE_BUSY` to retry.
//! It is held, not pooled: an sqlx pool acquire costs ~150 µs here, five times a statement.
//! Reads use a separate pool: in WAL mode they run beside the writer. `synchronous=NORMAL` in WAL mode keeps
//! every committed transaction across a process crash (SIGKILL); only an OS crash or power loss
//! can lose the last few.
//!
//! Checkpoints (copying the WAL into the database, with an fsync) run in the background on a
//! connection of their own, once a second: left to the writer (SQLite's automatic checkpoint
//! every 4 MiB of WAL), a build printing 20 MB stalled its own log five times.

mod audit;
mod batch;
mod deliveries;
mod records;
mod releases;
mod rows;
mod secrets;
mod tokens;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use cloudbuild_proto::audit::AuditEntry;
use cloudbuild_proto::event::{EventBody, EventKind, WireEvent};
use cloudbuild_proto::gate::FreezeWindow;
use cloudbuild_proto::project::Project;
use cloudbuild_proto::task::{Environment, Task, TaskId, TaskState};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{ApiTokenRecord, UserRecord};
use cloudbuild_proto::webhook::Delivery;
pub(super) use rows::{split_labels, task_from_row, TASK_COLUMNS};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection, SqlitePool};
use std::sync::Arc;
use tokio::sync::Mutex;

use crate::apply::{self, CancelEffect, Op, RequeueEffect};
use crate::{
    labels_match, Appended, AuditQuery, CancelOutcome, Change, Fence, Finish, NewRelease, NewTask, RequeueOutcome,
    Result, Store, StoreError, StoredSecret, TaskQuery, WorkerOp,
};
use cloudbuild_proto::release::{ManifestFile, Release};
use cloudbuild_proto::worker::{WorkerInfo, WorkerToken};
use std::collections::BTreeSet;

/// Tasks and events in one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<SqliteConnection>>,
    reader: SqlitePool,
    /// Ends the background checkpoints when the last clone of the store is dropped.
    _checkpoints: Arc<Checkpoints>,
}

/// How often the WAL is checkpointed in the background.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The background checkpoint task; aborted when dropped.
#[derive(Debug)]
struct Checkpoints(tokio::task::JoinHandle<()>);

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] without blocking the writer or readers
/// (`PASSIVE`: it copies what no reader still needs). A failure is logged and retried.
async fn checkpoint_in_background(mut conn: SqliteConnection) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
            tracing::warn!("SQLite checkpoint: {e}");
        }
    }
}

impl SqliteStore {
    /// Changes one held task in a transaction when `change` says it applies; the events written.
    async fn change_held(
        &self,
        id: TaskId,
        change: impl FnOnce(&mut apply::Live, &mut Vec<(TaskId, WireEvent)>) -> bool,
    ) -> Result<Option<Vec<WireEvent>>> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        let mut live = batch::load_live(&mut tx, &BTreeSet::from([id])).await?;
        let l = live.get_mut(&id).ok_or(StoreError::NotFound(crate::Missing::Task(id)))?;
        let mut rows = Vec::new();
        if !change(l, &mut rows) {
            return Ok(None);
        }
        batch::store_live(&mut tx, live.values(), &rows).await?;
        tx.commit().await?;
        Ok(Some(rows.into_iter().map(|(_, e)| e).collect()))
    }

    /// Applies one operation in its own transaction.
    async fn apply_one(&self, op: Op) -> Result<Vec<WireEvent>> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        let mut results = batch::apply(&mut tx, std::slice::from_ref(&op)).await?;
        tx.commit().await?;
        results.pop().unwrap_or(Ok(Vec::new()))
    }

    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // The writer checkpoints only as a backstop (past 40 MiB of WAL, should the background
        // checkpoints fail or fall behind): `checkpoint_in_background` does it. The WAL file is
        // cut back to 64 MiB after a checkpoint that emptied it.
        let mut writer = opts
            .clone()
            .pragma("wal_autocheckpoint", "10000")
            .pragma("journal_size_limit", (64 << 20).to_string())
            .connect()
            .await?;
        sqlx::migrate!("./migrations").run(&mut writer).await?;
        // Readers skip the per-acquire ping: a local file has no connection to lose.
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(opts.clone().read_only(true))
            .await?;
        let checkpoints = Checkpoints(tokio::spawn(checkpoint_in_background(opts.connect().await?)));
        Ok(SqliteStore { writer: Arc::new(Mutex::new(writer)), reader, _checkpoints: Arc::new(checkpoints) })
    }
}

async fn load(conn: &mut SqliteConnection, id: TaskId) -> Result<Task> {
    let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound(crate::Missing::Task(id)))?;
    task_from_row(&row)
}

/// Writes event `seq` (already reserved in `tasks.last_seq`) inside the caller's transaction.
async fn insert_event(conn: &mut SqliteConnection, id: TaskId, seq: u64, body: &EventBody) -> Result<WireEvent> {
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

#[async_trait]
impl Store for SqliteStore {
    async fn create_task(&self, new: NewTask) -> Result<(Task, WireEvent)> {
        if new.held.is_some_and(|s| !apply::is_held(s)) {
            return Err(StoreError::InvalidChange("a new task is queued, gated or awaiting approval"));
        }
        let created = Timestamp::now();
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        let id: TaskId = sqlx::query_scalar(
            "INSERT INTO tasks (name, version, repo, branch, commit_sha, build_cmd, env, trigger_kind, force, requested_by, \
             state, retry_of, output_limit, created_us, last_seq, labels, no_cache, cause, changed) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&new.name)
        .bind(&new.version)
        .bind(&new.repo)
        .bind(&new.branch)
        .bind(&new.commit)
        .bind(&new.build_cmd)
        .bind(new.env.as_str())
        .bind(new.trigger.as_str())
        .bind(new.force)
        .bind(&new.requested_by)
        .bind(new.held.unwrap_or(TaskState::Queued).as_str())
        .bind(new.retry_of)
        .bind(i64::try_from(new.output_limit).unwrap_or(i64::MAX))
        .bind(created.0)
        .bind(new.labels.join(","))
        .bind(new.no_cache)
        .bind(&new.cause)
        .bind(new.changed.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default()))
        .fetch_one(&mut *tx)
        .await?;
        let body = apply::created_event(id, &new);
        let event = insert_event(&mut tx, id, 1, &body).await?;
        tx.commit().await?;
        // Built from what was just written, saving a read-back.
        let task = apply::queued_task(id, new, created);
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

    async fn claim_next(
        &self,
        worker: &str,
        labels: &[String],
        lease_until: Timestamp,
        lease_key: &str,
    ) -> Result<Option<Task>> {
        let mut conn = self.writer.lock().await;
        // The common case (no labels anywhere) is the first row; a labelled queue is scanned in
        // id order for the oldest task this worker may run.
        let mut after: TaskId = 0;
        loop {
            let rows =
                sqlx::query("SELECT id, labels FROM tasks WHERE state = 'queued' AND id > ? ORDER BY id LIMIT 64")
                    .bind(after)
                    .fetch_all(&mut *conn)
                    .await?;
            let Some(last) = rows.last() else { return Ok(None) };
            after = last.try_get("id")?;
            for r in &rows {
                if !labels_match(&split_labels(&r.try_get::<String, _>("labels")?), labels) {
                    continue;
                }
                let row = sqlx::query(&format!(
                    "UPDATE tasks SET state = 'running', worker = ?, lease_until_us = ?, lease_key = ? WHERE id = ? \
                     RETURNING {TASK_COLUMNS}"
                ))
                .bind(worker)
                .bind(lease_until.0)
                .bind(lease_key)
                .bind(r.try_get::<TaskId, _>("id")?)
                .fetch_one(&mut *conn)
                .await?;
                return task_from_row(&row).map(Some);
            }
        }
    }

    async fn extend_lease(&self, id: TaskId, attempt: u32, worker: &str, until: Timestamp) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE tasks SET lease_until_us = ? WHERE id = ? AND attempt = ? AND worker = ? AND state = 'running'",
        )
        .bind(until.0)
        .bind(id)
        .bind(i64::from(attempt))
        .bind(worker)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn holds_lease(&self, id: TaskId, attempt: u32, lease_key: &str) -> Result<bool> {
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM tasks WHERE id = ? AND attempt = ? AND state = 'running' AND lease_key = ?",
        )
        .bind(id)
        .bind(i64::from(attempt))
        .bind(lease_key)
        .fetch_optional(&self.reader)
        .await?;
        Ok(held.is_some())
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
        let rows = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'running' ORDER BY id"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn append_event(&self, id: TaskId, fence: Fence, body: EventBody) -> Result<Appended> {
        let events = self.apply_one(Op::server(id, fence, Change::Append(body))).await?;
        Ok(if events.is_empty() { Appended::Dropped } else { Appended::Events(events) })
    }

    async fn apply_worker_ops(&self, ops: Vec<WorkerOp>) -> Result<Vec<Result<Vec<WireEvent>>>> {
        let ops: Vec<Op> = ops.into_iter().map(Op::from).collect();
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        let results = batch::apply(&mut tx, &ops).await?;
        tx.commit().await?;
        Ok(results)
    }

    async fn finish(&self, id: TaskId, fence: Fence, finish: Finish) -> Result<Option<Vec<WireEvent>>> {
        let events = self.apply_one(Op::server(id, fence, Change::Finish(finish))).await?;
        // No events: it had already ended, and the first ending wins.
        Ok(if events.is_empty() { None } else { Some(events) })
    }

    async fn request_cancel(&self, id: TaskId, queued_only: bool) -> Result<CancelOutcome> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        let mut live = batch::load_live(&mut tx, &BTreeSet::from([id])).await?;
        let l = live.get_mut(&id).ok_or(StoreError::NotFound(crate::Missing::Task(id)))?;
        let mut rows = Vec::new();
        let effect = apply::cancel(l, Timestamp::now(), &mut rows, queued_only);
        batch::store_live(&mut tx, live.values(), &rows).await?;
        tx.commit().await?;
        let task = live.remove(&id).ok_or(StoreError::NotFound(crate::Missing::Task(id)))?.task;
        Ok(match effect {
            CancelEffect::AlreadyCancelled => CancelOutcome::AlreadyCancelled(task),
            CancelEffect::AlreadyFinished => CancelOutcome::AlreadyFinished(task),
            CancelEffect::EndedQueued => {
                CancelOutcome::CancelledQueued(task, rows.into_iter().map(|(_, e)| e).collect())
            }
            CancelEffect::Flagged => CancelOutcome::Requested(task),
            CancelEffect::NotQueued => CancelOutcome::NotQueued(task),
        })
    }

    async fn release_held(
        &self,
        id: TaskId,
        from: TaskState,
        to: TaskState,
        body: EventBody,
    ) -> Result<Option<Vec<WireEvent>>> {
        self.change_held(id, |l, rows| apply::release_held(l, (from, to), &body, Timestamp::now(), rows)).await
    }

    async fn end_held(&self, id: TaskId, from: TaskState, reason: String) -> Result<Option<Vec<WireEvent>>> {
        self.change_held(id, |l, rows| apply::end_held(l, from, reason, Timestamp::now(), rows)).await
    }

    async fn requeue(&self, id: TaskId, attempt: u32, max_attempts: u32, why: &str) -> Result<RequeueOutcome> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        let mut live = batch::load_live(&mut tx, &BTreeSet::from([id])).await?;
        let l = live.get_mut(&id).ok_or(StoreError::NotFound(crate::Missing::Task(id)))?;
        let mut rows = Vec::new();
        let effect = apply::requeue(l, attempt, max_attempts, why, Timestamp::now(), &mut rows);
        batch::store_live(&mut tx, live.values(), &rows).await?;
        tx.commit().await?;
        let events = rows.into_iter().map(|(_, e)| e).collect();
        Ok(match effect {
            RequeueEffect::Unchanged => RequeueOutcome::Unchanged,
            RequeueEffect::Requeued(attempt) => RequeueOutcome::Requeued { attempt, events },
            RequeueEffect::Ended => RequeueOutcome::Failed { events },
        })
    }

    async fn events_after(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<WireEvent>> {
        let rows = sqlx::query("SELECT seq, kind, data FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?")
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
                    kind: EventKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("event kind `{kind}`")))?,
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }

    async fn record_release(&self, new: NewRelease, files: &[ManifestFile]) -> Result<Release> {
        releases::record(&mut *self.writer.lock().await, new, files).await
    }

    async fn set_current(&self, release_id: i64) -> Result<Option<Release>> {
        releases::set_current(&mut *self.writer.lock().await, release_id).await
    }

    async fn list_releases(&self, env: Option<Environment>, name: &str) -> Result<Vec<Release>> {
        let mut conn = self.reader.acquire().await?;
        releases::list(&mut conn, env, name).await
    }

    async fn get_release(&self, id: i64) -> Result<Option<Release>> {
        let mut conn = self.reader.acquire().await?;
        releases::load(&mut conn, id).await
    }

    async fn release_files(&self, release_id: i64) -> Result<Vec<ManifestFile>> {
        let rows = sqlx::query("SELECT path, hash, size FROM release_files WHERE release_id = ? ORDER BY path")
            .bind(release_id)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ManifestFile {
                    path: r.try_get("path")?,
                    hash: r.try_get("hash")?,
                    size: r.try_get::<i64, _>("size")? as u64,
                    fingerprinted: false,
                })
            })
            .collect()
    }

    async fn find_contents(&self, env: Environment, hashes: &[String]) -> Result<Vec<crate::ContentHolder>> {
        let mut conn = self.reader.acquire().await?;
        releases::find_contents(&mut conn, env, hashes).await
    }

    async fn mark_pruned(&self, ids: &[i64]) -> Result<()> {
        let mut conn = self.writer.lock().await;
        for id in ids {
            sqlx::query("UPDATE releases SET pruned = 1 WHERE id = ?").bind(id).execute(&mut *conn).await?;
            // A removed release is nobody's current one (a removed preview's last).
            sqlx::query("DELETE FROM current_releases WHERE release_id = ?").bind(id).execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn put_worker(&self, worker: &WorkerInfo) -> Result<()> {
        let data = serde_json::to_string(worker).map_err(|e| StoreError::database("encoding a worker record", e))?;
        sqlx::query(
            "INSERT INTO workers (name, data) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET data = excluded.data",
        )
        .bind(&worker.name)
        .bind(data)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT data FROM workers ORDER BY name").fetch_all(&self.reader).await?;
        rows.iter()
            .map(|d| serde_json::from_str(d).map_err(|e| StoreError::database("decoding a worker record", e)))
            .collect()
    }

    async fn create_worker_token(&self, name: &str, hash: &str) -> Result<WorkerToken> {
        tokens::create_worker_token(self, name, hash).await
    }

    async fn revoke_worker_token(&self, name: &str) -> Result<bool> {
        tokens::revoke_worker_token(self, name).await
    }

    async fn list_worker_tokens(&self) -> Result<Vec<WorkerToken>> {
        tokens::list_worker_tokens(&self.reader).await
    }

    async fn worker_token_name(&self, hash: &str) -> Result<Option<String>> {
        tokens::worker_token_name(&self.reader, hash).await
    }

    async fn put_secret(&self, secret: &StoredSecret) -> Result<()> {
        secrets::put(self, secret).await
    }

    async fn delete_secret(&self, project: &str, env: Environment, name: &str) -> Result<bool> {
        secrets::delete(self, project, env, name).await
    }

    async fn list_secrets(&self, project: &str) -> Result<Vec<StoredSecret>> {
        secrets::list(&self.reader, project).await
    }

    async fn create_project(&self, project: &Project) -> Result<bool> {
        records::create(self, records::PROJECTS, &project.name, project).await
    }

    async fn get_project(&self, name: &str) -> Result<Option<Project>> {
        records::get(&self.reader, records::PROJECTS, name).await
    }

    async fn list_projects(&self) -> Result<Vec<Project>> {
        records::list(&self.reader, records::PROJECTS).await
    }

    async fn update_project(&self, old: &Project, new: &Project) -> Result<bool> {
        records::update(self, records::PROJECTS, &old.name, old, new).await
    }

    async fn delete_project(&self, name: &str) -> Result<bool> {
        records::delete(self, records::PROJECTS, name).await
    }

    async fn create_user(&self, user: &UserRecord) -> Result<bool> {
        records::create(self, records::USERS, &user.user.name, user).await
    }

    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>> {
        records::get(&self.reader, records::USERS, name).await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        records::list(&self.reader, records::USERS).await
    }

    async fn update_user(&self, old: &UserRecord, new: &UserRecord) -> Result<bool> {
        records::update(self, records::USERS, &old.user.name, old, new).await
    }

    async fn create_api_token(&self, token: &ApiTokenRecord) -> Result<bool> {
        tokens::create(self, token).await
    }

    async fn api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>> {
        tokens::by_hash(&self.reader, hash).await
    }

    async fn list_api_tokens(&self, user: &str) -> Result<Vec<ApiTokenRecord>> {
        tokens::list(&self.reader, user).await
    }

    async fn delete_api_token(&self, user: &str, name: &str) -> Result<bool> {
        tokens::delete(self, user, name).await
    }

    async fn touch_api_token(&self, hash: &str, at: Timestamp) -> Result<()> {
        tokens::touch(self, hash, at).await
    }

    async fn create_freeze_window(&self, window: &FreezeWindow) -> Result<bool> {
        records::create(self, records::FREEZE_WINDOWS, &window.id, window).await
    }

    async fn list_freeze_windows(&self) -> Result<Vec<FreezeWindow>> {
        records::list(&self.reader, records::FREEZE_WINDOWS).await
    }

    async fn delete_freeze_window(&self, id: &str) -> Result<bool> {
        records::delete(self, records::FREEZE_WINDOWS, id).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        audit::append(self, entry).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        audit::list(&self.reader, query).await
    }

    async fn claim_delivery(&self, key: &str, d: &Delivery, listed: bool) -> Result<bool> {
        deliveries::claim(self, key, d, listed).await
    }
    async fn set_delivery(&self, key: &str, d: &Delivery) -> Result<()> {
        deliveries::set(self, key, d).await
    }
    async fn get_delivery(&self, key: &str) -> Result<Option<Delivery>> {
        deliveries::get(&self.reader, key).await
    }

    async fn release_delivery(&self, key: &str) -> Result<()> {
        deliveries::release(self, key).await
    }
    async fn list_deliveries(&self, project: &str, limit: u32) -> Result<Vec<Delivery>> {
        deliveries::list(&self.reader, project, limit).await
    }
}
