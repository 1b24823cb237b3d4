//! Freeze windows (封网) and the gate they put on releases: windows kept globally (admins) or
//! in a project's record (its maintainers); each new task and each rollback asks [`admit`] or
//! [`check_rollback`], which refuse, queue (`gated`) or let an audited override through; the
//! loop [`run`] queues gated tasks once every window holding them has opened. A gated task is
//! released by whichever server sees it first (the store's change of state happens once), so a
//! restart or a second server neither loses nor doubles it. Knows no HTTP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::event::EventBody;
use cloudbuild_proto::gate::{
    self, holding, render_in_zone, EnvironmentGate, FreezeStatus, FreezeView, FreezeWindow, GateMode, Hold,
    NewFreezeWindow, Release, KINDS, MAX_WINDOWS,
};
use cloudbuild_proto::project::Project;
use cloudbuild_proto::task::{actions, Environment, Task, TaskId, TaskState};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::validate::{ProjectName, ValidationError};
use cloudbuild_store::{NewTask, Notice, StoreError, TaskQuery};

use super::callers::Caller;
use super::policy::{self, PolicyError, ProjectAction};
use super::projects::{self, ProjectError};
use crate::state::AppState;

/// How often each server looks for gated tasks whose windows have opened: a queued release
/// starts at most this late.
pub const TICK: Duration = Duration::from_secs(1);

/// Why a window could not be changed, or a release went through no gate.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("there is no freeze window {id} {scope}")]
    NotFound { id: String, scope: String },
    #[error("{0} has {MAX_WINDOWS} freeze windows, the most it may have; remove one first")]
    TooMany(String),
    /// A window holds the release and it was neither queued nor overridden.
    #[error("{0}")]
    Frozen(String),
    /// An override by a caller whose role no holding window allows.
    #[error("{0}")]
    OverrideDenied(String),
    #[error("task {id} is {state}, not gated: there is nothing to release")]
    NotGated { id: TaskId, state: TaskState },
    #[error("cannot make a window id: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PolicyError> for FreezeError {
    fn from(e: PolicyError) -> Self {
        FreezeError::Project(e.into())
    }
}

impl super::audit::Outcome for FreezeError {
    fn internal(&self) -> bool {
        match self {
            Self::Store(_) | Self::Random(_) => true,
            Self::Project(p) => p.internal(),
            _ => false,
        }
    }
}

/// What a publish asks of the gate: its mode, an override's reason, and the caller's IANA
/// time zone (the `Time-Zone` header, as GitHub's API takes it) for the times it is told.
#[derive(Debug, Clone, Default)]
pub struct GateRequest {
    pub mode: GateMode,
    pub override_reason: Option<String>,
    pub zone: Option<String>,
}

impl GateRequest {
    /// What the server's own builds (webhooks, schedules, previews) ask: to wait for the
    /// window rather than be lost.
    pub fn queue() -> Self {
        GateRequest { mode: GateMode::Queue, ..Default::default() }
    }
}

/// How the gate let a task in.
#[derive(Debug, Clone)]
pub enum Admission {
    /// No window holds it.
    Open,
    /// It waits, `gated`, until the hold ends.
    Gated(Hold),
    /// A caller allowed to override let it through, with this reason.
    Overridden { hold: Hold, reason: String },
}

/// The windows that apply to `project` (or to releases of no registered project): the global
/// ones and the project's own.
async fn windows_for(state: &AppState, project: Option<&Project>) -> Result<Vec<FreezeWindow>, StoreError> {
    let mut all = state.store.list_freeze_windows().await?;
    all.extend(project.into_iter().flat_map(|p| p.freeze.iter().cloned()));
    Ok(all)
}

/// Decides how a new task passes the gate (see [`Admission`]). An override needs a reason and
/// a caller every holding window allows (admins always); without one, `refuse` fails with the
/// windows' reasons and when releases open again, in the caller's zone.
pub async fn admit(
    state: &AppState,
    caller: &Caller,
    new: &NewTask,
    req: &GateRequest,
) -> Result<Admission, FreezeError> {
    let project = state.store.get_project(&new.name).await?;
    let windows = windows_for(state, project.as_ref()).await?;
    let Some(hold) = holding(&windows, new.env, Release::Publish, Timestamp::now()) else {
        return Ok(Admission::Open);
    };
    let decided = decide(caller, project.as_ref(), new.env, Release::Publish, hold, req);
    if decided.is_err() {
        let target = format!("a new task of {} for {}", new.name, new.env);
        super::audit::record(state, caller, "gate.refuse", target, Some(&new.name), &decided).await;
    }
    decided
}

fn decide(
    caller: &Caller,
    project: Option<&Project>,
    env: Environment,
    what: Release,
    hold: Hold,
    req: &GateRequest,
) -> Result<Admission, FreezeError> {
    if let Some(reason) = &req.override_reason {
        let reason = gate::override_reason(reason)?;
        may_override(caller, project, &hold)?;
        return Ok(Admission::Overridden { hold, reason });
    }
    match req.mode {
        GateMode::Queue if what == Release::Publish => Ok(Admission::Gated(hold)),
        _ => Err(FreezeError::Frozen(refusal(env, what, &hold, req.zone.as_deref()))),
    }
}

/// Whether `caller` may override every window of `hold`: admins always; otherwise the
/// caller's role in the project must reach each window's `override_role`.
fn may_override(caller: &Caller, project: Option<&Project>, hold: &Hold) -> Result<(), FreezeError> {
    if caller.is_admin() {
        return Ok(());
    }
    let role = policy::project_role(caller, project);
    for w in &hold.windows {
        match w.override_role {
            Some(needed) if role >= Some(needed) => {}
            Some(needed) => {
                return Err(FreezeError::OverrideDenied(format!(
                    "overriding freeze window {} ({}) needs the {needed} role or admin; {} is not one",
                    w.id,
                    w.scope(),
                    caller.name
                )))
            }
            None => {
                return Err(FreezeError::OverrideDenied(format!(
                    "freeze window {} ({}) may be overridden by admins only; {} is not one",
                    w.id,
                    w.scope(),
                    caller.name
                )))
            }
        }
    }
    Ok(())
}

/// The sentence a refused caller reads: which windows, why, until when (in their zone).
fn refusal(env: Environment, what: Release, hold: &Hold, zone: Option<&str>) -> String {
    let windows: Vec<String> =
        hold.windows.iter().map(|w| format!("window {} ({}): {}", w.id, w.scope(), w.reason)).collect();
    let until = match hold.opens {
        Some(t) => format!("until {} [{t}]", render_in_zone(t, zone)),
        None => "until the window is removed".into(),
    };
    let doing = match what {
        Release::Publish => "publishes",
        Release::Rollback => "rollbacks",
    };
    let hint = match what {
        Release::Publish => "publish with --queue-until-open to wait, or have it overridden with a reason",
        Release::Rollback => "have it overridden with a reason",
    };
    format!("{env} is frozen by {}; {doing} are refused {until}. To go ahead: {hint}.", windows.join("; "))
}

/// Writes what the gate decided into the new task's log and the audit log.
/// `approval`: it awaits an approval first (the windows are looked at again then).
pub async fn admitted(state: &AppState, caller: &Caller, task: &Task, admission: &Admission, approval: bool) {
    let (action, audit_action, message) = match admission {
        Admission::Open => return,
        Admission::Gated(hold) => {
            let until = hold.opens.map_or_else(|| "until the window is removed".into(), |t| format!("until {t}"));
            let then = if approval {
                "once approved, it waits for the window if it still holds"
            } else {
                "it starts by itself then"
            };
            (actions::GATED, "gate.queue", format!("held by {} {until}; {then}", ids(hold)))
        }
        Admission::Overridden { hold, reason } => {
            (actions::GATE_OVERRIDE, "gate.override", format!("{} overridden by {}: {reason}", ids(hold), caller.name))
        }
    };
    super::tasks::stage_event(state, task.id, action, message.clone()).await;
    let target = format!("task {}: {message}", task.id);
    super::audit::record(state, caller, audit_action, target, Some(&task.name), &Ok::<(), FreezeError>(())).await;
}

fn ids(hold: &Hold) -> String {
    let ids: Vec<&str> = hold.windows.iter().map(|w| w.id.as_str()).collect();
    format!("freeze window{} {}", if ids.len() == 1 { "" } else { "s" }, ids.join(", "))
}

/// Refuses to switch an environment a window holds now to a task let in before the window
/// began (a long build), unless the task was overridden for that window.
pub async fn check_commit(state: &AppState, task: &Task) -> Result<(), FreezeError> {
    let Some(hold) = hold_on(state, task, Timestamp::now()).await? else { return Ok(()) };
    let windows: Vec<String> =
        hold.windows.iter().map(|w| format!("window {} ({}): {}", w.id, w.scope(), w.reason)).collect();
    let until = hold.opens.map_or_else(|| "until the window is removed".into(), |t| format!("until {t}"));
    Err(FreezeError::Frozen(format!(
        "{} is frozen by {} {until}; the window began while task {} was building, so it was not published. \
         Run it again once the window opens (cloudbuild retry {}), or have it overridden with a reason",
        task.env,
        windows.join("; "),
        task.id,
        task.id
    )))
}

/// What holds an existing task's publish at `now`: the windows holding its environment, but
/// those the task was overridden for (its log's `gate override` events name them).
pub async fn hold_on(state: &AppState, task: &Task, now: Timestamp) -> Result<Option<Hold>, FreezeError> {
    let record = state.store.get_project(&task.name).await?;
    let windows = windows_for(state, record.as_ref()).await?;
    if holding(&windows, task.env, Release::Publish, now).is_none() {
        return Ok(None);
    }
    // An override is for the windows it names (its message lists their ids), not for a window
    // added afterwards.
    let first = state.store.events_after(task.id, 0, 32).await?;
    let overrides: Vec<String> = first
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
        .filter(|v| v["data"]["action"].as_str() == Some(actions::GATE_OVERRIDE))
        .filter_map(|v| v["data"]["payload"]["message"].as_str().map(str::to_owned))
        .collect();
    let left = windows.iter().filter(|w| !overrides.iter().any(|m| m.contains(&w.id)));
    Ok(holding(left, task.env, Release::Publish, now))
}

/// `freeze window 1a2b3c4d holds it until <time>`, for logs.
pub fn describe(hold: &Hold) -> String {
    let until = hold.opens.map_or_else(|| "until the window is removed".into(), |t| format!("until {t}"));
    format!("{} holds it {until}", ids(hold))
}

/// Refuses a rollback of `env` that a window holding rollbacks forbids, unless overridden;
/// the override is audited. Rollbacks pass windows that do not name them.
pub async fn check_rollback(
    state: &AppState,
    caller: &Caller,
    project: &str,
    env: Environment,
    req: &GateRequest,
) -> Result<(), FreezeError> {
    let record = state.store.get_project(project).await?;
    let windows = windows_for(state, record.as_ref()).await?;
    let Some(hold) = holding(&windows, env, Release::Rollback, Timestamp::now()) else { return Ok(()) };
    let target = format!("rollback of project {project} {env}");
    match decide(caller, record.as_ref(), env, Release::Rollback, hold, req) {
        Ok(Admission::Overridden { hold, reason }) => {
            let target = format!("{target}: {} overridden by {}: {reason}", ids(&hold), caller.name);
            super::audit::record(state, caller, "gate.override", target, Some(project), &Ok::<(), FreezeError>(()))
                .await;
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            let refused = Err::<(), _>(e);
            super::audit::record(state, caller, "gate.refuse", target, Some(project), &refused).await;
            refused
        }
    }
}

/// Releases a gated task now, for a caller allowed to override every window holding it.
pub async fn override_gated(state: &AppState, caller: &Caller, id: TaskId, reason: &str) -> Result<Task, FreezeError> {
    let result = async {
        let task = state.store.get_task(id).await?;
        let project =
            policy::project(state, caller, &task.name, ProjectAction::Publish(task.env), || format!("task {id}"))
                .await?;
        let reason = gate::override_reason(reason)?;
        if task.state != TaskState::Gated {
            return Err(FreezeError::NotGated { id, state: task.state });
        }
        let windows = windows_for(state, project.as_ref()).await?;
        let hold = holding(&windows, task.env, Release::Publish, Timestamp::now());
        if let Some(hold) = &hold {
            may_override(caller, project.as_ref(), hold)?;
        }
        let held = hold.as_ref().map_or_else(|| "the freeze windows".into(), ids);
        let message = format!("{held} overridden by {}: {reason}", caller.name);
        release(state, id, actions::GATE_OVERRIDE, message.clone()).await?;
        Ok((state.store.get_task(id).await?, message))
    }
    .await;
    let (project, target) = match &result {
        Ok((t, message)) => (Some(t.name.clone()), format!("task {id}: {message}")),
        Err(_) => (None, format!("task {id}")),
    };
    super::audit::record(state, caller, "gate.override", target, project.as_deref(), &result).await;
    result.map(|(t, _)| t)
}

/// Queues a gated task with `message` in its log; `NotGated` if another server (or a cancel)
/// was first.
async fn release(state: &AppState, id: TaskId, action: &str, message: String) -> Result<(), FreezeError> {
    let body = EventBody::Stage { action: action.into(), message };
    let Some(events) = state.store.release_held(id, TaskState::Gated, TaskState::Queued, body).await? else {
        let now = state.store.get_task(id).await?;
        return Err(FreezeError::NotGated { id, state: now.state });
    };
    state.hub.published(id, &events);
    state.scheduler.task_queued();
    state.hub.announce(Notice::Queued);
    Ok(())
}

/// Looks for gated tasks whose windows opened every [`TICK`] until the server stops.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Err(e) = release_open(&state, Timestamp::now()).await {
            tracing::warn!("looking for gated tasks to release: {e}");
        }
    }
}

/// Every task in `task_state`, oldest first (page by page of the store's list).
pub async fn all_in_state(state: &AppState, task_state: TaskState) -> Result<Vec<Task>, StoreError> {
    let mut query = TaskQuery { state: Some(task_state), limit: 500, ..Default::default() };
    let mut all = Vec::new();
    loop {
        let page = state.store.list_tasks(&query).await?;
        let full = page.len() == query.limit as usize;
        query.before = page.last().map(|t| t.id);
        all.extend(page);
        if !full {
            all.reverse();
            return Ok(all);
        }
    }
}

/// Holds again each queued task (not yet taken by a worker) that a window begun since it was
/// queued now holds, unless it was overridden for that window; returns how many.
async fn hold_queued(state: &AppState, now: Timestamp) -> Result<usize, FreezeError> {
    let global = state.store.list_freeze_windows().await?;
    let mut held = 0;
    for task in all_in_state(state, TaskState::Queued).await? {
        // Cheap first: most queued tasks are in no held environment.
        let any = global.iter().any(|w| w.covers(task.env, Release::Publish))
            || state
                .store
                .get_project(&task.name)
                .await?
                .is_some_and(|p| p.freeze.iter().any(|w| w.covers(task.env, Release::Publish)));
        if !any {
            continue;
        }
        let Some(hold) = hold_on(state, &task, now).await? else { continue };
        let message =
            format!("{} began before it started: it waits (it was queued at {})", describe(&hold), task.created_at);
        let body = EventBody::Stage { action: actions::GATED.into(), message: message.clone() };
        if let Some(events) = state.store.release_held(task.id, TaskState::Queued, TaskState::Gated, body).await? {
            state.hub.published(task.id, &events);
            held += 1;
            let system = Caller::on_behalf_of("cloudbuild");
            let target = format!("task {}: {message}", task.id);
            super::audit::record(state, &system, "gate.queue", target, Some(&task.name), &Ok::<(), FreezeError>(()))
                .await;
        }
    }
    Ok(held)
}

/// One look of the gate loop: holds queued tasks a window now holds, and queues every gated
/// task that no window holds at `now`; returns how many this server queued.
pub async fn release_open(state: &AppState, now: Timestamp) -> Result<usize, FreezeError> {
    hold_queued(state, now).await?;
    let gated = all_in_state(state, TaskState::Gated).await?;
    if gated.is_empty() {
        return Ok(0);
    }
    let global = state.store.list_freeze_windows().await?;
    let mut records: HashMap<String, Option<Project>> = HashMap::new();
    let mut released = 0;
    // Oldest first: they were queued in that order.
    for task in &gated {
        if !records.contains_key(&task.name) {
            records.insert(task.name.clone(), state.store.get_project(&task.name).await?);
        }
        let own = records[&task.name].iter().flat_map(|p| p.freeze.iter());
        if holding(global.iter().chain(own), task.env, Release::Publish, now).is_some() {
            continue;
        }
        let message = format!("the freeze windows opened; queued at {now}");
        match release(state, task.id, actions::GATE_OPEN, message).await {
            Ok(()) => {
                released += 1;
                let system = Caller::on_behalf_of("cloudbuild");
                let target = format!("task {}: the freeze windows opened", task.id);
                super::audit::record(
                    state,
                    &system,
                    "gate.release",
                    target,
                    Some(&task.name),
                    &Ok::<(), FreezeError>(()),
                )
                .await;
            }
            // Another server, or a cancel, was first.
            Err(FreezeError::NotGated { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(released)
}

/// The windows a caller reads: the global ones and, with `project`, that project's (its readers).
pub async fn list(state: &AppState, caller: &Caller, project: Option<&str>) -> Result<Vec<FreezeView>, FreezeError> {
    let record = match project {
        Some(name) => Some(projects::get(state, caller, name, ProjectAction::Read).await?),
        None => None,
    };
    let now = Timestamp::now();
    Ok(windows_for(state, record.as_ref()).await?.into_iter().map(|w| FreezeView::of(w, now)).collect())
}

/// Adds a window: a global one (admins) or a project's (its maintainers).
pub async fn add(
    state: &AppState,
    caller: &Caller,
    project: Option<&str>,
    new: NewFreezeWindow,
) -> Result<FreezeView, FreezeError> {
    let result = async {
        let id = crate::secrets::random_hex(4).map_err(FreezeError::Random)?;
        let now = Timestamp::now();
        let window = match project {
            None => {
                policy::require_admin(caller, "adding a global freeze window")?;
                let window = new.into_window(id, None, &caller.name, now)?;
                if state.store.list_freeze_windows().await?.len() >= MAX_WINDOWS {
                    return Err(FreezeError::TooMany("the server".into()));
                }
                if !state.store.create_freeze_window(&window).await? {
                    return Err(StoreError::Conflict { what: format!("freeze window {}", window.id) }.into());
                }
                window
            }
            Some(name) => {
                let name = ProjectName::parse(name)?.to_string();
                projects::get(state, caller, &name, ProjectAction::Maintain).await?;
                let window = new.into_window(id, Some(name.clone()), &caller.name, now)?;
                projects::update(state, &name, |p| {
                    if p.freeze.len() >= MAX_WINDOWS {
                        return Err(FreezeError::TooMany(format!("project {}", p.name)));
                    }
                    p.freeze.push(window.clone());
                    Ok(())
                })
                .await?;
                window
            }
        };
        Ok(FreezeView::of(window, now))
    }
    .await;
    let target = match &result {
        Ok(v) => format!("freeze window {}: {}", v.window.id, v.window.reason),
        Err(_) => "a new freeze window".into(),
    };
    super::audit::record(state, caller, "freeze.add", target, project, &result).await;
    result
}

/// Removes a window (who may add it); gated tasks it held are released by the next look.
pub async fn remove(state: &AppState, caller: &Caller, project: Option<&str>, id: &str) -> Result<(), FreezeError> {
    let result = async {
        let scope = project.map_or_else(|| "(global)".to_owned(), |p| format!("in project {p}"));
        let missing = || FreezeError::NotFound { id: id.to_owned(), scope: scope.clone() };
        match project {
            None => {
                policy::require_admin(caller, "removing a global freeze window")?;
                if !state.store.delete_freeze_window(id).await? {
                    return Err(missing());
                }
            }
            Some(name) => {
                projects::get(state, caller, name, ProjectAction::Maintain).await?;
                projects::update(state, name, |p| {
                    let before = p.freeze.len();
                    p.freeze.retain(|w| w.id != id);
                    if p.freeze.len() == before {
                        return Err(missing());
                    }
                    Ok(())
                })
                .await?;
            }
        }
        Ok(())
    }
    .await;
    super::audit::record(state, caller, "freeze.remove", format!("freeze window {id}"), project, &result).await;
    result
}

/// Whether each environment kind is frozen now (for `project`'s windows too, when given),
/// until when, and when the next window begins.
pub async fn status(state: &AppState, caller: &Caller, project: Option<&str>) -> Result<FreezeStatus, FreezeError> {
    let record = match project {
        Some(name) => Some(projects::get(state, caller, name, ProjectAction::Read).await?),
        None => None,
    };
    let windows = windows_for(state, record.as_ref()).await?;
    let now = Timestamp::now();
    let environments = KINDS
        .iter()
        .map(|kind| {
            let env = match *kind {
                "test" => Environment::Test,
                "prod" => Environment::Prod,
                _ => Environment::Preview(1),
            };
            let hold = holding(&windows, env, Release::Publish, now);
            let next_closes = windows
                .iter()
                .filter(|w| w.covers(env, Release::Publish))
                .filter_map(|w| w.next_period(now).map(|p| p.0))
                .min();
            EnvironmentGate {
                environment: (*kind).to_owned(),
                frozen: hold.is_some(),
                opens: hold.as_ref().and_then(|h| h.opens),
                windows: hold.iter().flat_map(|h| h.windows.iter().map(|w| w.id.clone())).collect(),
                reasons: hold.iter().flat_map(|h| h.windows.iter().map(|w| w.reason.clone())).collect(),
                next_closes,
            }
        })
        .collect();
    Ok(FreezeStatus { project: record.map(|p| p.name), environments })
}
