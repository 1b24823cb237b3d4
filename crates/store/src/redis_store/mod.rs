//! The Redis backend: several servers share one Redis; tasks, queue, leases, event logs,
//! releases, workers and worker tokens live in it, and servers tell each other about changes
//! over one pub/sub channel.
//!
//! Every change to a task is an optimistic transaction: read the task (a hash with its JSON
//! record and a revision number), apply the shared rules of `crate::apply` in memory, then
//! commit with one Lua script that checks the revision is unchanged before writing the record,
//! appending the events and moving the task between the queue and the lease set. A conflict
//! (another server changed the task in between) re-reads and recomputes. So the rules exist
//! once, in Rust, and Redis only guarantees the compare-and-set is atomic.
//!
//! Keys (prefix `cb:`): `task:{id}` hash {rev, data}; `ev:{id}` list of `"<kind> <json>"`
//! (event `seq` = index + 1); `tasks` and `tasks:name:{name}` sorted sets of ids; `queue`
//! (queued ids, score = id, so FIFO); `held` (ids gated by a freeze window or awaiting approval); `running` (running ids, score = lease end in µs);
//! `release:{id}`, `release_files:{id}`, `releases:{name}`, `current` (`env/name` → id),
//! `holders:{env}:{hash}` (set of `id path`: every release holding a content); `lease_key:{id}`
//! (`attempt hash` of the running attempt's lease secret); `workers`; `worker_tokens`,
//! `worker_token_hash`; `projects`, `users` and `freeze_windows` (name → JSON record); `api_tokens`,
//! `user_tokens:{user}`, `api_token_used` (personal tokens, see `tokens`).
//!
//! Layout, mirroring `sqlite/`: the `Store` implementation and task changes here; the key names
//! (`keys`), the Lua scripts (`scripts`), the compare-and-set machinery (`cas`), claims from the queue (`queue`), releases and
//! the content index (`releases`), the worker registry, tokens and shared locks (`workers`),
//! notices between servers (`notices`).

use std::time::Duration;

use async_trait::async_trait;
use cloudbuild_proto::audit::AuditEntry;
use cloudbuild_proto::event::{EventBody, EventKind, WireEvent};
use cloudbuild_proto::gate::FreezeWindow;
use cloudbuild_proto::project::Project;
use cloudbuild_proto::release::{ManifestFile, Release};
use cloudbuild_proto::task::{Environment, Task, TaskId, TaskState};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{ApiTokenRecord, UserRecord};
use cloudbuild_proto::worker::{WorkerInfo, WorkerToken};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::broadcast;

mod audit;
mod cas;
mod deliveries;
mod keys;
mod notices;
mod queue;
mod records;
mod releases;
mod scripts;
mod secrets;
mod tokens;
mod workers;

use crate::apply::{self, CancelEffect, Live, Op, RequeueEffect};
use crate::{
    Appended, AuditQuery, CancelOutcome, Change, Fence, Finish, NewRelease, NewTask, Notice, RequeueOutcome, Result,
    Store, StoreError, StoredSecret, TaskQuery, WorkerOp,
};
use cas::{record_json, Plan};
use keys::*;
use scripts::*;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// A request that gets no answer within this fails (the API answers 503).
    pub response_timeout: Duration,
    /// Connecting (and reconnecting) gives up after this.
    pub connect_timeout: Duration,
}

impl RedisOptions {
    pub fn new(url: &str) -> Self {
        RedisOptions {
            url: url.to_owned(),
            response_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// The Redis store; cheap to clone (one multiplexed, self-reconnecting connection).
#[derive(Clone)]
pub struct RedisStore {
    con: ConnectionManager,
    cas: Script,
    swap: Script,
    pub(super) lock: Script,
    pub(super) extend: Script,
    pub(super) unlock: Script,
    /// This process, to ignore its own notices.
    instance: String,
    notices: broadcast::Sender<Notice>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("instance", &self.instance).finish()
    }
}

/// A record that could not be encoded or decoded (JSON in Redis values).
pub(super) fn db_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::database("a Redis record", e)
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            StoreError::Unavailable { backend: "Redis", source: e.into() }
        } else {
            StoreError::database("Redis", e)
        }
    }
}

impl RedisStore {
    /// Connects (failing after the connect timeout if Redis is not there) and starts listening
    /// to the other servers' notices.
    pub async fn open(opts: &RedisOptions) -> Result<Self> {
        let client =
            redis::Client::open(opts.url.as_str()).map_err(|e| StoreError::database("invalid Redis URL", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_with_config(client.clone(), config).await?;
        let (notices, _) = broadcast::channel(4096);
        let instance = format!("{}-{}", std::process::id(), Timestamp::now().0);
        tokio::spawn(notices::listen(client, instance.clone(), notices.clone()));
        Ok(RedisStore {
            con,
            cas: Script::new(CAS_LUA),
            swap: Script::new(SWAP_LUA),
            lock: Script::new(LOCK_LUA),
            extend: Script::new(EXTEND_LUA),
            unlock: Script::new(UNLOCK_LUA),
            instance,
            notices,
        })
    }

    pub(super) fn con(&self) -> ConnectionManager {
        self.con.clone()
    }
}

fn parse_event(seq: u64, raw: &str) -> Result<WireEvent> {
    let (kind, data) = raw.split_once(' ').ok_or_else(|| StoreError::Corrupt(format!("event `{raw}`")))?;
    let kind = EventKind::parse(kind).ok_or_else(|| StoreError::Corrupt(format!("event kind `{kind}`")))?;
    Ok(WireEvent { seq, kind, data: data.to_owned() })
}

#[async_trait]
impl Store for RedisStore {
    async fn create_task(&self, new: NewTask) -> Result<(Task, WireEvent)> {
        let id: TaskId = self.con().incr(format!("{P}next_task"), 1).await?;
        let created = Timestamp::now();
        let output_limit = i64::try_from(new.output_limit).unwrap_or(i64::MAX);
        let body = apply::created_event(id, &new);
        let event = WireEvent { seq: 1, kind: body.kind(), data: body.render(id, 1, created) };
        let task = apply::queued_task(id, new, created);
        // A gated task waits apart from the queue: no worker may take it.
        if !apply::is_held(task.state) && task.state != TaskState::Queued {
            return Err(StoreError::InvalidChange("a new task is queued, gated or awaiting approval"));
        }
        let waiting = if apply::is_held(task.state) { held_key() } else { queue_key() };
        let live =
            Live { task: task.clone(), output_bytes: 0, output_limit, truncated: false, worker_seq: 0, dirty: true };
        let plan = Plan {
            check: vec![(task_key(id), String::new())],
            put: vec![(task_key(id), record_json(&live)?)],
            rpush: vec![(events_key(id), vec![format!("{} {}", event.kind.as_str(), event.data)])],
            zadd: vec![
                (format!("{P}tasks"), id.to_string(), id.to_string()),
                (format!("{P}tasks:name:{}", task.name), id.to_string(), id.to_string()),
                (waiting, id.to_string(), id.to_string()),
            ],
            zrem: Vec::new(),
        };
        if !self.run(&plan).await? {
            return Err(StoreError::Corrupt(format!("task id {id} was taken twice")));
        }
        Ok((task, event))
    }

    async fn get_task(&self, id: TaskId) -> Result<Task> {
        self.load_tasks(&[id]).await?.pop().ok_or(StoreError::NotFound(crate::Missing::Task(id)))
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<Vec<Task>> {
        let limit = q.limit.clamp(1, 500) as usize;
        // Running tasks are few: read them from the lease set instead of scanning history.
        if q.state == Some(TaskState::Running) && q.name.is_none() {
            let mut ids: Vec<TaskId> = self.con().zrange(running_key(), 0, -1).await?;
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids.retain(|id| q.before.is_none_or(|b| *id < b));
            let tasks = self.load_tasks(&ids).await?;
            return Ok(tasks.into_iter().filter(|t| t.state == TaskState::Running).take(limit).collect());
        }
        let key = match (&q.name, q.state) {
            (Some(name), _) => format!("{P}tasks:name:{name}"),
            // The queue's score is the id too, so it pages like the history.
            (None, Some(TaskState::Queued)) => queue_key(),
            (None, Some(s)) if apply::is_held(s) => held_key(),
            (None, _) => format!("{P}tasks"),
        };
        let mut max = q.before.map(|b| (b - 1).to_string()).unwrap_or_else(|| "+inf".into());
        let mut out = Vec::new();
        loop {
            let ids: Vec<TaskId> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&key)
                .arg(&max)
                .arg("-inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit.max(50))
                .query_async(&mut self.con())
                .await?;
            let Some(last) = ids.last() else { return Ok(out) };
            max = (last - 1).to_string();
            for t in self.load_tasks(&ids).await? {
                if q.state.is_none_or(|s| s == t.state) {
                    out.push(t);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
    }

    async fn claim_next(
        &self,
        worker: &str,
        labels: &[String],
        lease_until: Timestamp,
        lease_key: &str,
    ) -> Result<Option<Task>> {
        queue::claim_next(self, worker, labels, lease_until, lease_key).await
    }

    async fn extend_lease(&self, id: TaskId, attempt: u32, worker: &str, until: Timestamp) -> Result<bool> {
        let held = self
            .update(&[id], |live, plan, _| {
                let held = live.get(&id).is_some_and(|l| {
                    l.task.state == TaskState::Running
                        && l.task.attempt == attempt
                        && l.task.worker.as_deref() == Some(worker)
                });
                if held {
                    plan.zadd.push((running_key(), until.0.to_string(), id.to_string()));
                }
                held
            })
            .await?;
        Ok(held)
    }

    async fn holds_lease(&self, id: TaskId, attempt: u32, lease_key: &str) -> Result<bool> {
        let stored: Option<String> = self.con().get(lease_key_key(id)).await?;
        if stored.as_deref() != Some(format!("{attempt} {lease_key}").as_str()) {
            return Ok(false);
        }
        let task = self.get_task(id).await?;
        Ok(task.state == TaskState::Running && task.attempt == attempt)
    }

    async fn expired_leases(&self, now: Timestamp) -> Result<Vec<Task>> {
        let ids: Vec<TaskId> = self.con().zrangebyscore(running_key(), "-inf", format!("({}", now.0)).await?;
        Ok(self.load_tasks(&ids).await?.into_iter().filter(|t| t.state == TaskState::Running).collect())
    }

    async fn running_tasks(&self) -> Result<Vec<Task>> {
        let ids: Vec<TaskId> = self.con().zrange(running_key(), 0, -1).await?;
        Ok(self.load_tasks(&ids).await?.into_iter().filter(|t| t.state == TaskState::Running).collect())
    }

    async fn append_event(&self, id: TaskId, fence: Fence, body: EventBody) -> Result<Appended> {
        let op = Op::server(id, fence, Change::Append(body));
        let events = self.update_one(id, |l, _, written| apply::apply(l, &op, Timestamp::now(), written)).await?;
        Ok(if events.is_empty() { Appended::Dropped } else { Appended::Events(events) })
    }

    async fn apply_worker_ops(&self, ops: Vec<WorkerOp>) -> Result<Vec<Result<Vec<WireEvent>>>> {
        let ops: Vec<Op> = ops.into_iter().map(Op::from).collect();
        let mut ids: Vec<TaskId> = ops.iter().map(|o| o.task).collect();
        ids.sort_unstable();
        ids.dedup();
        self.update(&ids, |live, plan, written| {
            let now = Timestamp::now();
            ops.iter()
                .map(|op| {
                    let l = live.get_mut(&op.task).ok_or(StoreError::NotFound(crate::Missing::Task(op.task)))?;
                    let was_running = l.task.state == TaskState::Running;
                    let res = apply::apply(l, op, now, written);
                    if was_running && l.task.state.is_terminal() {
                        plan.zrem.push((running_key(), l.task.id.to_string()));
                    }
                    res
                })
                .collect()
        })
        .await
    }

    async fn finish(&self, id: TaskId, fence: Fence, finish: Finish) -> Result<Option<Vec<WireEvent>>> {
        let op = Op::server(id, fence, Change::Finish(finish));
        let events = self
            .update_one(id, |l, plan, written| {
                let res = apply::apply(l, &op, Timestamp::now(), written)?;
                if !res.is_empty() {
                    plan.zrem.push((running_key(), id.to_string()));
                    plan.zrem.push((queue_key(), id.to_string()));
                    plan.zrem.push((held_key(), id.to_string()));
                }
                Ok(res)
            })
            .await?;
        Ok(if events.is_empty() { None } else { Some(events) })
    }

    async fn request_cancel(&self, id: TaskId, queued_only: bool) -> Result<CancelOutcome> {
        let (effect, task, events) = self
            .update_one(id, |l, plan, written| {
                let effect = apply::cancel(l, Timestamp::now(), written, queued_only);
                if effect == CancelEffect::EndedQueued {
                    plan.zrem.push((queue_key(), id.to_string()));
                    plan.zrem.push((held_key(), id.to_string()));
                }
                let events: Vec<WireEvent> = written.iter().map(|(_, e)| e.clone()).collect();
                Ok((effect, l.task.clone(), events))
            })
            .await?;
        Ok(match effect {
            CancelEffect::AlreadyCancelled => CancelOutcome::AlreadyCancelled(task),
            CancelEffect::AlreadyFinished => CancelOutcome::AlreadyFinished(task),
            CancelEffect::EndedQueued => CancelOutcome::CancelledQueued(task, events),
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
        self.update_one(id, |l, plan, written| {
            if !apply::release_held(l, (from, to), &body, Timestamp::now(), written) {
                return Ok(None);
            }
            let key = |s: TaskState| if s == TaskState::Queued { queue_key() } else { held_key() };
            if key(from) != key(to) {
                plan.zrem.push((key(from), id.to_string()));
                plan.zadd.push((key(to), id.to_string(), id.to_string()));
            }
            Ok(Some(written.iter().map(|(_, e)| e.clone()).collect()))
        })
        .await
    }

    async fn end_held(&self, id: TaskId, from: TaskState, reason: String) -> Result<Option<Vec<WireEvent>>> {
        self.update_one(id, |l, plan, written| {
            if !apply::end_held(l, from, reason.clone(), Timestamp::now(), written) {
                return Ok(None);
            }
            plan.zrem.push((held_key(), id.to_string()));
            Ok(Some(written.iter().map(|(_, e)| e.clone()).collect()))
        })
        .await
    }

    async fn requeue(&self, id: TaskId, attempt: u32, max_attempts: u32, why: &str) -> Result<RequeueOutcome> {
        self.update_one(id, |l, plan, written| {
            let effect = apply::requeue(l, attempt, max_attempts, why, Timestamp::now(), written);
            let events: Vec<WireEvent> = written.iter().map(|(_, e)| e.clone()).collect();
            Ok(match effect {
                RequeueEffect::Unchanged => RequeueOutcome::Unchanged,
                RequeueEffect::Requeued(next) => {
                    plan.zrem.push((running_key(), id.to_string()));
                    plan.zadd.push((queue_key(), id.to_string(), id.to_string()));
                    RequeueOutcome::Requeued { attempt: next, events }
                }
                RequeueEffect::Ended => {
                    plan.zrem.push((running_key(), id.to_string()));
                    RequeueOutcome::Failed { events }
                }
            })
        })
        .await
    }

    async fn events_after(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<WireEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = after as isize;
        let raw: Vec<String> = self.con().lrange(events_key(id), start, start + limit as isize - 1).await?;
        raw.iter().enumerate().map(|(i, r)| parse_event(after + 1 + i as u64, r)).collect()
    }

    async fn record_release(&self, new: NewRelease, files: &[ManifestFile]) -> Result<Release> {
        releases::record_release(self, new, files).await
    }

    async fn set_current(&self, release_id: i64) -> Result<Option<Release>> {
        releases::set_current(self, release_id).await
    }

    async fn list_releases(&self, env: Option<Environment>, name: &str) -> Result<Vec<Release>> {
        releases::list_releases(self, env, name).await
    }

    async fn get_release(&self, id: i64) -> Result<Option<Release>> {
        releases::get_release(self, id).await
    }

    async fn release_files(&self, release_id: i64) -> Result<Vec<ManifestFile>> {
        releases::release_files(self, release_id).await
    }

    async fn find_contents(&self, env: Environment, hashes: &[String]) -> Result<Vec<crate::ContentHolder>> {
        releases::find_contents(self, env, hashes).await
    }

    async fn mark_pruned(&self, ids: &[i64]) -> Result<()> {
        releases::mark_pruned(self, ids).await
    }

    async fn put_worker(&self, worker: &WorkerInfo) -> Result<()> {
        workers::put_worker(self, worker).await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        workers::list_workers(self).await
    }

    async fn create_worker_token(&self, name: &str, hash: &str) -> Result<WorkerToken> {
        workers::create_worker_token(self, name, hash).await
    }

    async fn revoke_worker_token(&self, name: &str) -> Result<bool> {
        workers::revoke_worker_token(self, name).await
    }

    async fn list_worker_tokens(&self) -> Result<Vec<WorkerToken>> {
        workers::list_worker_tokens(self).await
    }

    async fn worker_token_name(&self, hash: &str) -> Result<Option<String>> {
        workers::worker_token_name(self, hash).await
    }

    async fn put_secret(&self, secret: &StoredSecret) -> Result<()> {
        secrets::put(self, secret).await
    }

    async fn delete_secret(&self, project: &str, env: Environment, name: &str) -> Result<bool> {
        secrets::delete(self, project, env, name).await
    }

    async fn list_secrets(&self, project: &str) -> Result<Vec<StoredSecret>> {
        secrets::list(self, project).await
    }

    async fn create_project(&self, project: &Project) -> Result<bool> {
        records::create(self, records::PROJECTS, &project.name, project).await
    }

    async fn get_project(&self, name: &str) -> Result<Option<Project>> {
        records::get(self, records::PROJECTS, name).await
    }

    async fn list_projects(&self) -> Result<Vec<Project>> {
        records::list(self, records::PROJECTS).await
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
        records::get(self, records::USERS, name).await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        records::list(self, records::USERS).await
    }

    async fn update_user(&self, old: &UserRecord, new: &UserRecord) -> Result<bool> {
        records::update(self, records::USERS, &old.user.name, old, new).await
    }

    async fn create_api_token(&self, token: &ApiTokenRecord) -> Result<bool> {
        tokens::create(self, token).await
    }

    async fn api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>> {
        tokens::by_hash(self, hash).await
    }

    async fn list_api_tokens(&self, user: &str) -> Result<Vec<ApiTokenRecord>> {
        tokens::list(self, user).await
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
        records::list(self, records::FREEZE_WINDOWS).await
    }

    async fn delete_freeze_window(&self, id: &str) -> Result<bool> {
        records::delete(self, records::FREEZE_WINDOWS, id).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        audit::append(self, entry).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        audit::list(self, query).await
    }

    async fn claim_delivery(
        &self,
        key: &str,
        delivery: &cloudbuild_proto::webhook::Delivery,
        listed: bool,
    ) -> Result<bool> {
        deliveries::claim(self, key, delivery, listed).await
    }

    async fn get_delivery(&self, key: &str) -> Result<Option<cloudbuild_proto::webhook::Delivery>> {
        deliveries::get(self, key).await
    }

    async fn release_delivery(&self, key: &str) -> Result<()> {
        deliveries::release(self, key).await
    }

    async fn set_delivery(&self, key: &str, delivery: &cloudbuild_proto::webhook::Delivery) -> Result<()> {
        deliveries::set(self, key, delivery).await
    }

    async fn list_deliveries(&self, project: &str, limit: u32) -> Result<Vec<cloudbuild_proto::webhook::Delivery>> {
        deliveries::list(self, project, limit).await
    }

    async fn extend_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        workers::extend_lock(self, name, holder, ttl).await
    }

    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        workers::try_lock(self, name, holder, ttl).await
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<()> {
        workers::unlock(self, name, holder).await
    }

    async fn announce(&self, notice: Notice) -> Result<()> {
        notices::announce(self, notice).await
    }

    fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
        Some(self.notices.subscribe())
    }
}
