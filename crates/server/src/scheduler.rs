//! The scheduler: matches queued tasks to connected workers, and watches leases and timeouts.
//!
//! Dispatch is push-based: creating a task, a worker joining and a slot freeing all wake the
//! dispatch loop at once (no polling delay). A one-second tick handles what time alone causes:
//! expired leases (requeue with attempt + 1, or fail), tasks past their task timeout on the
//! server's clock (P5: enforced even when the worker is frozen), and cancels a worker did not
//! honour within the kill grace.
//!
//! With several servers on one store, each dispatches to its own connected workers from the
//! shared queue (claims are atomic in the store); a task queued on another server wakes this
//! one through a `Notice::Queued`, and the one-second tick covers a lost notice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudbuild_proto::task::TaskId;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::worker::{Assignment, ServerMessage, TaskAttempt, WorkerInfo};
use cloudbuild_store::{Fence, Finish, Notice, RequeueOutcome};
use tokio::sync::{mpsc, Notify};

use crate::state::AppState;

/// A connected worker as the scheduler sees it.
#[derive(Debug)]
struct WorkerSlotInfo {
    info: WorkerInfo,
    /// The tasks its last heartbeat listed.
    reported: HashSet<TaskAttempt>,
    /// Tasks assigned recently, and when: a heartbeat sent before the assignment arrived
    /// cannot list them yet. What it runs is both sets ([`WorkerSlotInfo::runs`]).
    assigned: HashMap<TaskAttempt, Instant>,
    tx: mpsc::UnboundedSender<ServerMessage>,
    /// When its last heartbeat arrived (this server's clock).
    last_heartbeat: Instant,
}

/// How long an assignment counts as running on its worker before the worker's heartbeats list
/// it: longer than a heartbeat can take to cross an assignment on the wire.
const ASSIGNMENT_IN_FLIGHT: Duration = Duration::from_secs(10);

/// Connected workers and pending server-side deadlines.
#[derive(Debug, Default)]
pub struct Scheduler {
    workers: Mutex<HashMap<String, WorkerSlotInfo>>,
    /// Cancels sent to a worker, and when: forced on the server after the kill grace.
    cancels: Mutex<HashMap<TaskId, Instant>>,
    wake: Notify,
}

impl Scheduler {
    /// Registers a connected worker; dispatch starts at once.
    pub fn join(&self, info: WorkerInfo, tx: mpsc::UnboundedSender<ServerMessage>) {
        let slot = WorkerSlotInfo {
            info,
            reported: HashSet::new(),
            assigned: HashMap::new(),
            tx,
            last_heartbeat: Instant::now(),
        };
        self.lock_workers().insert(slot.info.name.clone(), slot);
        self.wake.notify_one();
    }

    /// A heartbeat arrived: the worker runs exactly `held` (after a reconnect, the tasks it
    /// kept running; after a restart under the same name, none of its previous life's), plus
    /// what was assigned since its previous heartbeat. Returns its registry entry to store.
    pub fn heartbeat(&self, id: &str, held: &[TaskAttempt]) -> Option<WorkerInfo> {
        let mut workers = self.lock_workers();
        let w = workers.get_mut(id)?;
        w.assigned.retain(|t, at| !held.contains(t) && at.elapsed() < ASSIGNMENT_IN_FLIGHT);
        w.reported = held.iter().copied().collect();
        w.last_heartbeat = Instant::now();
        w.info.last_heartbeat = Timestamp::now();
        Some(w.snapshot())
    }

    /// The registry entry of a connected worker.
    pub fn snapshot(&self, id: &str) -> Option<WorkerInfo> {
        self.lock_workers().get(id).map(WorkerSlotInfo::snapshot)
    }

    /// Whether `worker` is connected here and sent a heartbeat within `within`.
    fn heard_from(&self, worker: &str, within: Duration) -> bool {
        self.lock_workers().get(worker).is_some_and(|w| w.last_heartbeat.elapsed() < within)
    }

    /// Whether `worker` is connected here, sent a heartbeat within `within`, and runs `task`
    /// (its last heartbeat listed it, or it was assigned since).
    fn still_runs(&self, worker: &str, task: TaskAttempt, within: Duration) -> bool {
        self.lock_workers().get(worker).is_some_and(|w| w.last_heartbeat.elapsed() < within && w.runs(task))
    }

    /// Says goodbye to the workers that authenticated with a revoked token.
    pub fn revoke(&self, token: &str) {
        for w in self.lock_workers().values().filter(|w| w.info.token == token) {
            let reason = format!("worker token `{token}` was revoked");
            let _ = w.tx.send(ServerMessage::Goodbye { reason });
        }
    }

    /// Forgets a disconnected worker. Its tasks keep their leases until they expire, so a worker
    /// that reconnects in time does not lose them.
    pub fn leave(&self, id: &str) {
        self.lock_workers().remove(id);
    }

    /// A task of this worker finished: its slot is free.
    pub fn slot_freed(&self, worker: &str, task: TaskAttempt) {
        if let Some(w) = self.lock_workers().get_mut(worker) {
            w.reported.remove(&task);
            w.assigned.remove(&task);
        }
        self.cancels.lock().unwrap_or_else(|p| p.into_inner()).remove(&task.task_id);
        self.wake.notify_one();
    }

    /// A task was queued: wake the dispatch loop.
    pub fn task_queued(&self) {
        self.wake.notify_one();
    }

    /// Sends a message to a worker if it is connected; false if it is not.
    pub fn send(&self, worker: &str, msg: ServerMessage) -> bool {
        self.lock_workers().get(worker).is_some_and(|w| w.tx.send(msg).is_ok())
    }

    /// Asks the worker running `task` to stop it, and remembers when, to force it later.
    pub fn cancel(&self, worker: Option<&str>, task: TaskAttempt) {
        self.cancels.lock().unwrap_or_else(|p| p.into_inner()).entry(task.task_id).or_insert_with(Instant::now);
        if let Some(w) = worker {
            self.send(w, ServerMessage::Cancel { task });
        }
    }

    /// Whether a worker with this id is connected.
    pub fn is_connected(&self, id: &str) -> bool {
        self.lock_workers().contains_key(id)
    }

    /// Number of connected workers (for `/healthz` and tests).
    pub fn worker_count(&self) -> usize {
        self.lock_workers().len()
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, WorkerSlotInfo>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a worker connected to this server could ever run a task with these labels.
    pub fn any_fits(&self, labels: &[String]) -> bool {
        self.lock_workers().values().any(|w| cloudbuild_store::labels_match(labels, &w.info.labels))
    }

    /// Workers with a free slot, the freest first, with their labels.
    fn free_workers(&self) -> Vec<(String, Vec<String>)> {
        let workers = self.lock_workers();
        let mut free: Vec<(&String, &WorkerSlotInfo)> =
            workers.iter().filter(|(_, w)| (w.running_count() as u32) < w.info.slots).collect();
        free.sort_by_key(|(_, w)| std::cmp::Reverse(w.info.slots - w.running_count() as u32));
        free.into_iter().map(|(id, w)| (id.clone(), w.info.labels.clone())).collect()
    }
}

impl WorkerSlotInfo {
    fn snapshot(&self) -> WorkerInfo {
        let mut running: Vec<TaskAttempt> = self.running().into_iter().collect();
        running.sort();
        WorkerInfo { running, ..self.info.clone() }
    }

    /// What it runs: what its last heartbeat listed, and what was assigned since.
    fn running(&self) -> HashSet<TaskAttempt> {
        self.reported.iter().chain(self.assigned.keys()).copied().collect()
    }

    /// How many tasks it runs (without building the set: dispatch asks this often).
    fn running_count(&self) -> usize {
        self.reported.len() + self.assigned.keys().filter(|t| !self.reported.contains(t)).count()
    }

    fn runs(&self, task: TaskAttempt) -> bool {
        self.reported.contains(&task) || self.assigned.contains_key(&task)
    }
}

/// Runs the dispatch loop and the watchdog until shutdown.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = state.shutdown.clone();
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = state.scheduler.wake.notified() => dispatch(&state).await,
            _ = tick.tick() => {
                watchdog(&state).await;
                dispatch(&state).await;
                if ticks.is_multiple_of(60) {
                    crate::uploads::sweep(&state).await;
                }
                ticks += 1;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Hands queued tasks to workers with free slots until no free worker can take one.
async fn dispatch(state: &AppState) {
    'next: loop {
        // The freest worker first; a worker whose labels fit no queued task lets the next try.
        for (worker, labels) in state.scheduler.free_workers() {
            let lease_until = Timestamp(Timestamp::now().0 + state.settings.lease_secs as i64 * 1_000_000);
            let lease_key = match LeaseKey::new() {
                Ok(k) => k,
                Err(e) => return tracing::error!("dispatch: no randomness for a lease key: {e}"),
            };
            match state.store.claim_next(&worker, &labels, lease_until, &lease_key.hash).await {
                Ok(Some(task)) => {
                    assign(state, &worker, task, lease_key.secret).await;
                    continue 'next;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!("dispatch: cannot claim a task: {e}");
                    return;
                }
            }
        }
        return;
    }
}

/// The secret a claim hands its worker, and the hash the store keeps of it.
struct LeaseKey {
    secret: String,
    hash: String,
}

impl LeaseKey {
    fn new() -> Result<Self, getrandom::Error> {
        let secret = format!("cbl_{}", crate::secrets::random_hex(32)?);
        Ok(LeaseKey { hash: crate::secrets::lease_key_hash(&secret), secret })
    }
}

/// Sends a claimed task to its worker.
async fn assign(state: &AppState, worker: &str, task: cloudbuild_proto::task::Task, lease_key: String) {
    let attempt = TaskAttempt { task_id: task.id, attempt: task.attempt };
    // A preview builds a pull request's code, not yet reviewed (a fork's, perhaps): it gets
    // none of the project's secrets.
    let secrets = match task.env.pull_request() {
        Some(_) => Ok(Vec::new()),
        None => crate::vault::task_secrets(state, &task.name, task.env).await,
    };
    let secrets = match secrets {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(task = task.id, "cannot read the project's secrets: {e}");
            requeue(state, attempt, &format!("the server cannot read the project's secrets ({e})")).await;
            return;
        }
    };
    let site_under_path = cloudbuild_proto::validate::ProjectName::parse(&task.name)
        .map(|n| state.targets.get(task.env).urls().under_path(&n))
        .unwrap_or(true);
    let checks = cloudbuild_proto::checks::applicable(&state.settings.checks, &task.name, task.env);
    let assignment = Assignment {
        task: attempt,
        name: task.name,
        version: task.version,
        repo: task.repo,
        branch: task.branch,
        commit: task.commit,
        build_cmd: task.build_cmd,
        env: task.env,
        lease_key,
        allowed_protocols: state.settings.repo_policy.allowed_protocols.iter().map(|p| p.to_string()).collect(),
        allow_local_hosts: state.settings.repo_policy.allow_local_hosts,
        runners: state.settings.command_policy.runners.iter().cloned().collect(),
        install_scripts: state.settings.install_scripts.clone(),
        timeouts: state.settings.timeouts.clone(),
        site_under_path,
        secrets,
        cache: cache_use(task.trigger, task.env, task.no_cache),
        checks,
        changed: task.changed,
    };
    let sent = {
        let mut workers = state.scheduler.lock_workers();
        match workers.get_mut(worker) {
            Some(w) if w.tx.send(ServerMessage::Assign { assignment: Box::new(assignment) }).is_ok() => {
                w.assigned.insert(attempt, Instant::now());
                true
            }
            _ => false,
        }
    };
    if sent {
        tracing::debug!(task = task.id, attempt = task.attempt, %worker, "assigned");
    } else {
        // The worker vanished between the pick and the send: hand the task back at once.
        requeue(state, attempt, &format!("worker {worker} disconnected before the task started")).await;
    }
}

/// Which caches a task may use: it reads them unless `--no-cache`; it writes them only when
/// its build is trusted: a publish by an authorised caller (CLI, API, socket.io, a retry of
/// one). A webhook's build (any branch of a push) only reads them, and a pull request's
/// preview, a fork's included, never writes them, retried or not (CVE-2025-36852: cache
/// poisoning by an untrusted build).
pub(crate) fn cache_use(
    trigger: cloudbuild_proto::task::Trigger,
    env: cloudbuild_proto::task::Environment,
    no_cache: bool,
) -> cloudbuild_proto::worker::CacheUse {
    use cloudbuild_proto::task::Trigger;
    let trusted = match trigger {
        Trigger::Cli | Trigger::Api | Trigger::SocketIo | Trigger::Retry => env.pull_request().is_none(),
        Trigger::Webhook(_) | Trigger::Preview | Trigger::Schedule => false,
    };
    cloudbuild_proto::worker::CacheUse { read: !no_cache, write: !no_cache && trusted }
}

async fn requeue(state: &AppState, task: TaskAttempt, why: &str) {
    let result = state.store.requeue(task.task_id, task.attempt, state.settings.max_attempts, why).await;
    if matches!(result, Ok(RequeueOutcome::Requeued { .. } | RequeueOutcome::Failed { .. })) {
        // The lost attempt's staged uploads will never be committed.
        let _ = tokio::fs::remove_dir_all(crate::uploads::staging_dir(state, task.task_id, task.attempt)).await;
    }
    match result {
        Ok(RequeueOutcome::Requeued { events, .. }) => {
            state.hub.published(task.task_id, &events);
            state.scheduler.task_queued();
            state.hub.announce(Notice::Queued);
        }
        Ok(RequeueOutcome::Failed { events }) => state.hub.published(task.task_id, &events),
        Ok(RequeueOutcome::Unchanged) => {}
        Err(e) => tracing::error!(task = task.task_id, "requeue failed: {e}"),
    }
}

/// Applies the deadlines that only the passing of time triggers.
async fn watchdog(state: &AppState) {
    let now = Timestamp::now();
    match state.store.expired_leases(now).await {
        Ok(tasks) => {
            for t in tasks {
                let worker = t.worker.clone().unwrap_or_default();
                let attempt = TaskAttempt { task_id: t.id, attempt: t.attempt };
                // Still heartbeating here and still listing the task: the lease lapsed because
                // the store could not be written for a while (Redis restarting), not because
                // the worker is gone. A worker restarted under the same name does not list its
                // previous life's tasks, so those are requeued.
                if state.scheduler.still_runs(&worker, attempt, Duration::from_secs(state.settings.lease_secs)) {
                    let until = Timestamp(now.0 + state.settings.lease_secs as i64 * 1_000_000);
                    let _ = state.store.extend_lease(t.id, t.attempt, &worker, until).await;
                    continue;
                }
                let lease = Duration::from_secs(state.settings.lease_secs);
                let why = if state.scheduler.heard_from(&worker, lease) {
                    format!("worker {worker} no longer runs attempt {} (it restarted or lost the task)", t.attempt)
                } else {
                    format!("worker {worker} stopped sending heartbeats for {} s", state.settings.lease_secs)
                };
                tracing::warn!(task = t.id, attempt = t.attempt, "{why}");
                requeue(state, attempt, &why).await;
            }
        }
        Err(e) => tracing::error!("watchdog: {e}"),
    }
    let timeouts = &state.settings.timeouts;
    // The worker enforces the task timeout itself; the server allows it the kill grace and a
    // margin for the report to arrive, then ends the task on its own clock.
    let task_deadline = (timeouts.task_secs + timeouts.kill_grace_secs + 5) as i64 * 1_000_000;
    let grace = Duration::from_secs(timeouts.kill_grace_secs + 5);
    let running = match state.store.running_tasks().await {
        Ok(r) => r,
        Err(e) => return tracing::error!("watchdog: {e}"),
    };
    for t in running {
        let attempt = TaskAttempt { task_id: t.id, attempt: t.attempt };
        let overdue = t.started_at.is_some_and(|s| now.0 - s.0 > task_deadline);
        let cancel_since = state.scheduler.cancels.lock().unwrap_or_else(|p| p.into_inner()).get(&t.id).copied();
        let finish = if overdue {
            Some(Finish::TimedOut {
                stage: t.stage,
                reason: format!("task timeout of {} s exceeded (enforced by the server)", timeouts.task_secs),
            })
        } else if t.cancel_requested && cancel_since.is_some_and(|at| at.elapsed() > grace) {
            Some(Finish::Cancelled {
                stage: t.stage,
                reason: "cancelled; the worker did not confirm in time, so the server ended the task".into(),
            })
        } else {
            if t.cancel_requested && cancel_since.is_none() {
                // A cancel from before a restart: ask again.
                state.scheduler.cancel(t.worker.as_deref(), attempt);
            }
            None
        };
        if let Some(finish) = finish {
            state.scheduler.cancel(t.worker.as_deref(), attempt);
            if let Ok(Some(events)) = state.store.finish(t.id, Fence::Server, finish).await {
                state.hub.published(t.id, &events);
            }
            if let Some(w) = &t.worker {
                state.scheduler.slot_freed(w, attempt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cache_use;
    use cloudbuild_proto::task::{Environment, Trigger};
    use cloudbuild_proto::worker::CacheUse;

    #[test]
    fn only_trusted_builds_write_the_caches_and_no_cache_turns_both_off() {
        let test = Environment::Test;
        assert_eq!(cache_use(Trigger::Cli, test, false), CacheUse { read: true, write: true });
        assert_eq!(cache_use(Trigger::Retry, test, false), CacheUse { read: true, write: true });
        assert_eq!(
            cache_use(Trigger::Webhook(cloudbuild_proto::webhook::Forge::GitLab), test, false),
            CacheUse { read: true, write: false }
        );
        assert_eq!(cache_use(Trigger::Api, test, true), CacheUse { read: false, write: false });
        let preview = Environment::Preview(3);
        assert_eq!(cache_use(Trigger::Preview, preview, false), CacheUse { read: true, write: false });
        assert_eq!(
            cache_use(Trigger::Retry, preview, false),
            CacheUse { read: true, write: false },
            "a retried preview is the same unreviewed code"
        );
    }
}
