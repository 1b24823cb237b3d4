//! The dashboard's pages: projects (each with its last build), a project (its releases with
//! rollback, builds, members), a build (header, stages, log) and the forms of their buttons.
//! What a viewer sees and may press is `domain::policy`'s, as in the API.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use cloudbuild_proto::task::{Environment, Task, TaskId};
use cloudbuild_proto::user::ProjectRole;
use serde::Deserialize;

use super::format::{duration, when, TaskRow};
use super::i18n::Lang;
use super::log::Resume;
use super::session::{path_segment, url_encode, Checked, Viewer, WithCsrf};
use super::{html, Chrome, CsrfForm};
use crate::api::error::ApiError;
use crate::api::extract::TaskIdParam;
use crate::domain::policy::{self, ProjectAction};
use crate::domain::{projects, releases, tasks};
use crate::state::AppState;

/// How many lines of a finished log the build page renders (the tail; the raw log has all).
pub const PAGE_LINES: u64 = 2_000;

/// A domain refusal or failure as a page answer, with the API's status and message (404 for
/// what the viewer may not read, 403 for what its role does not allow; a failure of the
/// server's own only as such): `api/error.rs` is the one mapping of domain errors.
pub(crate) fn refused(e: impl Into<ApiError>) -> Response {
    let e = e.into();
    (e.status, e.message).into_response()
}

/// A project name in a URL path (a scoped name's `/` encoded).
pub(crate) fn path_of(name: &str) -> String {
    path_segment(name)
}

struct ProjectRow {
    name: String,
    path: String,
    last: Option<TaskRow>,
}

#[derive(Template)]
#[template(path = "projects.html")]
struct ProjectsPage {
    lang: Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    q: String,
    rows: Vec<ProjectRow>,
}

#[derive(Deserialize)]
pub struct ProjectsQuery {
    q: Option<String>,
}

/// `GET /projects?q=`: the projects the viewer may read, each with its last build.
pub async fn projects(
    State(state): State<Arc<AppState>>,
    lang: Lang,
    viewer: Viewer,
    Query(query): Query<ProjectsQuery>,
) -> Response {
    let q = query.q.unwrap_or_default();
    let all = match projects::list(&state, &viewer.caller).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let mut rows = Vec::new();
    for p in all.into_iter().filter(|p| p.name.contains(q.trim())) {
        let last = tasks::list(
            &state,
            &viewer.caller,
            tasks::ListQuery { name: Some(p.name.clone()), limit: Some(1), ..Default::default() },
        )
        .await
        .ok()
        .and_then(|page| page.tasks.first().map(|t| TaskRow::of(&lang, t)));
        rows.push(ProjectRow { path: path_of(&p.name), name: p.name, last });
    }
    let Chrome { lang, who, signed_in, csrf, admin } = Chrome::of(lang, Some(&viewer));
    html(ProjectsPage { lang, who, signed_in, csrf, admin, q, rows }.render())
}

struct ReleaseRow {
    env: String,
    version: String,
    task: TaskId,
    who: String,
    when: String,
    current: bool,
    pruned: bool,
}

#[derive(Template)]
#[template(path = "project.html")]
struct ProjectPage {
    lang: Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    name: String,
    path: String,
    repo: String,
    default_branch: String,
    releases: Vec<ReleaseRow>,
    builds: Vec<TaskRow>,
    /// `(user, role, the user's name in a URL path)`.
    members: Vec<(String, String, String)>,
    internal: bool,
    can_rollback: bool,
    /// Whether the caller may edit members and settings (maintainers).
    can_manage: bool,
    filter: BuildFilter,
    /// The query of the next page of builds, if there are more.
    older_query: Option<String>,
    schedules: Vec<ScheduleRow>,
    previews: Vec<PreviewRow>,
    /// The newest webhook deliveries and commit statuses.
    deliveries: Vec<DeliveryRow>,
}

/// A schedule on the project page: its next run in its own zone.
struct ScheduleRow {
    name: String,
    cron: String,
    timezone: String,
    branch: String,
    env: String,
    next_run: String,
    last_task: Option<i64>,
}

/// An open pull request's preview on the project page.
struct PreviewRow {
    number: u32,
    title: String,
    /// The pull request's page on the forge (`http(s)` only; empty when unknown).
    web_url: String,
    url: String,
    source: String,
    fork: bool,
    task: Option<i64>,
    expires: String,
}

/// A delivery on the project page.
struct DeliveryRow {
    when: String,
    forge: String,
    event: String,
    reference: String,
    outcome: String,
    detail: String,
    task: Option<i64>,
}

/// `GET /projects/{name}`: releases per environment (rollback for maintainers), builds,
/// members.
pub async fn project(
    State(state): State<Arc<AppState>>,
    lang: Lang,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(f): Query<BuildFilter>,
) -> Response {
    let p = match projects::get(&state, &viewer.caller, &name, ProjectAction::Read).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let role = policy::project_role(&viewer.caller, Some(&p));
    let list = releases::list(&state, &viewer.caller, &p.name, None).await.unwrap_or_default();
    let releases = list
        .into_iter()
        // A removed preview's releases are history only its builds need show.
        .filter(|r| !(r.pruned && r.env.pull_request().is_some()))
        .map(|r| ReleaseRow {
            env: r.env.to_string(),
            version: r.version,
            task: r.task_id,
            who: r.requested_by,
            when: when(&lang, r.created_at),
            current: r.current,
            pruned: r.pruned,
        })
        .collect();
    let (builds, older) = match filtered_builds(&state, &viewer, &p.name, &f).await {
        Ok((tasks, older)) => (tasks.iter().map(|t| TaskRow::of(&lang, t)).collect(), older),
        Err(e) => return refused(e),
    };
    let members = p.members.iter().map(|m| (m.user.clone(), m.role.to_string(), path_segment(&m.user))).collect();
    let maintainer = role >= Some(ProjectRole::Maintainer);
    let now = cloudbuild_proto::time::Timestamp::now();
    let schedules = p
        .schedules
        .iter()
        .cloned()
        .map(|s| {
            let view = s.view(now);
            ScheduleRow {
                next_run: view.next_run_local.unwrap_or_else(|| "-".into()),
                name: view.schedule.name,
                cron: view.schedule.cron,
                timezone: view.schedule.timezone,
                branch: view.schedule.branch,
                env: view.schedule.env.to_string(),
                last_task: view.schedule.last_task,
            }
        })
        .collect();
    let previews = crate::domain::previews::list(&state, &viewer.caller, &p.name)
        .await
        .map(|l| l.previews)
        .unwrap_or_default()
        .into_iter()
        .map(|v| PreviewRow {
            number: v.preview.number,
            title: v.preview.title,
            web_url: v.preview.web_url,
            url: v.url,
            source: format!("{} {}", v.preview.source_branch, v.preview.head.get(..12).unwrap_or_default()),
            fork: v.preview.fork,
            task: v.preview.task,
            expires: when(&lang, v.preview.expires_at),
        })
        .collect();
    let deliveries = crate::domain::hooks::deliveries(&state, &viewer.caller, &p.name)
        .await
        .unwrap_or_default()
        .into_iter()
        .take(10)
        .map(|d| DeliveryRow {
            when: when(&lang, d.received_at),
            forge: d.forge,
            event: d.event,
            reference: d.reference.unwrap_or_default(),
            outcome: d.outcome,
            detail: d.detail,
            task: d.task,
        })
        .collect();
    let Chrome { lang, who, signed_in, csrf, admin } = Chrome::of(lang, Some(&viewer));
    let page = ProjectPage {
        lang,
        who,
        signed_in,
        csrf,
        admin,
        path: path_of(&p.name),
        name: p.name,
        repo: p.repo,
        default_branch: p.default_branch,
        releases,
        builds,
        members,
        internal: p.visibility == cloudbuild_proto::project::Visibility::Internal,
        can_rollback: maintainer,
        can_manage: maintainer,
        older_query: older.map(|before| format!("{}&before={before}", f.query())),
        filter: f,
        schedules,
        previews,
        deliveries,
    };
    html(page.render())
}

/// The build filters of a project page (`?state=&branch=&env=&trigger=&who=&before=`).
#[derive(Debug, Default, Deserialize)]
pub struct BuildFilter {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub branch: String,
    #[serde(default)]
    pub env: String,
    #[serde(default)]
    pub trigger: String,
    #[serde(default)]
    pub who: String,
    pub before: Option<TaskId>,
}

impl BuildFilter {
    fn keeps(&self, t: &Task) -> bool {
        let is = |want: &str, have: &str| want.is_empty() || want == have;
        is(&self.branch, &t.branch)
            // `preview` keeps every pull request's (`preview/pr-12`, …).
            && (is(&self.env, &t.env.as_str()) || self.env == t.env.kind())
            // `webhook` keeps every forge's (`webhook:github`, …).
            && (is(&self.trigger, t.trigger.as_str())
                || t.trigger.as_str().strip_prefix(self.trigger.as_str()).is_some_and(|rest| rest.starts_with(':')))
            && is(&self.who, &t.requested_by)
    }

    /// The filters as a URL query (without `before`).
    fn query(&self) -> String {
        [
            ("state", &self.state),
            ("branch", &self.branch),
            ("env", &self.env),
            ("trigger", &self.trigger),
            ("who", &self.who),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// How many builds a project page lists.
const BUILDS_PER_PAGE: usize = 50;

/// A page of the project's builds that pass the filter (the state by the store's query, the
/// rest here, over at most 10 pages of 200), and where the next page starts.
async fn filtered_builds(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
    f: &BuildFilter,
) -> Result<(Vec<Task>, Option<TaskId>), tasks::TaskError> {
    let (mut kept, mut before) = (Vec::new(), f.before);
    for _ in 0..10 {
        let query = tasks::ListQuery {
            name: Some(name.to_owned()),
            state: Some(f.state.clone()).filter(|s| !s.is_empty()),
            before,
            limit: Some(200),
        };
        let page = tasks::list(state, &viewer.caller, query).await?;
        for t in page.tasks {
            before = Some(t.id);
            if f.keeps(&t) {
                kept.push(t);
                if kept.len() == BUILDS_PER_PAGE {
                    return Ok((kept, before));
                }
            }
        }
        if page.next_before.is_none() {
            return Ok((kept, None));
        }
    }
    Ok((kept, before))
}

#[derive(Deserialize)]
pub struct RollbackForm {
    csrf: String,
    env: Environment,
    /// The build to switch to (its task; the page's buttons say it): one version may have
    /// several builds. Or a version (its latest build).
    #[serde(default)]
    task: Option<TaskId>,
    #[serde(default)]
    to: Option<String>,
}

impl WithCsrf for RollbackForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /projects/{name}/rollback`: switches an environment to a version (maintainers).
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Checked(viewer, form): Checked<RollbackForm>,
) -> Response {
    let req = cloudbuild_proto::release::RollbackRequest {
        name: name.clone(),
        env: form.env,
        to: form.to,
        task: form.task,
        gate_override: None,
    };
    match releases::rollback(&state, &viewer.caller, &req, None).await {
        Ok(_) => Redirect::to(&format!("/projects/{}", path_of(&name))).into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage {
    lang: Lang,
    who: Option<String>,
    signed_in: bool,
    csrf: String,
    admin: bool,
    id: TaskId,
    title: String,
    row: TaskRow,
    project_path: String,
    commit: String,
    /// What caused it beyond its trigger (a forge's delivery).
    cause: Option<String>,
    attempt: u32,
    worker: String,
    site: Option<String>,
    can_cancel: bool,
    can_retry: bool,
    /// It awaits approval and the viewer may give it (another maintainer, or an admin).
    can_decide: bool,
    /// `(stage, duration or state, class)`.
    stages: Vec<(String, String, &'static str)>,
    live: bool,
    log_html: String,
    earlier: u64,
    /// Where the page of earlier lines starts; the later lines' count and start.
    earlier_from: u64,
    later: u64,
    later_from: u64,
    /// Where the live stream starts (the open line).
    resume: Resume,
}

#[derive(Deserialize)]
pub struct TaskQuery {
    /// Show the log from this line (a page of [`PAGE_LINES`]) instead of its tail.
    from: Option<u64>,
}

/// `GET /tasks/{id}?from=N`: the build's header, stages and log (its tail, live while it runs;
/// or the page of lines from `N`, with links to the pages before and after).
pub async fn task(
    State(state): State<Arc<AppState>>,
    lang: Lang,
    viewer: Viewer,
    TaskIdParam(id): TaskIdParam,
    Query(q): Query<TaskQuery>,
) -> Response {
    let t = match tasks::get(&state, &viewer.caller, id, ProjectAction::Read).await {
        Ok(t) => t,
        Err(e) => return refused(e),
    };
    let project = state.store.get_project(&t.name).await.ok().flatten();
    let role = policy::project_role(&viewer.caller, project.as_ref());
    let rendered = match super::live::render_all(&state, &t, PAGE_LINES, q.from).await {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    // A page of earlier lines is not followed live; the tail is, while the build runs.
    let live = !t.state.is_terminal() && rendered.later_lines == 0;
    let publish_role = ProjectAction::Publish(t.env).needs();
    let Chrome { lang, who, signed_in, csrf, admin } = Chrome::of(lang, Some(&viewer));
    let page = TaskPage {
        id,
        title: lang.t1("build-title", "id", id),
        row: TaskRow::of(&lang, &t),
        project_path: path_of(&t.name),
        commit: t.commit.clone().unwrap_or_else(|| "–".into()),
        cause: t.cause.clone(),
        attempt: t.attempt,
        worker: t.worker.clone().unwrap_or_else(|| "–".into()),
        site: t.url.clone(),
        can_cancel: live && role >= Some(ProjectAction::Cancel.needs()),
        can_retry: !live && role >= Some(publish_role),
        can_decide: t.state == cloudbuild_proto::task::TaskState::AwaitingApproval
            && role >= Some(publish_role)
            && (t.requested_by != viewer.caller.name || viewer.caller.is_admin()),
        stages: stages(&lang, &t, &rendered.stages),
        live,
        earlier: rendered.skipped_lines,
        earlier_from: rendered.skipped_lines.saturating_sub(PAGE_LINES) + 1,
        later: rendered.later_lines,
        later_from: rendered.skipped_lines + PAGE_LINES + 1,
        resume: rendered.resume,
        log_html: rendered.html,
        lang,
        who,
        signed_in,
        csrf,
        admin,
    };
    html(page.render())
}

/// The stage timeline: each stage's duration from its first event to the next stage's.
fn stages(lang: &Lang, t: &Task, seen: &[(String, i64)]) -> Vec<(String, String, &'static str)> {
    let end = t.finished_at.map_or(cloudbuild_proto::time::Timestamp::now().0, |f| f.0);
    seen.iter()
        .enumerate()
        .map(|(i, (stage, start))| {
            let until = seen.get(i + 1).map_or(end, |n| n.1);
            let last = i + 1 == seen.len();
            let class = match (last, t.state.as_str()) {
                (false, _) | (true, "succeeded" | "skipped") => "done",
                (true, "failed" | "timed_out") => "failed",
                _ => "",
            };
            (stage.clone(), duration(lang, until - start), class)
        })
        .collect()
}

/// `POST /tasks/{id}/cancel` (developers).
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    TaskIdParam(id): TaskIdParam,
    Checked(viewer, _): Checked<CsrfForm>,
) -> Response {
    match tasks::cancel(&state, &viewer.caller, id).await {
        Ok(_) => Redirect::to(&format!("/tasks/{id}")).into_response(),
        Err(e) => refused(e),
    }
}

/// `POST /tasks/{id}/retry` (developers; maintainers for `prod`): to the new build's page.
pub async fn retry(
    State(state): State<Arc<AppState>>,
    TaskIdParam(id): TaskIdParam,
    Checked(viewer, _): Checked<CsrfForm>,
) -> Response {
    match tasks::retry(&state, &viewer.caller, id).await {
        Ok(t) => Redirect::to(&format!("/tasks/{}", t.id)).into_response(),
        Err(e) => refused(e),
    }
}
