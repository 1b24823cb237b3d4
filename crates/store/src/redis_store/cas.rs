//! The optimistic transaction: load tasks with their revisions, compute with `crate::apply`,
//! commit with the compare-and-set script; a conflict re-reads and recomputes.

use std::collections::HashMap;

use cloudbuild_proto::event::WireEvent;
use cloudbuild_proto::task::{Task, TaskId};
use serde::{Deserialize, Serialize};

use super::keys::{events_key, task_key};
use super::{db_err, RedisStore};
use crate::apply::Live;
use crate::{Result, StoreError};

/// Attempts of one optimistic transaction before giving up (conflicts need a concurrent
/// writer of the same task; a handful of retries is already unusual).
pub(super) const MAX_CONFLICTS: usize = 64;

/// A task's stored record: the public task and the bookkeeping of `apply::Live`.
#[derive(Serialize, Deserialize)]
pub(super) struct Record {
    task: Task,
    output_bytes: i64,
    output_limit: i64,
    truncated: bool,
    worker_seq: u64,
}

/// What one transaction writes; see `CAS_LUA`.
#[derive(Default, Serialize)]
pub(super) struct Plan {
    pub(super) check: Vec<(String, String)>,
    pub(super) put: Vec<(String, String)>,
    pub(super) rpush: Vec<(String, Vec<String>)>,
    pub(super) zadd: Vec<(String, String, String)>,
    pub(super) zrem: Vec<(String, String)>,
}

pub(super) fn record_json(l: &Live) -> Result<String> {
    let r = Record {
        task: l.task.clone(),
        output_bytes: l.output_bytes,
        output_limit: l.output_limit,
        truncated: l.truncated,
        worker_seq: l.worker_seq,
    };
    serde_json::to_string(&r).map_err(db_err)
}

impl RedisStore {
    /// Loads tasks with their revisions; missing ids are absent from the map.
    pub(super) async fn load(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, (String, Live)>> {
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
            let r = decode(&data).map_err(|e| StoreError::database("decoding a task record", e))?;
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

    pub(super) async fn load_tasks(&self, ids: &[TaskId]) -> Result<Vec<Task>> {
        let mut map = self.load(ids).await?;
        Ok(ids.iter().filter_map(|id| map.remove(id)).map(|(_, l)| l.task).collect())
    }

    pub(super) async fn run(&self, plan: &Plan) -> Result<bool> {
        let json = serde_json::to_string(plan).map_err(db_err)?;
        let applied: i64 = self.cas.arg(json).invoke_async(&mut self.con()).await?;
        Ok(applied == 1)
    }

    /// The optimistic transaction: `change` computes on fresh copies of the tasks, adding
    /// index moves to the plan; changed tasks and their new events are written if no task
    /// changed meanwhile, else it starts over.
    pub(super) async fn update<T>(
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
        Err(StoreError::Contended(ids.first().copied().unwrap_or_default()))
    }

    pub(super) async fn update_one<T>(
        &self,
        id: TaskId,
        mut change: impl FnMut(&mut Live, &mut Plan, &mut Vec<(TaskId, WireEvent)>) -> Result<T>,
    ) -> Result<T> {
        self.update(&[id], |live, plan, written| match live.get_mut(&id) {
            Some(l) => change(l, plan, written),
            None => Err(StoreError::NotFound(crate::Missing::Task(id))),
        })
        .await?
    }
}

/// Reads a task record. One written before webhook triggers named their forge says
/// `"trigger":"webhook"`; its forge is in `requested_by` (`webhook:<forge>`), as migration
/// 0012 reads it for SQLite.
fn decode(data: &str) -> serde_json::Result<Record> {
    if !data.contains(r#""trigger":"webhook""#) {
        return serde_json::from_str(data);
    }
    let mut record: serde_json::Value = serde_json::from_str(data)?;
    if let Some(task) = record.get_mut("task") {
        let by = task["requested_by"].as_str().filter(|b| b.starts_with("webhook:")).map(str::to_owned);
        if let Some(by) = by {
            task["trigger"] = by.into();
        }
    }
    serde_json::from_value(record)
}

#[cfg(test)]
mod tests {
    use cloudbuild_proto::task::Trigger;
    use cloudbuild_proto::webhook::Forge;

    #[test]
    fn a_webhook_task_stored_before_triggers_named_their_forge_is_read_with_its_forge() {
        let new = crate::NewTask {
            name: "site".into(),
            version: String::new(),
            repo: "https://gitlab.com/o/site.git".into(),
            branch: "main".into(),
            commit: None,
            build_cmd: None,
            env: cloudbuild_proto::task::Environment::Test,
            trigger: Trigger::Webhook(Forge::GitLab),
            cause: None,
            force: false,
            requested_by: "webhook:gitlab".into(),
            retry_of: None,
            output_limit: 10,
            labels: Vec::new(),
            no_cache: false,
            changed: None,
            held: None,
        };
        let task = crate::apply::queued_task(3, new, cloudbuild_proto::time::Timestamp(0));
        let record = super::Record { task, output_bytes: 0, output_limit: 10, truncated: false, worker_seq: 0 };
        let now = serde_json::to_string(&record).unwrap();
        let before = now.replace(r#""trigger":"webhook:gitlab""#, r#""trigger":"webhook""#);
        assert_ne!(before, now);
        assert_eq!(super::decode(&before).unwrap().task.trigger, Trigger::Webhook(Forge::GitLab));
        assert_eq!(super::decode(&now).unwrap().task.trigger, Trigger::Webhook(Forge::GitLab));
        let old_socket_io = now.replace(r#""trigger":"webhook:gitlab""#, r#""trigger":"socket_io""#);
        assert_eq!(super::decode(&old_socket_io).unwrap().task.trigger, Trigger::SocketIo);
    }
}
