//! Project schedules: adding, listing with the next run, removing, running one now, and the
//! loop that fires what is due. A due time runs once whichever server sees it first: the
//! server that claims it in the project's record (compare-and-set) starts the build; after
//! downtime only the latest missed time runs. Knows no HTTP.

use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::project::Project;
use cloudbuild_proto::schedule::{NewSchedule, Schedule, ScheduleView, MAX_PER_PROJECT};
use cloudbuild_proto::task::{CreateTask, Task, Trigger};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_store::StoreError;

use super::callers::Caller;
use super::policy::ProjectAction;
use super::projects::{self, ProjectError};
use super::tasks::{self, TaskError};
use crate::state::AppState;

/// How often each server looks for due schedules: a run starts at most this late.
pub const TICK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("project {project} has no schedule named {name}")]
    NotFound { project: String, name: String },
    #[error("project {project} has a schedule named {name} already (remove it first)")]
    Exists { project: String, name: String },
    #[error("project {0} has {MAX_PER_PROJECT} schedules, the most a project may have")]
    TooMany(String),
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error(transparent)]
    Task(#[from] TaskError),
}

impl From<StoreError> for ScheduleError {
    fn from(e: StoreError) -> Self {
        ScheduleError::Project(e.into())
    }
}

impl super::audit::Outcome for ScheduleError {
    fn internal(&self) -> bool {
        match self {
            Self::Project(p) => p.internal(),
            Self::Task(t) => t.internal(),
            _ => false,
        }
    }
}

/// A project's schedules with their next runs (its readers).
pub async fn list(state: &AppState, caller: &Caller, project: &str) -> Result<Vec<ScheduleView>, ScheduleError> {
    let project = projects::get(state, caller, project, ProjectAction::Read).await?;
    let now = Timestamp::now();
    Ok(project.schedules.into_iter().map(|s| s.view(now)).collect())
}

/// Adds a schedule (maintainers); it first runs at its first due time after now.
pub async fn add(
    state: &AppState,
    caller: &Caller,
    project: &str,
    new: NewSchedule,
) -> Result<ScheduleView, ScheduleError> {
    let target = format!("schedule {} of project {project}", new.name);
    let result = async {
        let found = projects::get(state, caller, project, ProjectAction::Maintain).await?;
        let schedule =
            new.into_schedule(&found.default_branch, &caller.name, Timestamp::now()).map_err(ProjectError::from)?;
        projects::update(state, project, |p| {
            if p.schedules.iter().any(|s| s.name == schedule.name) {
                return Err(ScheduleError::Exists { project: p.name.clone(), name: schedule.name.clone() });
            }
            if p.schedules.len() >= MAX_PER_PROJECT {
                return Err(ScheduleError::TooMany(p.name.clone()));
            }
            p.schedules.push(schedule.clone());
            Ok(())
        })
        .await?;
        Ok(schedule.view(Timestamp::now()))
    }
    .await;
    super::audit::record(state, caller, "schedule.add", target, Some(project), &result).await;
    result
}

/// Removes a schedule (maintainers); a build it started goes on.
pub async fn remove(state: &AppState, caller: &Caller, project: &str, name: &str) -> Result<(), ScheduleError> {
    let result = async {
        projects::get(state, caller, project, ProjectAction::Maintain).await?;
        projects::update(state, project, |p| {
            let before = p.schedules.len();
            p.schedules.retain(|s| s.name != name);
            if p.schedules.len() == before {
                return Err(ScheduleError::NotFound { project: p.name.clone(), name: name.to_owned() });
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
    .await;
    super::audit::record(
        state,
        caller,
        "schedule.remove",
        format!("schedule {name} of project {project}"),
        Some(project),
        &result,
    )
    .await;
    result
}

/// Starts a schedule's build now, for a caller who may publish to its environment; its due
/// times are not changed.
pub async fn run_now(state: &AppState, caller: &Caller, project: &str, name: &str) -> Result<Task, ScheduleError> {
    let result = async {
        let found = projects::get(state, caller, project, ProjectAction::Read).await?;
        let schedule = find(&found, name)?;
        projects::get(state, caller, project, ProjectAction::Publish(schedule.env)).await?;
        let cause = format!("schedule {name}, run now by {}", caller.name);
        let task = start(state, caller, &found, &schedule, cause).await?;
        remember(state, project, name, None, task.id).await;
        Ok(task)
    }
    .await;
    let target = format!("schedule {name} of project {project}");
    super::audit::record(state, caller, "schedule.run_now", target, Some(project), &result).await;
    result
}

fn find(project: &Project, name: &str) -> Result<Schedule, ScheduleError> {
    project
        .schedules
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| ScheduleError::NotFound { project: project.name.clone(), name: name.to_owned() })
}

/// Queues a schedule's build: the head of its branch, publishing the version that commit's
/// `package.json` carries (the worker reads it, as for a push).
async fn start(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    schedule: &Schedule,
    cause: String,
) -> Result<Task, TaskError> {
    let req = CreateTask {
        repo: project.repo.clone(),
        branch: schedule.branch.clone(),
        commit: None,
        name: project.name.clone(),
        // Replaced below: the worker reads it from the commit.
        version: "0.0.0".into(),
        build_cmd: None,
        env: schedule.env,
        trigger: Trigger::Schedule,
        force: false,
        labels: Vec::new(),
        no_cache: false,
        gate: Default::default(),
        gate_override: None,
    };
    let mut new = tasks::validate(&state.settings, &req, caller, Trigger::Schedule, None)?;
    new.version = String::new();
    new.cause = Some(cause.clone());
    tasks::check_repo_host(&state.settings, &new.repo).await?;
    // One run waits for a freeze window, not one per due time: a newer run supersedes the
    // schedule's older one still gated (or awaiting its approval).
    for waiting in ["gated", "awaiting_approval"] {
        let query = tasks::ListQuery {
            name: Some(project.name.clone()),
            state: Some(waiting.into()),
            before: None,
            limit: Some(200),
        };
        for old in tasks::list(state, caller, query).await?.tasks {
            if old.trigger == Trigger::Schedule && old.branch == new.branch && old.env == new.env {
                let _ = tasks::cancel_if_queued(state, caller, old.id).await;
            }
        }
    }
    let task = tasks::submit(state, caller, new, &super::freeze::GateRequest::queue()).await?;
    tasks::note(state, task.id, &format!("built by {cause}")).await;
    Ok(task)
}

/// Looks for due schedules every [`TICK`] until the server stops.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Err(e) = fire_due(&state, Timestamp::now()).await {
            tracing::warn!("looking for due schedules: {e}");
        }
    }
}

/// Starts the build of every schedule due at `now` whose due time this server claims first;
/// returns how many it started.
pub async fn fire_due(state: &AppState, now: Timestamp) -> Result<usize, ScheduleError> {
    let mut started = 0;
    for project in state.store.list_projects().await? {
        for schedule in &project.schedules {
            let Some(due) = schedule.due(now) else { continue };
            match claim(state, &project.name, &schedule.name, due).await {
                Ok(true) => {}
                Ok(false) => continue,
                // One record too busy to claim in: the other projects' schedules still run.
                Err(e) => {
                    tracing::warn!(project = %project.name, schedule = %schedule.name, "claiming a due time: {e}");
                    continue;
                }
            }
            let caller = Caller::on_behalf_of(format!("schedule:{}/{}", project.name, schedule.name));
            let when = schedule.cron().ok().and_then(|c| c.render_local(due)).unwrap_or_else(|| due.to_string());
            let cause = format!("schedule {} ({} in {}), due {when}", schedule.name, schedule.cron, schedule.timezone);
            let result = start(state, &caller, &project, schedule, cause).await;
            let target = format!("schedule {} of project {}", schedule.name, project.name);
            super::audit::record(state, &caller, "schedule.run", target, Some(&project.name), &result).await;
            match result {
                Ok(task) => {
                    started += 1;
                    remember(state, &project.name, &schedule.name, Some(due), task.id).await;
                }
                // A run that cannot start (the repository's host refused, say) is not retried
                // until its next due time; the audit log says why.
                Err(e) => {
                    tracing::warn!(project = %project.name, schedule = %schedule.name, "schedule not started: {e}")
                }
            }
        }
    }
    Ok(started)
}

/// Changes the schedule `name` of `project` in its record ([`projects::bookkeep`]): `change`
/// says whether it changed it. True when the change was written.
async fn bookkeep(
    state: &AppState,
    project: &str,
    name: &str,
    mut change: impl FnMut(&mut Schedule) -> bool,
) -> Result<bool, StoreError> {
    projects::bookkeep(state, project, |p| p.schedules.iter_mut().find(|s| s.name == name).is_some_and(&mut change))
        .await
}

/// Claims `due` for the schedule: true for the one server (and the one look) that moved its
/// last due time there.
async fn claim(state: &AppState, project: &str, name: &str, due: Timestamp) -> Result<bool, StoreError> {
    bookkeep(state, project, name, |s| {
        let newer = s.last_due.is_none_or(|last| last < due);
        if newer {
            s.last_due = Some(due);
        }
        newer
    })
    .await
}

/// Notes the schedule's last task (shown with it): the one a claimed due time started (while
/// the schedule is still at that due time), or one run now (`due` none). Best effort.
async fn remember(state: &AppState, project: &str, name: &str, due: Option<Timestamp>, task: i64) {
    let noted = bookkeep(state, project, name, |s| {
        let ours = due.is_none() || s.last_due == due;
        if ours {
            s.last_task = Some(task);
        }
        ours
    })
    .await;
    if let Err(e) = noted {
        tracing::warn!(project, schedule = name, task, "cannot note the schedule's last task: {e}");
    }
}
