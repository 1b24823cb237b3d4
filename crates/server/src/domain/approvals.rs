//! Approvals of `prod` publishes: in a project whose rule asks for them, a new `prod` task
//! waits `awaiting_approval` until a maintainer other than its requester (or an admin) approves
//! it, then goes to the queue, or waits `gated` if a freeze window holds it by then. A
//! rejection, or no approval within the project's hours, ends it `cancelled` with the reason.
//! Each decision is written in the task's log and the audit log; the store changes a waiting
//! task once, whichever server or caller is first. Knows no HTTP.

use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::event::EventBody;
use cloudbuild_proto::gate::Approvals;
use cloudbuild_proto::task::{actions, Task, TaskId, TaskState};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::validate::ValidationError;
use cloudbuild_store::{Notice, StoreError};

use super::callers::Caller;
use super::freeze::{self, FreezeError};
use super::policy::{self, PolicyError, ProjectAction};
use crate::state::AppState;

/// How often each server looks for approvals that have expired.
pub const TICK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("task {id} is {state}, not awaiting approval")]
    NotAwaiting { id: TaskId, state: TaskState },
    /// The requester may not approve their own publish (admins may, audited).
    #[error("task {id} was requested by {who}: another maintainer (or an admin) approves it")]
    OwnTask { id: TaskId, who: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Gate(#[from] FreezeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl super::audit::Outcome for ApprovalError {
    fn internal(&self) -> bool {
        match self {
            Self::Store(_) => true,
            Self::Policy(p) => p.internal(),
            Self::Gate(g) => g.internal(),
            _ => false,
        }
    }
}

/// Writes that a new task waits for its approval, and until when.
pub async fn requested(state: &AppState, caller: &Caller, task: &Task, rule: &Approvals) {
    let until = Timestamp(task.created_at.0 + i64::from(rule.expire_hours) * 3_600_000_000);
    let message = format!(
        "a prod publish of {} waits for the approval of a maintainer other than {} (or an admin) until {until}: \
         cloudbuild approve {} / cloudbuild reject {} --reason TEXT",
        task.name, task.requested_by, task.id, task.id
    );
    super::tasks::stage_event(state, task.id, actions::AWAITING_APPROVAL, message).await;
    let target = format!("task {}", task.id);
    super::audit::record(state, caller, "approval.request", target, Some(&task.name), &Ok::<(), ApprovalError>(()))
        .await;
}

/// The task if `caller` may decide on it (those who may publish to its environment) and it
/// still waits.
async fn waiting(state: &AppState, caller: &Caller, id: TaskId) -> Result<Task, ApprovalError> {
    let task = state.store.get_task(id).await?;
    policy::project(state, caller, &task.name, ProjectAction::Publish(task.env), || format!("task {id}")).await?;
    if task.state != TaskState::AwaitingApproval {
        return Err(ApprovalError::NotAwaiting { id, state: task.state });
    }
    Ok(task)
}

/// Approves a waiting task: queued, or `gated` while a freeze window holds it.
pub async fn approve(
    state: &AppState,
    caller: &Caller,
    id: TaskId,
    reason: Option<&str>,
) -> Result<Task, ApprovalError> {
    let result = async {
        let task = waiting(state, caller, id).await?;
        if task.requested_by == caller.name && !caller.is_admin() {
            return Err(ApprovalError::OwnTask { id, who: caller.name.clone() });
        }
        let reason = reason.map(str::trim).filter(|r| !r.is_empty()).map(|r| format!(": {r}")).unwrap_or_default();
        let own = if task.requested_by == caller.name { " (an admin approving their own publish)" } else { "" };
        let hold = freeze::hold_on(state, &task, Timestamp::now()).await?;
        let (to, then) = match &hold {
            Some(h) => (TaskState::Gated, format!("; {}", freeze::describe(h))),
            None => (TaskState::Queued, String::new()),
        };
        let message = format!("approved by {}{own}{reason}{then}", caller.name);
        let body = EventBody::Stage { action: actions::APPROVED.into(), message: message.clone() };
        let Some(events) = state.store.release_held(id, TaskState::AwaitingApproval, to, body).await? else {
            return Err(ApprovalError::NotAwaiting { id, state: state.store.get_task(id).await?.state });
        };
        state.hub.published(id, &events);
        if to == TaskState::Queued {
            state.scheduler.task_queued();
            state.hub.announce(Notice::Queued);
        }
        Ok((state.store.get_task(id).await?, message))
    }
    .await;
    audited(state, caller, "approval.approve", id, &result).await;
    result.map(|(t, _)| t)
}

/// Rejects a waiting task with a reason: it ends `cancelled` and never runs.
pub async fn reject(state: &AppState, caller: &Caller, id: TaskId, reason: &str) -> Result<Task, ApprovalError> {
    let result = async {
        waiting(state, caller, id).await?;
        let reason = cloudbuild_proto::gate::required_reason("a rejection", reason)?;
        let message = format!("rejected by {}: {reason}", caller.name);
        let Some(events) = state.store.end_held(id, TaskState::AwaitingApproval, message.clone()).await? else {
            return Err(ApprovalError::NotAwaiting { id, state: state.store.get_task(id).await?.state });
        };
        state.hub.published(id, &events);
        Ok((state.store.get_task(id).await?, message))
    }
    .await;
    audited(state, caller, "approval.reject", id, &result).await;
    result.map(|(t, _)| t)
}

async fn audited(
    state: &AppState,
    caller: &Caller,
    action: &str,
    id: TaskId,
    result: &Result<(Task, String), ApprovalError>,
) {
    let (project, target) = match result {
        Ok((t, message)) => (Some(t.name.clone()), format!("task {id}: {message}")),
        Err(_) => (None, format!("task {id}")),
    };
    super::audit::record(state, caller, action, target, project.as_deref(), result).await;
}

/// Ends every task whose approval has waited longer than its project allows; how many.
pub async fn expire_due(state: &AppState, now: Timestamp) -> Result<usize, StoreError> {
    let mut expired = 0;
    for task in freeze::all_in_state(state, TaskState::AwaitingApproval).await? {
        let hours = state
            .store
            .get_project(&task.name)
            .await?
            .map_or(Approvals::default().expire_hours, |p| p.approvals.expire_hours);
        if now.0 < task.created_at.0 + i64::from(hours) * 3_600_000_000 {
            continue;
        }
        let reason = format!("nobody approved it within {hours} h: the approval expired");
        if let Some(events) = state.store.end_held(task.id, TaskState::AwaitingApproval, reason.clone()).await? {
            state.hub.published(task.id, &events);
            expired += 1;
            let system = Caller::on_behalf_of("cloudbuild");
            let target = format!("task {}: {reason}", task.id);
            super::audit::record(
                state,
                &system,
                "approval.expire",
                target,
                Some(&task.name),
                &Ok::<(), ApprovalError>(()),
            )
            .await;
        }
    }
    Ok(expired)
}

/// Looks for expired approvals every [`TICK`] until the server stops.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Err(e) = expire_due(&state, Timestamp::now()).await {
            tracing::warn!("looking for expired approvals: {e}");
        }
    }
}
