//! The rules of changing a task, shared by every backend: duplicate worker messages, fences,
//! output caps, stage moves and endings, computed on a task held in memory.
//!
//! A backend loads the touched tasks, runs [`apply`] on them and writes back what changed
//! (the SQLite backend in one transaction on its single writer, the Redis backend with one
//! compare-and-set script). Keeping the rules here means both backends refuse, cut and end
//! tasks byte for byte alike, which the conformance story checks.

use cloudbuild_proto::event::{EventBody, WireEvent};
use cloudbuild_proto::task::{Stage, Task, TaskId, TaskState};
use cloudbuild_proto::time::Timestamp;

use cloudbuild_proto::task::actions;

use crate::{final_stage_event, Change, Fence, Finish, NewTask, Result, StoreError, WorkerOp};

/// One change to one task. `seq` is the worker's message number within the attempt (0 for
/// the server's own changes); a worker message with a number already applied is a resend
/// after a broken connection and is skipped.
#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) task: TaskId,
    pub(crate) fence: Fence,
    pub(crate) seq: u64,
    pub(crate) change: Change,
    /// The worker that asks for it (`None` for the server's own changes): it must hold the task.
    pub(crate) worker: Option<String>,
}

impl Op {
    /// A change made by the server itself (cancel, timeout, notes).
    pub(crate) fn server(task: TaskId, fence: Fence, change: Change) -> Self {
        Op { task, fence, seq: 0, change, worker: None }
    }
}

impl From<WorkerOp> for Op {
    fn from(op: WorkerOp) -> Self {
        Op { task: op.task, fence: Fence::Attempt(op.attempt), seq: op.seq, change: op.change, worker: Some(op.worker) }
    }
}

/// A task as a change sees it: the public fields plus the bookkeeping the API does not show.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) task: Task,
    pub(crate) output_bytes: i64,
    pub(crate) output_limit: i64,
    pub(crate) truncated: bool,
    /// The last worker message number applied in this attempt.
    pub(crate) worker_seq: u64,
    /// Whether anything changed (the backend writes the task back).
    pub(crate) dirty: bool,
}

/// The terminal fields a task gets when it ends this way: state, stage, reason, url.
pub(crate) fn finish_fields(
    task: &Task,
    finish: &Finish,
) -> (TaskState, Option<Stage>, Option<String>, Option<String>) {
    let (stage, reason, url) = match finish {
        Finish::Succeeded { url } => (task.stage, None, Some(url.clone())),
        Finish::Failed { stage, reason } => (Some(*stage), Some(reason.clone()), None),
        Finish::Cancelled { stage, reason } | Finish::TimedOut { stage, reason } => {
            (stage.or(task.stage), Some(reason.clone()), None)
        }
        Finish::Error { reason } | Finish::Skipped { reason } => (task.stage, Some(reason.clone()), None),
    };
    (finish.state(), stage, reason, url)
}

/// Refuses changes to a finished task, and worker changes of any attempt but the running one.
pub(crate) fn check_fence(task: &Task, fence: Fence) -> Result<()> {
    if task.state.is_terminal() {
        return Err(StoreError::Terminal(task.id));
    }
    if let Fence::Attempt(given) = fence {
        if task.state != TaskState::Running || given != task.attempt {
            return Err(StoreError::Stale { task: task.id, current: task.attempt, given });
        }
    }
    Ok(())
}

/// Gives the next sequence number to `body` and adds the event to `written`.
pub(crate) fn emit(
    l: &mut Live,
    body: &EventBody,
    now: Timestamp,
    written: &mut Vec<(TaskId, WireEvent)>,
) -> WireEvent {
    l.task.last_seq += 1;
    l.dirty = true;
    let seq = l.task.last_seq;
    let ev = WireEvent { seq, kind: body.kind(), data: body.render(l.task.id, seq, now) };
    written.push((l.task.id, ev.clone()));
    ev
}

/// Ends the task: the final stage event, the terminal fields and the `end` event.
pub(crate) fn end(
    l: &mut Live,
    finish: &Finish,
    now: Timestamp,
    written: &mut Vec<(TaskId, WireEvent)>,
) -> Vec<WireEvent> {
    let first = emit(l, &final_stage_event(finish), now, written);
    let (state, stage, reason, url) = finish_fields(&l.task, finish);
    let end = EventBody::End { state, reason: reason.clone(), url: url.clone() };
    (l.task.state, l.task.stage, l.task.reason, l.task.url) = (state, stage, reason, url);
    l.task.finished_at = Some(now);
    let last = emit(l, &end, now, written);
    vec![first, last]
}

/// Applies one change; the events it wrote (also added to `written`, for the backend to store).
pub(crate) fn apply(
    l: &mut Live,
    op: &Op,
    now: Timestamp,
    written: &mut Vec<(TaskId, WireEvent)>,
) -> Result<Vec<WireEvent>> {
    if let Fence::Attempt(attempt) = op.fence {
        if op.seq > 0 && attempt == l.task.attempt && op.seq <= l.worker_seq {
            return Ok(Vec::new()); // a resend of something already applied
        }
    }
    if let Change::Finish(_) = op.change {
        if l.task.state.is_terminal() {
            return Ok(Vec::new()); // the first ending wins
        }
    }
    check_fence(&l.task, op.fence)?;
    if let Some(worker) = &op.worker {
        // The right attempt from the wrong worker (a stale attempt was refused above).
        if l.task.worker.as_deref() != Some(worker.as_str()) {
            return Err(StoreError::NotHolder { task: l.task.id, worker: worker.clone() });
        }
    }
    let events = match &op.change {
        Change::Finish(finish) => end(l, finish, now, written),
        Change::Commit(sha) => {
            l.task.commit = Some(sha.clone());
            l.dirty = true;
            Vec::new()
        }
        Change::Version(version) => {
            if l.task.version.is_empty() {
                l.task.version = version.clone();
                l.dirty = true;
            }
            Vec::new()
        }
        Change::Cache(report) => {
            l.task.cache = Some(report.clone());
            l.dirty = true;
            Vec::new()
        }
        Change::Append(body @ EventBody::Stage { action, .. }) => {
            if let Some(stage) = Stage::from_action(action) {
                l.task.stage = Some(stage);
                if stage == Stage::Prepare && l.task.started_at.is_none() {
                    l.task.started_at = Some(now);
                }
            }
            vec![emit(l, body, now, written)]
        }
        Change::Append(body @ EventBody::Output { stream, text }) => {
            if l.truncated {
                Vec::new()
            } else {
                let room = usize::try_from((l.output_limit - l.output_bytes).max(0)).unwrap_or(usize::MAX);
                if text.len() <= room {
                    l.output_bytes += text.len() as i64;
                    vec![emit(l, body, now, written)]
                } else {
                    let kept = cut_at_char_boundary(text, room);
                    let mut out = Vec::new();
                    if !kept.is_empty() {
                        out.push(emit(l, &EventBody::Output { stream: *stream, text: kept.to_owned() }, now, written));
                    }
                    l.output_bytes += kept.len() as i64;
                    l.truncated = true;
                    out.push(emit(l, &EventBody::Truncated { limit_bytes: l.output_limit as u64 }, now, written));
                    out
                }
            }
        }
        Change::Append(EventBody::Truncated { .. } | EventBody::End { .. }) => {
            return Err(StoreError::InvalidChange("truncated and end events are written by the store itself"))
        }
    };
    if op.seq > 0 {
        l.worker_seq = op.seq;
        l.dirty = true;
    }
    Ok(events)
}

fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether a worker with `worker_labels` may run a task requiring `required`.
pub fn labels_match(required: &[String], worker_labels: &[String]) -> bool {
    required.iter().all(|r| worker_labels.contains(r))
}

/// What a cancel request does to a task held in memory (the backend writes it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelEffect {
    AlreadyCancelled,
    AlreadyFinished,
    /// Queued: ended now; it leaves the queue.
    EndedQueued,
    /// Running: flagged for its worker.
    Flagged,
    /// Running, and only a queued task was to be cancelled: left alone.
    NotQueued,
}

/// Cancels a queued task at once or flags a running one (unless `queued_only`: a newer push
/// supersedes a build that has not started, never one that runs).
pub(crate) fn cancel(
    l: &mut Live,
    now: Timestamp,
    written: &mut Vec<(TaskId, WireEvent)>,
    queued_only: bool,
) -> CancelEffect {
    match l.task.state {
        TaskState::Cancelled => CancelEffect::AlreadyCancelled,
        s if s.is_terminal() => CancelEffect::AlreadyFinished,
        TaskState::Running if queued_only => CancelEffect::NotQueued,
        waiting @ (TaskState::Queued | TaskState::Gated | TaskState::AwaitingApproval) => {
            let reason = format!("cancelled while {waiting}; it never ran");
            let finish = Finish::Cancelled { stage: None, reason };
            end(l, &finish, now, written);
            l.task.cancel_requested = true;
            CancelEffect::EndedQueued
        }
        _ => {
            l.task.cancel_requested = true;
            l.dirty = true;
            CancelEffect::Flagged
        }
    }
}

/// Moves a waiting task from `from` to `to` (held to queued, queued to gated, awaiting
/// approval to gated), with `body` saying why; false when it is not in `from` or the move is
/// not one of those.
pub(crate) fn release_held(
    l: &mut Live,
    (from, to): (TaskState, TaskState),
    body: &EventBody,
    now: Timestamp,
    written: &mut Vec<(TaskId, WireEvent)>,
) -> bool {
    let waiting = |s: TaskState| s == TaskState::Queued || is_held(s);
    if l.task.state != from || !waiting(from) || !matches!(to, TaskState::Queued | TaskState::Gated) || from == to {
        return false;
    }
    emit(l, body, now, written);
    l.task.state = to;
    true
}

/// Ends a task still in the held state `from` as cancelled with `reason`; false otherwise.
pub(crate) fn end_held(
    l: &mut Live,
    from: TaskState,
    reason: String,
    now: Timestamp,
    written: &mut Vec<(TaskId, WireEvent)>,
) -> bool {
    if l.task.state != from || !is_held(from) {
        return false;
    }
    end(l, &Finish::Cancelled { stage: None, reason }, now, written);
    true
}

/// Whether a task in this state waits apart from the queue (no worker may take it).
pub(crate) fn is_held(state: TaskState) -> bool {
    matches!(state, TaskState::Gated | TaskState::AwaitingApproval)
}

/// What requeueing a lost worker's task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequeueEffect {
    Unchanged,
    Requeued(u32),
    Ended,
}

/// Returns a running task to the queue at attempt + 1, or ends it when out of attempts (or
/// being cancelled). `why` says what happened to the worker.
pub(crate) fn requeue(
    l: &mut Live,
    attempt: u32,
    max_attempts: u32,
    why: &str,
    now: Timestamp,
    written: &mut Vec<(TaskId, WireEvent)>,
) -> RequeueEffect {
    if l.task.state != TaskState::Running || l.task.attempt != attempt {
        return RequeueEffect::Unchanged;
    }
    if attempt >= max_attempts || l.task.cancel_requested {
        let finish = if l.task.cancel_requested {
            Finish::Cancelled { stage: l.task.stage, reason: format!("{why}; the task was being cancelled") }
        } else {
            Finish::Error { reason: format!("worker lost: {why}; gave up after {attempt} attempt(s)") }
        };
        end(l, &finish, now, written);
        return RequeueEffect::Ended;
    }
    let next = attempt + 1;
    let message = format!("{why}; requeued as attempt {next} of {max_attempts}");
    emit(l, &EventBody::Stage { action: actions::REQUEUED.into(), message }, now, written);
    l.task.state = TaskState::Queued;
    l.task.attempt = next;
    l.task.worker = None;
    l.task.stage = None;
    l.worker_seq = 0;
    RequeueEffect::Requeued(next)
}

/// The first event of a new task (`create task`, seq 1).
pub(crate) fn created_event(id: TaskId, new: &NewTask) -> EventBody {
    let retry = new.retry_of.map(|r| format!(" (retry of task {r})")).unwrap_or_default();
    let commit = new.commit.as_deref().map(|c| format!(" at commit {}", &c[..c.len().min(12)])).unwrap_or_default();
    // A webhook's task publishes the version its commit carries, known once it is checked out.
    let version = if new.version.is_empty() { "<the commit's version>" } else { &new.version };
    let message = format!(
        "task {id} created: {}@{} from {} branch {}{commit} for {}{retry}",
        new.name,
        version,
        new.repo,
        new.branch,
        new.env.as_str()
    );
    EventBody::Stage { action: actions::CREATE_TASK.into(), message }
}

/// A new task as stored: queued (or gated), attempt 1, its log holding the `create task` event.
pub(crate) fn queued_task(id: TaskId, new: NewTask, created: Timestamp) -> Task {
    let state = new.held.unwrap_or(TaskState::Queued);
    Task {
        id,
        name: new.name,
        version: new.version,
        repo: new.repo,
        branch: new.branch,
        commit: new.commit,
        build_cmd: new.build_cmd,
        env: new.env,
        trigger: new.trigger,
        cause: new.cause,
        force: new.force,
        requested_by: new.requested_by,
        state,
        stage: None,
        reason: None,
        attempt: 1,
        worker: None,
        retry_of: new.retry_of,
        url: None,
        cancel_requested: false,
        created_at: created,
        started_at: None,
        finished_at: None,
        last_seq: 1,
        labels: new.labels,
        no_cache: new.no_cache,
        cache: None,
        changed: new.changed,
    }
}
