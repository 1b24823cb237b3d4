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
            let r: Record =
                serde_json::from_str(&data).map_err(|e| StoreError::database("decoding a task record", e))?;
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
