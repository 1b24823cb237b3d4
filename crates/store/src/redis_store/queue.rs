//! Claiming from the Redis queue: the oldest queued task a worker's labels cover, taken by
//! compare-and-set so that of two servers only one claims it.

use cloudbuild_proto::task::{Task, TaskId, TaskState};
use cloudbuild_proto::time::Timestamp;
use redis::AsyncCommands;

use super::keys::{lease_key_key, queue_key, running_key, LEASE_KEY_TTL_SECS};
use super::RedisStore;
use crate::{labels_match, Result};

/// Takes the oldest queued task `worker` may run, with its lease (see `Store::claim_next`).
pub(super) async fn claim_next(
    s: &RedisStore,
    worker: &str,
    labels: &[String],
    lease_until: Timestamp,
    lease_key: &str,
) -> Result<Option<Task>> {
    let mut offset = 0;
    loop {
        let ids: Vec<TaskId> = s.con().zrange(queue_key(), offset, offset + 63).await?;
        if ids.is_empty() {
            return Ok(None);
        }
        offset += 64;
        for task in s.load_tasks(&ids).await? {
            if task.state != TaskState::Queued || !labels_match(&task.labels, labels) {
                continue;
            }
            // Another server may claim it first: then the revision check fails and the
            // recomputation sees it running and skips it.
            let claimed = s
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
                let _: () = s.con().set_ex(lease_key_key(task.id), value, LEASE_KEY_TTL_SECS).await?;
                return Ok(Some(task));
            }
        }
    }
}
