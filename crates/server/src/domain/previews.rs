//! Pull-request previews: a pull request opened, reopened or updated builds its head into its
//! own environment (`preview/pr-<N>`, published at its own origin or path); closed or merged,
//! its preview is removed; one not updated for the project's `preview_days` is removed by the
//! sweep. Each open preview is recorded in its project's record, and a publish to a preview
//! whose record is gone is refused, so a build finishing after the close cannot bring the site
//! back. Knows no HTTP.

use std::sync::Arc;
use std::time::Duration;

use cloudbuild_proto::preview::{
    ClosedPullRequest, Preview, PreviewList, PreviewView, PullRequest, PullRequestAction, MAX_CLOSED, MAX_OPEN,
};
use cloudbuild_proto::project::Project;
use cloudbuild_proto::task::{CreateTask, Environment, TaskId, Trigger};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::validate::{ProjectName, ValidationError};
use cloudbuild_proto::webhook::{Delivery, Forge};
use cloudbuild_store::StoreError;

use super::callers::Caller;
use super::policy::ProjectAction;
use super::projects::{self, ProjectError};
use super::releases::{self, ReleaseError};
use super::tasks::{self, TaskError};
use crate::state::AppState;

/// How often each server looks for expired previews.
pub const SWEEP: Duration = Duration::from_secs(60);

const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// When a preview updated at `updated_at` expires under the project's current
/// `preview_days` (a changed setting applies to the open previews too).
fn expires_at(updated_at: Timestamp, days: u32) -> Timestamp {
    Timestamp(updated_at.0 + i64::from(days) * DAY_MICROS)
}

/// What a pull request event that neither builds nor removes is answered (a label, an edit).
pub(crate) fn nothing_to_do(number: u32, action: &str) -> String {
    format!("pull request #{number} {action}: nothing to build or remove")
}

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("project {project} has no open preview of pull request #{number}")]
    NotFound { project: String, number: u32 },
    #[error("removing the preview's site failed: {0}")]
    Target(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl super::audit::Outcome for PreviewError {
    fn internal(&self) -> bool {
        match self {
            Self::NotFound { .. } | Self::Invalid(_) => false,
            Self::Project(p) => p.internal(),
            Self::Task(t) => t.internal(),
            Self::Release(r) => r.internal(),
            Self::Target(_) | Self::Store(_) => true,
        }
    }
}

/// What a verified, first-seen pull request event does to its preview; sets the delivery's
/// outcome (`queued`, `deleted`, `ignored`), detail and task.
pub(crate) async fn act(
    state: &AppState,
    forge: Forge,
    project: &Project,
    pr: &PullRequest,
    record: &mut Delivery,
) -> Result<(), PreviewError> {
    let caller = Caller::on_behalf_of(Trigger::Webhook(forge).to_string());
    let n = pr.number;
    let (outcome, detail) = match &pr.action {
        PullRequestAction::Other(what) => ("ignored", nothing_to_do(n, what)),
        PullRequestAction::Close => {
            let why = format!("pull request #{n} was closed");
            match remove(state, &caller, &project.name, n, Removal::Closed { forge_updated_at: forge_time(pr) }).await?
            {
                Removed::Releases(releases) => {
                    let releases = cloudbuild_proto::text::count(releases as u64, "release", "releases");
                    ("deleted", format!("{why}; its preview was removed ({releases})"))
                }
                Removed::Nothing => ("deleted", format!("{why}; it had no preview")),
                Removed::Stale(newer) => (
                    "ignored",
                    format!(
                        "a close of pull request #{n} arriving late: it was updated since ({newer}); its preview stays"
                    ),
                ),
            }
        }
        PullRequestAction::Build => {
            // One update of a pull request at a time, across servers (the preview's release
            // lock): of two in flight, the later forge time is built last and kept.
            let _guard = releases::project_guard(state, Environment::Preview(n), &project.name).await?;
            let Some(project) = &state.store.get_project(&project.name).await? else {
                record.outcome = "ignored".into();
                record.detail = format!("pull request #{n}: the project's registration was deleted");
                return Ok(());
            };
            match refusal(project, pr) {
                Some(why) => ("ignored", why),
                None if let Some(newer) = newer_update(project, pr) => ("ignored", newer),
                None => {
                    let task = build(state, &caller, forge, project, pr, record).await?;
                    record.task = Some(task);
                    let head = pr.head.as_ref().map(|h| h.short()).unwrap_or_default();
                    ("queued", format!("task {task} builds pull request #{n} at {head} for preview/pr-{n}"))
                }
            }
        }
    };
    record.outcome = outcome.into();
    record.detail = detail;
    Ok(())
}

/// Why the project does not build this pull request's preview, if it does not.
fn refusal(project: &Project, pr: &PullRequest) -> Option<String> {
    let n = pr.number;
    if !project.triggers.previews {
        return Some(format!("pull request #{n}: the project builds no previews (triggers.previews is off)"));
    }
    if pr.fork && !project.triggers.fork_previews {
        return Some(format!(
            "pull request #{n} comes from a fork; the project builds no fork previews (triggers.fork_previews is off)"
        ));
    }
    let open = project.preview(n).is_some();
    if !open && project.previews.len() >= MAX_OPEN {
        return Some(format!("pull request #{n}: the project has {MAX_OPEN} open previews, the most it may have"));
    }
    None
}

/// The forge's time of the event, to order it by: none when it sent none, or one more than an
/// hour ahead of this server's clock (which would hold every later event back).
fn forge_time(pr: &PullRequest) -> Option<Timestamp> {
    let ahead = Timestamp(Timestamp::now().0 + 3_600_000_000);
    pr.updated_at.filter(|t| *t <= ahead)
}

/// Why an update is older than the one the preview was last built from, or than the pull
/// request's close (forges do not promise the order of deliveries): its forge time is earlier.
/// An event without a time is not ordered.
fn newer_update(project: &Project, pr: &PullRequest) -> Option<String> {
    let at = forge_time(pr)?;
    if let Some(closed) = project.closed_pull_requests.iter().find(|c| c.number == pr.number) {
        // Strictly before: a reopening in the same second as the close (forges' times are in
        // seconds) is taken as after it.
        if let Some(closed_at) = closed.forge_updated_at.filter(|c| at < *c) {
            return Some(format!(
                "an update of pull request #{} (at {at}) arriving after its close (at {closed_at})",
                pr.number
            ));
        }
    }
    let built = project.preview(pr.number)?;
    let newer = built.forge_updated_at.filter(|b| at < *b)?;
    Some(format!(
        "an older update of pull request #{} arriving late (updated {at}; its preview builds {} of {newer})",
        pr.number,
        &built.head[..built.head.len().min(12)],
    ))
}

/// Queues the build of a pull request's head into its preview, superseding its older queued
/// build, and records the preview (its time to live starts again).
async fn build(
    state: &AppState,
    caller: &Caller,
    forge: Forge,
    project: &Project,
    pr: &PullRequest,
    record: &Delivery,
) -> Result<TaskId, PreviewError> {
    let n = pr.number;
    let env = Environment::Preview(n);
    let head = pr.head.clone().ok_or_else(|| ValidationError {
        field: "head",
        reason: "a pull request to build names its head commit".into(),
    })?;
    let req = CreateTask {
        repo: project.repo.clone(),
        // The base repository keeps the head here, a fork's too: the build never fetches
        // from the fork's repository.
        branch: pr.head_ref.to_string(),
        commit: Some(head.to_string()),
        name: project.name.clone(),
        // Replaced below: the worker reads it from the commit.
        version: "0.0.0".into(),
        build_cmd: None,
        env,
        trigger: Trigger::Preview,
        force: false,
        labels: Vec::new(),
        no_cache: false,
        gate: Default::default(),
        gate_override: None,
    };
    let mut new = tasks::validate(&state.settings, &req, caller, Trigger::Preview, None)?;
    new.version = String::new();
    new.cause = Some(if record.id.is_empty() {
        format!("{} pull request #{n}", forge.as_str())
    } else {
        format!("{} delivery {} (pull request #{n})", forge.as_str(), record.id)
    });
    tasks::check_repo_host(&state.settings, &new.repo).await?;
    if project.triggers.supersede {
        super::hooks::cancel_queued(state, caller, &project.name, pr.head_ref.as_str(), env).await?;
    }
    let task = tasks::submit(state, caller, new, &super::freeze::GateRequest::queue()).await?;
    let from = if pr.fork { " from a fork" } else { "" };
    let by = if pr.author.is_empty() { String::new() } else { format!(" by {}", pr.author) };
    let note =
        format!("preview of pull request #{n} \"{}\"{by}{from} ({} {})", pr.title, pr.source_branch, head.short());
    tasks::note(state, task.id, &note).await;
    let now = Timestamp::now();
    projects::bookkeep(state, &project.name, |p| {
        let earlier = p.preview(n);
        // Two updates built at once: the record keeps the newer build (which wins the site).
        if earlier.is_some_and(|x| x.task.is_some_and(|t| t > task.id)) {
            return false;
        }
        let opened_at = earlier.map_or(now, |x| x.opened_at);
        p.previews.retain(|x| x.number != n);
        p.previews.push(Preview {
            number: n,
            forge,
            title: pr.title.clone(),
            web_url: pr.web_url.clone(),
            source_branch: pr.source_branch.clone(),
            author: pr.author.clone(),
            fork: pr.fork,
            head: head.to_string(),
            forge_updated_at: forge_time(pr),
            task: Some(task.id),
            opened_at,
            updated_at: now,
            expires_at: expires_at(now, project.triggers.preview_days),
        });
        p.previews.sort_by_key(|x| x.number);
        true
    })
    .await?;
    Ok(task.id)
}

/// Why a preview is removed.
#[derive(Debug, Clone, Copy)]
pub enum Removal<'a> {
    /// Its pull request was closed or merged, at this forge time: remembered, so that an update
    /// delivered late does not build it again; ignored when the preview was built from a later
    /// update (a close delivered after a reopen).
    Closed { forge_updated_at: Option<Timestamp> },
    /// The sweep: only if it is still expired at `at` (another server may have removed it, or
    /// an update renewed it, meanwhile).
    Expired { at: Timestamp },
    /// Someone asked (`previews remove`, a project removed or its previews turned off).
    Requested { by: &'a str, why: &'a str },
}

impl Removal<'_> {
    fn describe(&self, project: &Project, number: u32) -> String {
        match self {
            Removal::Closed { .. } => format!("pull request #{number} was closed"),
            Removal::Expired { .. } => {
                let since = project.preview(number).map(|p| p.updated_at);
                let since = since.map(|t| t.to_string()).unwrap_or_else(|| "long ago".into());
                format!("not updated since {since} (triggers.preview_days = {})", project.triggers.preview_days)
            }
            Removal::Requested { by, why } => format!("removed by {by}: {why}"),
        }
    }
}

/// What a removal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// The preview was removed, with this many releases.
    Releases(usize),
    /// There was none to remove (or, for the sweep, none expired any more).
    Nothing,
    /// A close older than the update the preview was built from: nothing was removed.
    Stale(String),
}

/// Removes pull request `number`'s preview of `project`: stops its builds, deletes its site
/// from the target, marks its releases removed (none stays current) and drops its record,
/// under the preview's release lock (a publish of it waits, then finds it closed).
pub async fn remove(
    state: &AppState,
    caller: &Caller,
    project: &str,
    number: u32,
    how: Removal<'_>,
) -> Result<Removed, PreviewError> {
    let env = Environment::Preview(number);
    let mut why = String::new();
    let result = async {
        let name = ProjectName::parse(project)?;
        let guard = releases::project_guard(state, env, project).await?;
        let Some(found) = state.store.get_project(project).await? else { return Ok(Removed::Nothing) };
        why = how.describe(&found, number);
        let record = found.preview(number);
        match (how, record) {
            (Removal::Expired { at }, _)
                if record.is_none_or(|r| expires_at(r.updated_at, found.triggers.preview_days) > at) =>
            {
                return Ok(Removed::Nothing)
            }
            (Removal::Closed { forge_updated_at: Some(closed) }, Some(r))
                if r.forge_updated_at.is_some_and(|built| closed < built) =>
            {
                let built = r.forge_updated_at.map(|t| t.to_string()).unwrap_or_default();
                return Ok(Removed::Stale(format!("updated at {built}")));
            }
            _ => {}
        }
        let had_record = record.is_some();
        stop_builds(state, caller, project, env).await?;
        state.targets.get(env).remove_site(&name).await.map_err(|e| PreviewError::Target(e.to_string()))?;
        let live: Vec<i64> =
            state.store.list_releases(Some(env), project).await?.iter().filter(|r| !r.pruned).map(|r| r.id).collect();
        state.store.mark_pruned(&live).await?;
        projects::bookkeep(state, project, |p| {
            let before = (p.previews.len(), p.closed_pull_requests.len());
            p.previews.retain(|x| x.number != number);
            if let Removal::Closed { forge_updated_at } = how {
                p.closed_pull_requests.retain(|c| c.number != number);
                p.closed_pull_requests.push(ClosedPullRequest {
                    number,
                    forge_updated_at,
                    closed_at: Timestamp::now(),
                });
                p.closed_pull_requests.sort_by_key(|c| std::cmp::Reverse(c.closed_at));
                p.closed_pull_requests.truncate(MAX_CLOSED);
            }
            (p.previews.len(), p.closed_pull_requests.len()) != before || matches!(how, Removal::Closed { .. })
        })
        .await?;
        state.sites.forget_labels(env);
        drop(guard);
        state.targets.forget_lock(env, project);
        Ok(if had_record || !live.is_empty() { Removed::Releases(live.len()) } else { Removed::Nothing })
    }
    .await;
    if matches!(result, Ok(Removed::Releases(_)) | Err(_)) {
        let target = format!("preview {env} of project {project}: {why}");
        super::audit::record(state, caller, "preview.remove", target, Some(project), &result).await;
    }
    result
}

/// Cancels the preview's queued and running builds (every page of the project's).
async fn stop_builds(state: &AppState, caller: &Caller, project: &str, env: Environment) -> Result<(), PreviewError> {
    for task_state in ["gated", "queued", "running"] {
        let mut before = None;
        loop {
            let query = tasks::ListQuery {
                name: Some(project.to_owned()),
                state: Some(task_state.into()),
                before,
                limit: Some(200),
            };
            let page = tasks::list(state, caller, query).await?;
            for t in page.tasks.iter().filter(|t| t.env == env) {
                // It may have ended meanwhile: that is what was wanted.
                let _ = tasks::cancel(state, caller, t.id).await;
            }
            match page.next_before {
                Some(next) => before = Some(next),
                None => break,
            }
        }
    }
    Ok(())
}

/// Refuses the retry of a preview's build unless the preview is open and still at that
/// build's head: a retry of an older head would put it back over the newer one.
pub(crate) async fn may_retry(state: &AppState, task: &cloudbuild_proto::task::Task, n: u32) -> Result<(), TaskError> {
    let project = state.store.get_project(&task.name).await?;
    match project.as_ref().and_then(|p| p.preview(n)) {
        Some(r) if task.commit.as_deref() == Some(r.head.as_str()) => Ok(()),
        Some(r) => Err(TaskError::Refused(format!(
            "pull request #{n} has moved on to {} since task {}: its preview builds that head",
            &r.head[..r.head.len().min(12)],
            task.id
        ))),
        None => Err(TaskError::Refused(format!(
            "pull request #{n} was closed (or its preview removed): its next update builds a preview again"
        ))),
    }
}

/// Records a retry as the preview's newest build.
pub(crate) async fn retried(state: &AppState, task: &cloudbuild_proto::task::Task, n: u32) -> Result<(), StoreError> {
    projects::bookkeep(state, &task.name, |p| match p.previews.iter_mut().find(|x| x.number == n) {
        Some(x) if x.task.is_none_or(|t| t < task.id) && task.commit.as_deref() == Some(x.head.as_str()) => {
            x.task = Some(task.id);
            true
        }
        _ => false,
    })
    .await?;
    Ok(())
}

/// Refuses a publish to a preview that was removed (its pull request closed, its time up)
/// while it built: publishing would bring the site back with no record of it.
pub(crate) async fn ensure_open(state: &AppState, task: &cloudbuild_proto::task::Task) -> Result<(), ReleaseError> {
    match task.env.pull_request() {
        Some(n) if !is_open(state, &task.name, n).await? => Err(ReleaseError::PreviewClosed(n)),
        _ => Ok(()),
    }
}

/// Whether `project` still has pull request `number`'s preview open (a publish to it is
/// refused otherwise).
pub(crate) async fn is_open(state: &AppState, project: &str, number: u32) -> Result<bool, StoreError> {
    Ok(state.store.get_project(project).await?.is_some_and(|p| p.preview(number).is_some()))
}

/// A project's open previews with their sites' URLs (its readers).
pub async fn list(state: &AppState, caller: &Caller, project: &str) -> Result<PreviewList, PreviewError> {
    let found = projects::get(state, caller, project, ProjectAction::Read).await?;
    let name = ProjectName::parse(&found.name)?;
    let mut previews = Vec::new();
    for mut preview in found.previews {
        preview.expires_at = expires_at(preview.updated_at, found.triggers.preview_days);
        let env = Environment::Preview(preview.number);
        let url = state.targets.get(env).urls().site(&name);
        let build = match preview.task {
            Some(id) => state.store.get_task(id).await.ok().map(|t| t.state),
            None => None,
        };
        previews.push(PreviewView { preview, env: env.to_string(), url, build });
    }
    Ok(PreviewList { previews })
}

/// Removes a preview on request (whoever may build previews of the project).
pub async fn remove_now(state: &AppState, caller: &Caller, project: &str, number: u32) -> Result<usize, PreviewError> {
    projects::get(state, caller, project, ProjectAction::Publish(Environment::Preview(number))).await?;
    let how = Removal::Requested { by: &caller.name, why: "previews remove" };
    match remove(state, caller, project, number, how).await? {
        Removed::Releases(n) => Ok(n),
        _ => Err(PreviewError::NotFound { project: project.to_owned(), number }),
    }
}

/// Removes the open previews of `project` that `which` selects (a project removed, or its
/// previews, or its forks' previews, turned off); returns how many.
pub(crate) async fn remove_all(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    why: &str,
    which: impl Fn(&Preview) -> bool,
) -> Result<usize, PreviewError> {
    let mut removed = 0;
    for p in project.previews.iter().filter(|p| which(p)) {
        let how = Removal::Requested { by: &caller.name, why };
        if matches!(remove(state, caller, &project.name, p.number, how).await?, Removed::Releases(_)) {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The sweep: every [`SWEEP`], removes the previews whose time is up.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&state, Timestamp::now()).await {
            tracing::warn!("looking for expired previews: {e}");
        }
    }
}

/// Removes every preview expired at `now`; returns how many this server removed.
pub async fn sweep(state: &AppState, now: Timestamp) -> Result<usize, StoreError> {
    let caller = Caller::on_behalf_of("preview sweep");
    let mut removed = 0;
    for project in state.store.list_projects().await? {
        for p in project.previews.iter().filter(|p| expires_at(p.updated_at, project.triggers.preview_days) <= now) {
            match remove(state, &caller, &project.name, p.number, Removal::Expired { at: now }).await {
                Ok(Removed::Releases(_)) => removed += 1,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(project = %project.name, number = p.number, "removing an expired preview: {e}")
                }
            }
        }
    }
    Ok(removed)
}
