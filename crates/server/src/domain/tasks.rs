//! Tasks: validation of a request into a stored task, submission, listing, cancel and retry.

use cloudbuild_proto::event::EventBody;
use cloudbuild_proto::task::{actions, CreateTask, Task, TaskId, TaskPage, TaskState, Trigger};
use cloudbuild_proto::validate::{
    is_internal_ip, CommandLine, CommitSha, GitRef, ProjectName, RepoUrl, ValidationError, Version,
};
use cloudbuild_proto::worker::{TaskAttempt, WorkerState};
use cloudbuild_store::{Appended, CancelOutcome, Fence, NewTask, Notice, StoreError, TaskQuery};

use super::callers::Caller;
use super::freeze::{self, Admission, FreezeError, GateRequest};
use super::policy::{self, PolicyError, ProjectAction};
use super::releases::{self, ReleaseError};
use crate::config::Settings;
use crate::state::AppState;
use cloudbuild_proto::user::ProjectRole;

/// Why a task request or a task operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A field failed validation (repo, ref, name, version, command, labels).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The request is well-formed but not acceptable (a reserved trigger, a bad filter).
    #[error("{0}")]
    Refused(String),
    /// The repository's host resolves to a loopback, private or link-local address.
    #[error("invalid repo: host `{host}` resolves to {addr}, a local or private address")]
    InternalHost { host: String, addr: std::net::IpAddr },
    #[error("task {id} already ended as {state}; there is nothing to cancel")]
    AlreadyFinished { id: TaskId, state: TaskState },
    #[error("task {id} is still {state}; cancel it or wait before retrying")]
    NotFinished { id: TaskId, state: TaskState },
    /// A cancel of queued tasks only found this one running.
    #[error("task {id} started meanwhile; it runs on")]
    NotQueued { id: TaskId },
    /// The release could not be published (a `prod` version that exists).
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The project is another repository's, or not registered.
    #[error(transparent)]
    Project(#[from] super::projects::ProjectError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A freeze window holds the environment (refused, or an override not allowed).
    #[error(transparent)]
    Gate(#[from] Box<FreezeError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<FreezeError> for TaskError {
    fn from(e: FreezeError) -> Self {
        TaskError::Gate(Box::new(e))
    }
}

/// Validates a request into a store row. Every field is checked before anything is stored.
pub fn validate(
    settings: &Settings,
    req: &CreateTask,
    caller: &Caller,
    trigger: Trigger,
    retry_of: Option<TaskId>,
) -> Result<NewTask, TaskError> {
    let repo = RepoUrl::parse(req.repo.trim(), &settings.repo_policy)?;
    let branch = GitRef::parse(&req.branch)?;
    let name = ProjectName::parse(&req.name)?;
    let version = Version::parse(&req.version)?;
    let commit = req.commit.as_deref().map(str::trim).map(CommitSha::parse).transpose()?;
    let build_cmd = match req.build_cmd.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => Some(CommandLine::parse(c, "build command", &settings.command_policy)?.to_string()),
        None => None,
    };
    Ok(NewTask {
        name: name.to_string(),
        version: version.to_string(),
        repo: repo.to_string(),
        branch: branch.to_string(),
        commit: commit.map(|c| c.to_string()),
        build_cmd,
        env: req.env,
        trigger,
        cause: None,
        force: req.force,
        requested_by: caller.name.clone(),
        retry_of,
        output_limit: settings.output_bytes,
        labels: cloudbuild_proto::validate::labels(&req.labels)?,
        no_cache: req.no_cache,
        changed: None,
        held: None,
    })
}

/// Refuses a repository whose host name resolves to a loopback, private or link-local address
/// (the literal forms were refused by validation). A name that does not resolve is let through:
/// the clone fails on it anyway. The answer at clone time can differ (DNS rebinding); the
/// worker's network is the boundary for that.
pub async fn check_repo_host(settings: &Settings, repo: &str) -> Result<(), TaskError> {
    if settings.repo_policy.allow_local_hosts {
        return Ok(());
    }
    let Ok(url) = RepoUrl::parse(repo, &settings.repo_policy) else { return Ok(()) };
    let Some(host) = url.host().map(str::to_owned) else { return Ok(()) };
    let lookup = tokio::time::timeout(std::time::Duration::from_secs(3), tokio::net::lookup_host((host.as_str(), 443)));
    if let Ok(Ok(addrs)) = lookup.await {
        if let Some(addr) = addrs.into_iter().find(|a| is_internal_ip(a.ip())) {
            return Err(TaskError::InternalHost { host: host.clone(), addr: addr.ip() });
        }
    }
    Ok(())
}

/// Creates a task from a client's request (REST or socket.io): validated, its repository
/// host checked, and refused before it runs when its `prod` version is already published.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    req: &CreateTask,
    zone: Option<&str>,
) -> Result<Task, TaskError> {
    let result = create_checked(state, caller, req, zone).await;
    let target = result.as_ref().map_or_else(|_| "a new task".to_owned(), |t| format!("task {}", t.id));
    super::audit::record(state, caller, "task.create", target, Some(&req.name), &result).await;
    result
}

async fn create_checked(
    state: &AppState,
    caller: &Caller,
    req: &CreateTask,
    zone: Option<&str>,
) -> Result<Task, TaskError> {
    if !req.trigger.client_may_claim() {
        return Err(TaskError::Refused(format!(
            "trigger `{}` is set by the server itself (a client names `cli` or `api`)",
            req.trigger
        )));
    }
    let new = validate(&state.settings, req, caller, req.trigger, None)?;
    if new.env.pull_request().is_some() {
        return Err(TaskError::Refused(
            "previews are built from pull requests, by the forge's webhook; publish to test or prod".into(),
        ));
    }
    if new.branch.starts_with("refs/") {
        return Err(TaskError::Refused(format!(
            "`{}` is a ref, not a branch: name the branch (or tag) to build",
            new.branch
        )));
    }
    // Before anything else: a caller who may not publish learns nothing about the project.
    let project = super::projects::may_publish(state, caller, &new.name, new.env).await?;
    check_repo_host(&state.settings, &new.repo).await?;
    // Fail fast: a build that could not be published is not started (and registers nothing).
    releases::check_version_free(state, new.env, &new.name, &new.version, new.force).await?;
    super::projects::admit(state, caller, &new.name, &new.repo, project).await?;
    let gate =
        GateRequest { mode: req.gate, override_reason: req.gate_override.clone(), zone: zone.map(str::to_owned) };
    submit(state, caller, new, &gate).await
}

/// Stores a validated task once the freeze windows let it in ([`freeze::admit`]: refused,
/// `gated`, or overridden), announces its first events and wakes the schedulers.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    mut new: NewTask,
    gate: &GateRequest,
) -> Result<Task, TaskError> {
    let admission = freeze::admit(state, caller, &new, gate).await?;
    let project = state.store.get_project(&new.name).await?;
    let approval = project.as_ref().map(|p| p.approvals).filter(|a| a.required(new.env));
    new.held = match (&approval, &admission) {
        (Some(_), _) => Some(TaskState::AwaitingApproval),
        (None, Admission::Gated(_)) => Some(TaskState::Gated),
        _ => None,
    };
    let (task, event) = state.store.create_task(new).await?;
    state.hub.published(task.id, std::slice::from_ref(&event));
    freeze::admitted(state, caller, &task, &admission, approval.is_some()).await;
    if let Some(rule) = approval {
        super::approvals::requested(state, caller, &task, &rule).await;
        return Ok(task);
    }
    if task.state == TaskState::Gated {
        tracing::info!(task = task.id, name = %task.name, "task gated by a freeze window");
        return Ok(task);
    }
    state.scheduler.task_queued();
    state.hub.announce(Notice::Queued);
    tracing::info!(task = task.id, name = %task.name, version = %task.version, "task queued");
    say_if_no_worker_fits(state, &task).await;
    Ok(task)
}

/// A task that no connected worker can take (none is connected, or none has its labels) says
/// so in its log instead of waiting silently; it still starts as soon as a fitting worker
/// connects.
async fn say_if_no_worker_fits(state: &AppState, task: &Task) {
    // The usual case is answered from memory; only then ask the registry (other servers).
    if state.scheduler.any_fits(&task.labels) {
        return;
    }
    let Ok(workers) = state.store.list_workers().await else { return };
    let lease = state.settings.lease_secs as i64 * 1_000_000;
    let now = cloudbuild_proto::time::Timestamp::now();
    let fits = workers
        .iter()
        .filter(|w| w.state == WorkerState::Connected && now.0 - w.last_heartbeat.0 <= lease)
        .any(|w| cloudbuild_store::labels_match(&task.labels, &w.labels));
    if fits {
        return;
    }
    let message = if task.labels.is_empty() {
        "no worker is connected; the task waits until one connects (see `cloudbuild workers`)".to_owned()
    } else {
        format!(
            "no connected worker has the labels {}; the task waits until one connects (see `cloudbuild workers`)",
            task.labels.join(", ")
        )
    };
    let body = EventBody::Stage { action: actions::WAITING.into(), message };
    if let Ok(Appended::Events(events)) = state.store.append_event(task.id, Fence::Server, body).await {
        state.hub.published(task.id, &events);
    }
}

/// Appends a stage event of the server's own to a task's log (`gated`, `approved`, …) and
/// wakes its followers. Best effort: a store failure only costs the event.
pub async fn stage_event(state: &AppState, id: TaskId, action: &str, message: String) {
    let body = EventBody::Stage { action: action.into(), message };
    if let Ok(Appended::Events(events)) = state.store.append_event(id, Fence::Server, body).await {
        state.hub.published(id, &events);
    }
}

/// Adds a line from the server itself to a task's output (`[cloudbuild] note: …`, on stderr):
/// what a client should know about how its request was taken. Best effort: a store failure
/// only costs the note.
pub async fn note(state: &AppState, id: TaskId, note: &str) {
    let text = format!("[cloudbuild] note: {note}\n");
    let body = EventBody::Output { stream: cloudbuild_proto::event::OutputStream::Stderr, text };
    if let Ok(Appended::Events(events)) = state.store.append_event(id, Fence::Server, body).await {
        state.hub.published(id, &events);
    }
}

/// One task by id, if `caller` may do `action` in its project (a task of a project it may not
/// read does not exist).
pub async fn get(state: &AppState, caller: &Caller, id: TaskId, action: ProjectAction) -> Result<Task, TaskError> {
    let task = state.store.get_task(id).await?;
    policy::project(state, caller, &task.name, action, || format!("task {id}")).await?;
    Ok(task)
}

/// A page of the task list: newest first, filtered by project name and state.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub name: Option<String>,
    /// A state's name (`queued`, `running`, …); an unknown one is refused with the valid names.
    pub state: Option<String>,
    /// Only tasks with a lower id (the `next_before` of the previous page).
    pub before: Option<TaskId>,
    /// 1 to 200; 20 when unset.
    pub limit: Option<u32>,
}

/// The most store pages one filtered listing reads (of 200 rows each): a caller who reads few
/// of many projects gets a short page and a cursor rather than a scan of the whole table.
pub const MAX_SCANNED_PAGES: u32 = 50;

/// Lists the tasks of the projects `caller` may read; `next_before` is set when there are more.
pub async fn list(state: &AppState, caller: &Caller, q: ListQuery) -> Result<TaskPage, TaskError> {
    let task_state = match q.state.as_deref() {
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            let names: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
            TaskError::Refused(format!("unknown state `{s}` (one of {})", names.join(", ")))
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(TaskError::Refused("limit must be between 1 and 200".into()));
    }
    let readable = match (policy::readable(state, caller, ProjectRole::Reporter).await?, &q.name) {
        // One project the caller reads: no filter needed.
        (Some(r), Some(name)) if r.contains(name) => None,
        // Nothing the caller may read: nothing to scan for.
        (Some(r), name) if r.is_empty() || name.is_some() => {
            return Ok(TaskPage { tasks: Vec::new(), next_before: None })
        }
        (readable, _) => readable,
    };
    // Filtered pages are read in large steps: most rows may be another team's.
    let step = if readable.is_some() { 200 } else { limit + 1 };
    let mut query = TaskQuery { name: q.name, state: task_state, before: q.before, limit: step };
    let (mut tasks, mut scanned) = (Vec::new(), 0);
    // Pages of the whole list, filtered to what the caller may read, until this page is full
    // or [`MAX_SCANNED_PAGES`] were read (then the page says where to go on from).
    let cut_short = loop {
        let page = state.store.list_tasks(&query).await?;
        let full = page.len() as u32 == query.limit;
        query.before = page.last().map(|t| t.id);
        tasks.extend(page.into_iter().filter(|t| readable.as_ref().is_none_or(|r| r.contains(&t.name))));
        scanned += 1;
        if !full || tasks.len() > limit as usize {
            break false;
        }
        if scanned == MAX_SCANNED_PAGES {
            break true;
        }
    };
    let next_before = if tasks.len() > limit as usize {
        tasks.truncate(limit as usize);
        tasks.last().map(|t| t.id)
    } else if cut_short {
        query.before
    } else {
        None
    };
    Ok(TaskPage { tasks, next_before })
}

/// The result of a cancel request.
#[derive(Debug)]
pub enum Cancelled {
    /// The task is cancelled (it was queued, or it already was).
    Done(Task),
    /// Its worker was told to stop it; the `cancelled` event follows when it has.
    Requested(Task),
}

/// Cancels a task: at once when it is queued, through its worker when it runs.
pub async fn cancel(state: &AppState, caller: &Caller, id: TaskId) -> Result<Cancelled, TaskError> {
    cancel_audited(state, caller, id, false).await
}

/// Cancels a task only while it is queued (a newer push superseding it): one that a worker
/// took meanwhile runs on ([`TaskError::NotQueued`]).
pub async fn cancel_if_queued(state: &AppState, caller: &Caller, id: TaskId) -> Result<Cancelled, TaskError> {
    cancel_audited(state, caller, id, true).await
}

async fn cancel_audited(
    state: &AppState,
    caller: &Caller,
    id: TaskId,
    queued_only: bool,
) -> Result<Cancelled, TaskError> {
    let result = cancel_task(state, caller, id, queued_only).await;
    let project = match &result {
        Ok(Cancelled::Done(t) | Cancelled::Requested(t)) => Some(t.name.clone()),
        Err(_) => None,
    };
    super::audit::record(state, caller, "task.cancel", format!("task {id}"), project.as_deref(), &result).await;
    result
}

async fn cancel_task(state: &AppState, caller: &Caller, id: TaskId, queued_only: bool) -> Result<Cancelled, TaskError> {
    get(state, caller, id, ProjectAction::Cancel).await?;
    Ok(match state.store.request_cancel(id, queued_only).await? {
        CancelOutcome::CancelledQueued(task, events) => {
            state.hub.published(id, &events);
            tracing::info!(task = id, by = %caller.name, "cancelled while queued");
            Cancelled::Done(task)
        }
        CancelOutcome::Requested(task) => {
            let attempt = TaskAttempt { task_id: id, attempt: task.attempt };
            state.scheduler.cancel(task.worker.as_deref(), attempt);
            if let Some(worker) = task.worker.clone().filter(|w| !state.scheduler.is_connected(w)) {
                // Its worker is connected to another server: that one forwards the cancel.
                state.hub.announce(Notice::Cancel { task: id, attempt: task.attempt, worker });
            }
            tracing::info!(task = id, by = %caller.name, "cancel sent to worker");
            Cancelled::Requested(task)
        }
        CancelOutcome::AlreadyCancelled(task) => Cancelled::Done(task),
        CancelOutcome::AlreadyFinished(task) => return Err(TaskError::AlreadyFinished { id, state: task.state }),
        CancelOutcome::NotQueued(_) => return Err(TaskError::NotQueued { id }),
    })
}

/// A new task with the same inputs as an ended one, linked to it. It builds the commit the old
/// task built (or was pinned to), not the branch's head today: a retry must not record another
/// commit under the old version. A task that never resolved its commit (it failed while
/// cloning) is retried from the branch's head; the worker's identity check (the built
/// `package.json` must carry the task's name and version) still holds.
pub async fn retry(state: &AppState, caller: &Caller, id: TaskId) -> Result<Task, TaskError> {
    let result = retry_task(state, caller, id).await;
    let project = result.as_ref().ok().map(|t| t.name.clone());
    super::audit::record(state, caller, "task.retry", format!("task {id}"), project.as_deref(), &result).await;
    result
}

async fn retry_task(state: &AppState, caller: &Caller, id: TaskId) -> Result<Task, TaskError> {
    let old = get(state, caller, id, ProjectAction::Read).await?;
    let project =
        policy::project(state, caller, &old.name, ProjectAction::Publish(old.env), || format!("task {id}")).await?;
    if !old.state.is_terminal() {
        return Err(TaskError::NotFinished { id: old.id, state: old.state });
    }
    // A preview's retry is one update of it: under its lock, so that a push built meanwhile
    // cannot be put under an older head.
    let _preview = match old.env.pull_request() {
        Some(n) => {
            let guard = releases::project_guard(state, old.env, &old.name).await.map_err(TaskError::Release)?;
            super::previews::may_retry(state, &old, n).await?;
            Some(guard)
        }
        None => None,
    };
    let req = CreateTask {
        repo: old.repo,
        branch: old.branch,
        commit: old.commit,
        name: old.name,
        version: old.version,
        build_cmd: old.build_cmd,
        env: old.env,
        trigger: Trigger::Retry,
        force: old.force,
        labels: old.labels,
        no_cache: old.no_cache,
        gate: Default::default(),
        gate_override: None,
    };
    // A webhook's task that ended before its commit's version was read retries the same way.
    let from_commit = req.version.is_empty();
    let req = CreateTask { version: if from_commit { "0.0.0".into() } else { req.version }, ..req };
    // Re-validated against today's policy: a retry must not bypass a tightened configuration.
    let mut new = validate(&state.settings, &req, caller, Trigger::Retry, Some(old.id))?;
    if from_commit {
        new.version = String::new();
    }
    check_repo_host(&state.settings, &new.repo).await?;
    super::projects::admit(state, caller, &new.name, &new.repo, project).await?;
    let task = submit(state, caller, new, &GateRequest::default()).await?;
    if let Some(n) = task.env.pull_request() {
        super::previews::retried(state, &task, n).await?;
    }
    Ok(task)
}
