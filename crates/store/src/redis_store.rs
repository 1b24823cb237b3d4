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
//! (queued ids, score = id, so FIFO); `running` (running ids, score = lease end in µs);
//! `release:{id}`, `release_files:{id}`, `releases:{name}`, `current` (`env/name` → id),
//! `holders:{env}:{hash}` (set of `id path`: every release holding a content); `lease_key:{id}`
//! (`attempt hash` of the running attempt's lease secret); `workers`; `worker_tokens`,
//! `worker_token_hash`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use cloudbuild_proto::event::{EventBody, EventKind, WireEvent};
use cloudbuild_proto::release::{ManifestFile, Release};
use cloudbuild_proto::task::{Environment, Task, TaskId, TaskState};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::worker::{WorkerInfo, WorkerToken};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::apply::{self, CancelEffect, Live, Op, RequeueEffect};
use crate::{
    labels_match, Appended, CancelOutcome, Change, Fence, Finish, NewRelease, NewTask, Notice, RequeueOutcome, Result,
    Store, StoreError, TaskQuery, WorkerOp,
};

const P: &str = "cb:";
const NOTICES: &str = "cb:notices";
/// Attempts of one optimistic transaction before giving up (conflicts need a concurrent
/// writer of the same task; a handful of retries is already unusual).
const MAX_CONFLICTS: usize = 64;

/// Checks revisions, then writes. ARGV[1] is a JSON plan; returns 1 if applied, 0 on conflict.
const CAS_LUA: &str = r#"
local plan = cjson.decode(ARGV[1])
for _, c in ipairs(plan.check) do
  local rev = redis.call('HGET', c[1], 'rev') or ''
  if rev ~= c[2] then return 0 end
end
for _, w in ipairs(plan.put) do
  redis.call('HSET', w[1], 'data', w[2])
  redis.call('HINCRBY', w[1], 'rev', 1)
end
for _, e in ipairs(plan.rpush) do redis.call('RPUSH', e[1], unpack(e[2])) end
for _, z in ipairs(plan.zadd) do redis.call('ZADD', z[1], z[2], z[3]) end
for _, z in ipairs(plan.zrem) do redis.call('ZREM', z[1], z[2]) end
return 1
"#;

/// Sets a hash field and returns its previous value, atomically.
const SWAP_LUA: &str = r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"#;

/// Takes or extends a lock for its holder: KEYS[1] lock, ARGV[1] holder, ARGV[2] ttl in ms.
const LOCK_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Extends a lock only while its holder still has it: a renewal that arrives after the lock
/// expired (Redis stalled past the TTL) must not take it again, another server may have it.
const EXTEND_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Deletes a lock if its holder still has it.
const UNLOCK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

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
    lock: Script,
    extend: Script,
    unlock: Script,
    /// This process, to ignore its own notices.
    instance: String,
    notices: broadcast::Sender<Notice>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("instance", &self.instance).finish()
    }
}

/// A task's stored record: the public task and the bookkeeping of `apply::Live`.
#[derive(Serialize, Deserialize)]
struct Record {
    task: Task,
    output_bytes: i64,
    output_limit: i64,
    truncated: bool,
    worker_seq: u64,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    notice: Notice,
}

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    hash: String,
    created_at: Timestamp,
    revoked_at: Option<Timestamp>,
}

/// What one transaction writes; see `CAS_LUA`.
#[derive(Default, Serialize)]
struct Plan {
    check: Vec<(String, String)>,
    put: Vec<(String, String)>,
    rpush: Vec<(String, Vec<String>)>,
    zadd: Vec<(String, String, String)>,
    zrem: Vec<(String, String)>,
}

fn task_key(id: TaskId) -> String {
    format!("{P}task:{id}")
}
fn events_key(id: TaskId) -> String {
    format!("{P}ev:{id}")
}
fn queue_key() -> String {
    format!("{P}queue")
}
fn running_key() -> String {
    format!("{P}running")
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            StoreError::Unavailable(format!("Redis: {e}"))
        } else {
            StoreError::Database(format!("Redis: {e}"))
        }
    }
}

impl RedisStore {
    /// Connects (failing after the connect timeout if Redis is not there) and starts listening
    /// to the other servers' notices.
    pub async fn open(opts: &RedisOptions) -> Result<Self> {
        let client = redis::Client::open(opts.url.as_str())
            .map_err(|e| StoreError::Database(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_with_config(client.clone(), config).await?;
        let (notices, _) = broadcast::channel(4096);
        let instance = format!("{}-{}", std::process::id(), Timestamp::now().0);
        tokio::spawn(listen(client, instance.clone(), notices.clone()));
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

    fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// Loads tasks with their revisions; missing ids are absent from the map.
    async fn load(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, (String, Live)>> {
        if ids.is_empty() {
            return Ok(HashMap::new()); // an empty pipeline is an error in redis-rs
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(task_key(*id)).arg("rev").arg("data");
        }
        let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut self.con()).await?;
        let mut out = HashMap::with_capacity(ids.len());
        for (id, (rev, data)) in ids.iter().zip(rows) {
            let (Some(rev), Some(data)) = (rev, data) else { continue };
            let r: Record = serde_json::from_str(&data).map_err(|e| db_err(format!("corrupt task {id}: {e}")))?;
            let live = Live {
                task: r.task,
                output_bytes: r.output_bytes,
                output_limit: r.output_limit,
                truncated: r.truncated,
                worker_seq: r.worker_seq,
                dirty: false,
            };
            out.insert(*id, (rev, live));
        }
        Ok(out)
    }

    async fn load_tasks(&self, ids: &[TaskId]) -> Result<Vec<Task>> {
        let mut map = self.load(ids).await?;
        Ok(ids.iter().filter_map(|id| map.remove(id)).map(|(_, l)| l.task).collect())
    }

    async fn run(&self, plan: &Plan) -> Result<bool> {
        let json = serde_json::to_string(plan).map_err(db_err)?;
        let applied: i64 = self.cas.arg(json).invoke_async(&mut self.con()).await?;
        Ok(applied == 1)
    }

    /// The optimistic transaction: `change` computes on fresh copies of the tasks, adding
    /// index moves to the plan; changed tasks and their new events are written if no task
    /// changed meanwhile, else it starts over.
    async fn update<T>(
        &self,
        ids: &[TaskId],
        mut change: impl FnMut(&mut HashMap<TaskId, Live>, &mut Plan, &mut Vec<(TaskId, WireEvent)>) -> T,
    ) -> Result<T> {
        for _ in 0..MAX_CONFLICTS {
            let loaded = self.load(ids).await?;
            let mut revs = HashMap::new();
            let mut live = HashMap::new();
            for (id, (rev, l)) in loaded {
                revs.insert(id, rev);
                live.insert(id, l);
            }
            let mut plan = Plan::default();
            let mut written = Vec::new();
            let out = change(&mut live, &mut plan, &mut written);
            let dirty: Vec<&Live> = live.values().filter(|l| l.dirty).collect();
            if dirty.is_empty() && plan.zadd.is_empty() && plan.zrem.is_empty() {
                return Ok(out);
            }
            for (id, rev) in &revs {
                plan.check.push((task_key(*id), rev.clone()));
            }
            for l in dirty {
                plan.put.push((task_key(l.task.id), record_json(l)?));
            }
            let mut by_task: HashMap<TaskId, Vec<String>> = HashMap::new();
            for (id, ev) in written {
                by_task.entry(id).or_default().push(format!("{} {}", ev.kind.as_str(), ev.data));
            }
            plan.rpush.extend(by_task.into_iter().map(|(id, items)| (events_key(id), items)));
            if self.run(&plan).await? {
                return Ok(out);
            }
        }
        Err(StoreError::Database("too many concurrent changes to the same task; try again".into()))
    }

    async fn update_one<T>(
        &self,
        id: TaskId,
        mut change: impl FnMut(&mut Live, &mut Plan, &mut Vec<(TaskId, WireEvent)>) -> Result<T>,
    ) -> Result<T> {
        self.update(&[id], |live, plan, written| match live.get_mut(&id) {
            Some(l) => change(l, plan, written),
            None => Err(StoreError::NotFound(id)),
        })
        .await?
    }

    async fn load_release(&self, id: i64) -> Result<Option<Release>> {
        let data: Option<String> = self.con().get(format!("{P}release:{id}")).await?;
        let Some(data) = data else { return Ok(None) };
        let mut r: Release = serde_json::from_str(&data).map_err(db_err)?;
        let current: Option<i64> = self.con().hget(format!("{P}current"), current_field(r.env, &r.name)).await?;
        r.current = current == Some(r.id);
        Ok(Some(r))
    }
}

/// The set of releases (`id path`) holding a content in an environment.
fn holders_key(env: Environment, hash: &str) -> String {
    format!("{P}holders:{}:{hash}", env.as_str())
}

/// Where a running attempt's lease key is kept: `attempt hash`.
fn lease_key_key(id: TaskId) -> String {
    format!("{P}lease_key:{id}")
}

/// How long a lease key outlives its claim: longer than any task may run.
const LEASE_KEY_TTL_SECS: u64 = 7 * 24 * 3600;

fn current_field(env: Environment, name: &str) -> String {
    format!("{}/{name}", env.as_str())
}

fn record_json(l: &Live) -> Result<String> {
    let r = Record {
        task: l.task.clone(),
        output_bytes: l.output_bytes,
        output_limit: l.output_limit,
        truncated: l.truncated,
        worker_seq: l.worker_seq,
    };
    serde_json::to_string(&r).map_err(db_err)
}

/// Forwards the other servers' notices until the process ends, resubscribing after Redis
/// comes back. Notices lost while disconnected cost latency only: followers re-read the store
/// and the scheduler ticks on its own.
async fn listen(client: redis::Client, me: String, tx: broadcast::Sender<Notice>) {
    loop {
        if let Ok(mut pubsub) = client.get_async_pubsub().await {
            if pubsub.subscribe(NOTICES).await.is_ok() {
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else { continue };
                    match serde_json::from_str::<Envelope>(&payload) {
                        Ok(env) if env.from != me => {
                            let _ = tx.send(env.notice);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("unreadable notice from another server: {e}"),
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn parse_event(seq: u64, raw: &str) -> Result<WireEvent> {
    let (kind, data) = raw.split_once(' ').ok_or_else(|| db_err("corrupt event"))?;
    let kind = EventKind::parse(kind).ok_or_else(|| db_err(format!("corrupt event kind `{kind}`")))?;
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
        let live =
            Live { task: task.clone(), output_bytes: 0, output_limit, truncated: false, worker_seq: 0, dirty: true };
        let plan = Plan {
            check: vec![(task_key(id), String::new())],
            put: vec![(task_key(id), record_json(&live)?)],
            rpush: vec![(events_key(id), vec![format!("{} {}", event.kind.as_str(), event.data)])],
            zadd: vec![
                (format!("{P}tasks"), id.to_string(), id.to_string()),
                (format!("{P}tasks:name:{}", task.name), id.to_string(), id.to_string()),
                (queue_key(), id.to_string(), id.to_string()),
            ],
            zrem: Vec::new(),
        };
        if !self.run(&plan).await? {
            return Err(db_err(format!("task id {id} was taken twice")));
        }
        Ok((task, event))
    }

    async fn get_task(&self, id: TaskId) -> Result<Task> {
        self.load_tasks(&[id]).await?.pop().ok_or(StoreError::NotFound(id))
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
        let mut offset = 0;
        loop {
            let ids: Vec<TaskId> = self.con().zrange(queue_key(), offset, offset + 63).await?;
            if ids.is_empty() {
                return Ok(None);
            }
            offset += 64;
            for task in self.load_tasks(&ids).await? {
                if task.state != TaskState::Queued || !labels_match(&task.labels, labels) {
                    continue;
                }
                // Another server may claim it first: then the revision check fails and the
                // recomputation sees it running and skips it.
                let claimed = self
                    .update_one(task.id, |l, plan, _| {
                        if l.task.state != TaskState::Queued {
                            return Ok(None);
                        }
                        l.task.state = TaskState::Running;
                        l.task.worker = Some(worker.to_owned());
                        l.dirty = true;
                        plan.zrem.push((queue_key(), l.task.id.to_string()));
                        plan.zadd.push((running_key(), lease_until.0.to_string(), l.task.id.to_string()));
                        Ok(Some(l.task.clone()))
                    })
                    .await?;
                if let Some(task) = claimed {
                    // Written before the worker hears of the claim, so its publish finds it.
                    let value = format!("{} {lease_key}", task.attempt);
                    let _: () = self.con().set_ex(lease_key_key(task.id), value, LEASE_KEY_TTL_SECS).await?;
                    return Ok(Some(task));
                }
            }
        }
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
                    let l = live.get_mut(&op.task).ok_or(StoreError::NotFound(op.task))?;
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
                }
                Ok(res)
            })
            .await?;
        Ok(if events.is_empty() { None } else { Some(events) })
    }

    async fn request_cancel(&self, id: TaskId) -> Result<CancelOutcome> {
        let (effect, task, events) = self
            .update_one(id, |l, plan, written| {
                let effect = apply::cancel(l, Timestamp::now(), written);
                if effect == CancelEffect::EndedQueued {
                    plan.zrem.push((queue_key(), id.to_string()));
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
        })
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
        let id: i64 = self.con().incr(format!("{P}next_release"), 1).await?;
        let release = Release {
            id,
            env: new.env,
            name: new.name,
            version: new.version,
            task_id: new.task_id,
            commit: new.commit,
            requested_by: new.requested_by,
            created_at: Timestamp::now(),
            files: files.len() as u64,
            bytes: files.iter().map(|f| f.size).sum(),
            current: false,
            pruned: false,
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(format!("{P}release:{id}"), serde_json::to_string(&release).map_err(db_err)?)
            .set(format!("{P}release_files:{id}"), serde_json::to_string(files).map_err(db_err)?)
            .zadd(format!("{P}releases:{}", release.name), id, id);
        for f in files {
            pipe.sadd(holders_key(release.env, &f.hash), format!("{id} {}", f.path));
        }
        pipe.query_async::<()>(&mut self.con()).await?;
        Ok(release)
    }

    async fn set_current(&self, release_id: i64) -> Result<Option<Release>> {
        let release = self
            .load_release(release_id)
            .await?
            .ok_or_else(|| db_err(format!("release {release_id} does not exist")))?;
        let previous: Option<i64> = self
            .swap
            .key(format!("{P}current"))
            .arg(current_field(release.env, &release.name))
            .arg(release_id)
            .invoke_async(&mut self.con())
            .await?;
        match previous.filter(|p| *p != release_id) {
            Some(p) => self.load_release(p).await,
            None => Ok(None),
        }
    }

    async fn list_releases(&self, env: Option<Environment>, name: &str) -> Result<Vec<Release>> {
        let ids: Vec<i64> = self.con().zrevrange(format!("{P}releases:{name}"), 0, -1).await?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.load_release(id).await? {
                if env.is_none_or(|e| e == r.env) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    async fn get_release(&self, id: i64) -> Result<Option<Release>> {
        self.load_release(id).await
    }

    async fn release_files(&self, release_id: i64) -> Result<Vec<ManifestFile>> {
        let data: Option<String> = self.con().get(format!("{P}release_files:{release_id}")).await?;
        let mut files: Vec<ManifestFile> = match data {
            Some(d) => serde_json::from_str(&d).map_err(db_err)?,
            None => Vec::new(),
        };
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    async fn find_contents(&self, env: Environment, hashes: &[String]) -> Result<Vec<(String, Release, String)>> {
        let mut out = Vec::new();
        let mut releases: HashMap<i64, Option<Release>> = HashMap::new();
        for chunk in hashes.chunks(500) {
            let mut pipe = redis::pipe();
            for hash in chunk {
                pipe.smembers(holders_key(env, hash));
            }
            let holders: Vec<Vec<String>> = pipe.query_async(&mut self.con()).await?;
            for (hash, members) in chunk.iter().zip(holders) {
                // Newest holder first, as the SQLite backend answers.
                let mut candidates: Vec<(i64, String)> = members
                    .iter()
                    .filter_map(|m| m.split_once(' '))
                    .filter_map(|(id, path)| Some((id.parse::<i64>().ok()?, path.to_owned())))
                    .collect();
                candidates.sort_by(|a, b| b.cmp(a));
                for (id, path) in candidates {
                    if let std::collections::hash_map::Entry::Vacant(slot) = releases.entry(id) {
                        slot.insert(self.load_release(id).await?);
                    }
                    if let Some(Some(r)) = releases.get(&id).filter(|r| r.as_ref().is_some_and(|r| !r.pruned)) {
                        out.push((hash.clone(), r.clone(), path));
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn mark_pruned(&self, ids: &[i64]) -> Result<()> {
        for id in ids {
            if let Some(mut r) = self.load_release(*id).await? {
                // A pruned release holds no content any more.
                let files = self.release_files(*id).await?;
                if !files.is_empty() {
                    let mut pipe = redis::pipe();
                    for f in &files {
                        pipe.srem(holders_key(r.env, &f.hash), format!("{id} {}", f.path));
                    }
                    pipe.query_async::<()>(&mut self.con()).await?;
                }
                r.pruned = true;
                r.current = false;
                let _: () =
                    self.con().set(format!("{P}release:{id}"), serde_json::to_string(&r).map_err(db_err)?).await?;
            }
        }
        Ok(())
    }

    async fn put_worker(&self, worker: &WorkerInfo) -> Result<()> {
        let data = serde_json::to_string(worker).map_err(db_err)?;
        let _: () = self.con().hset(format!("{P}workers"), &worker.name, data).await?;
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        let all: HashMap<String, String> = self.con().hgetall(format!("{P}workers")).await?;
        let mut out: Vec<WorkerInfo> =
            all.values().map(|d| serde_json::from_str(d).map_err(db_err)).collect::<Result<_>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create_worker_token(&self, name: &str, hash: &str) -> Result<WorkerToken> {
        let created = Timestamp::now();
        let record = TokenRecord { hash: hash.to_owned(), created_at: created, revoked_at: None };
        let data = serde_json::to_string(&record).map_err(db_err)?;
        let fresh: bool = self.con().hset_nx(format!("{P}worker_tokens"), name, data).await?;
        if !fresh {
            return Err(StoreError::Conflict(format!("a worker token named `{name}` exists already")));
        }
        let _: () = self.con().hset(format!("{P}worker_token_hash"), hash, name).await?;
        Ok(WorkerToken { name: name.to_owned(), created_at: created, revoked_at: None })
    }

    async fn revoke_worker_token(&self, name: &str) -> Result<bool> {
        let data: Option<String> = self.con().hget(format!("{P}worker_tokens"), name).await?;
        let Some(data) = data else { return Ok(false) };
        let mut record: TokenRecord = serde_json::from_str(&data).map_err(db_err)?;
        if record.revoked_at.is_some() {
            return Ok(false);
        }
        // The hash index goes first: from then on the token authenticates nobody.
        let _: () = self.con().hdel(format!("{P}worker_token_hash"), &record.hash).await?;
        record.revoked_at = Some(Timestamp::now());
        let data = serde_json::to_string(&record).map_err(db_err)?;
        let _: () = self.con().hset(format!("{P}worker_tokens"), name, data).await?;
        Ok(true)
    }

    async fn list_worker_tokens(&self) -> Result<Vec<WorkerToken>> {
        let all: HashMap<String, String> = self.con().hgetall(format!("{P}worker_tokens")).await?;
        let mut out = all
            .into_iter()
            .map(|(name, d)| {
                let r: TokenRecord = serde_json::from_str(&d).map_err(db_err)?;
                Ok(WorkerToken { name, created_at: r.created_at, revoked_at: r.revoked_at })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn worker_token_name(&self, hash: &str) -> Result<Option<String>> {
        Ok(self.con().hget(format!("{P}worker_token_hash"), hash).await?)
    }

    async fn extend_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let kept: i64 =
            self.extend.key(format!("{P}lock:{name}")).arg(holder).arg(ttl_ms).invoke_async(&mut self.con()).await?;
        Ok(kept == 1)
    }

    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let got: i64 =
            self.lock.key(format!("{P}lock:{name}")).arg(holder).arg(ttl_ms).invoke_async(&mut self.con()).await?;
        Ok(got == 1)
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<()> {
        let _: i64 = self.unlock.key(format!("{P}lock:{name}")).arg(holder).invoke_async(&mut self.con()).await?;
        Ok(())
    }

    async fn announce(&self, notice: Notice) -> Result<()> {
        let env = Envelope { from: self.instance.clone(), notice };
        let _: () = self.con().publish(NOTICES, serde_json::to_string(&env).map_err(db_err)?).await?;
        Ok(())
    }

    fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
        Some(self.notices.subscribe())
    }
}
