//! Projects: registered names bound to the repository they build from. A publish of a
//! registered project from another repository is refused (anyone could otherwise overwrite
//! another team's site by reusing its name); the first publish of an unknown name registers it
//! (`[projects] auto_create`, on by default), else only `cloudbuild projects create` does.

use cloudbuild_proto::project::{CreateProject, EditProject, Project};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{Member, ProjectRole};
use cloudbuild_proto::validate::{GitRef, ProjectName, RepoUrl, ValidationError};
use cloudbuild_store::StoreError;

use super::callers::Caller;
use super::policy::{self, PolicyError, ProjectAction};
use crate::state::AppState;

/// Why a project could not be registered, changed or used.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no project named {0}")]
    NotFound(String),
    #[error("a project named {0} exists already")]
    Exists(String),
    /// A publish from a repository that is not the project's.
    #[error(
        "project {project} builds from {registered}, not from {requested}: a project's site is published only from \
         its own repository (publish under another name, or change the project's repository with \
         `cloudbuild projects edit {project} --repo URL`)"
    )]
    OtherRepository { project: String, registered: String, requested: String },
    /// An unknown name while the server registers projects only on request.
    #[error(
        "project {0} is not registered, and this server registers projects only on request \
         ([projects] auto_create = false): `cloudbuild projects create {0} --repo URL`"
    )]
    NotRegistered(String),
    /// Other edits kept landing between this edit's read and write.
    #[error("project {0} kept changing while it was edited; try again")]
    Contended(String),
    /// A task's project moved to another repository while the task ran.
    #[error(
        "project {project} now builds from {now}; this build is of {built}, so it is not published \
         (the project's repository changed after the task was created)"
    )]
    Moved { project: String, now: String, built: String },
    /// An unregistered name that has releases or secrets.
    #[error(
        "project {0} has releases or secrets but is not registered: an admin registers it again with \
         `cloudbuild projects create {0} --repo URL`"
    )]
    Unregistered(String),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A member change that would leave the project without a maintainer.
    #[error("{0}")]
    LastMaintainer(String),
    #[error("no user named {0}")]
    NoSuchUser(String),
    #[error("the trigger rules: {0}")]
    BadTriggers(String),
    /// The webhook secret could not be sealed or opened (the vault's key file).
    #[error("the project's webhook secret: {0}")]
    Vault(String),
    /// Its previews could not all be removed (the target failed): the project is left as it was.
    #[error("removing the project's previews failed: {0}")]
    Previews(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `name` has releases or secrets (its registration was deleted).
async fn has_history(state: &AppState, name: &str) -> Result<bool, StoreError> {
    Ok(!state.store.list_releases(None, name).await?.is_empty() || !state.store.list_secrets(name).await?.is_empty())
}

/// Registers the projects that tasks built before projects existed (a store of an earlier
/// version): each name is bound to the repository of its newest task. Runs when no project is
/// registered yet; without it, the first publish after an upgrade could claim any live site.
pub async fn adopt_existing(state: &AppState) -> Result<usize, ProjectError> {
    if !state.store.list_projects().await?.is_empty() {
        return Ok(0);
    }
    let (mut seen, mut adopted, mut before) = (std::collections::HashSet::new(), 0, None);
    loop {
        let page =
            state.store.list_tasks(&cloudbuild_store::TaskQuery { before, limit: 500, ..Default::default() }).await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        for task in page.iter().filter(|t| seen.insert(t.name.clone())) {
            let Ok(url) = repo_url(state, &task.repo) else { continue };
            let by = Caller::on_behalf_of(format!("{} (adopted)", task.requested_by));
            let mut project = record(&task.name, &url, "main", Default::default(), &by);
            project.created_at = task.created_at;
            if state.store.create_project(&project).await? {
                adopted += 1;
            }
        }
    }
    if adopted > 0 {
        tracing::info!(adopted, "registered the projects of earlier tasks, each bound to its newest task's repository");
    }
    Ok(adopted)
}

fn repo_url(state: &AppState, repo: &str) -> Result<RepoUrl, ValidationError> {
    RepoUrl::parse(repo.trim(), &state.settings.repo_policy)
}

/// Checks, before anything is stored, that `caller` may publish a task of `name` to `env`:
/// its role in the registered project, or its right to register an unknown name. Returns the
/// project's record, for [`admit`].
pub async fn may_publish(
    state: &AppState,
    caller: &Caller,
    name: &str,
    env: cloudbuild_proto::task::Environment,
) -> Result<Option<Project>, ProjectError> {
    let not_registered = || ProjectError::NotRegistered(name.to_owned());
    let project = state.store.get_project(name).await?;
    match &project {
        Some(p) => {
            match policy::authorize(caller, name, Some(p), ProjectAction::Publish(env), || format!("project {name}")) {
                // Said as for a name that is not registered: a stranger learns nothing either way.
                Err(PolicyError::Denied(policy::Denied::Hidden(_))) if !state.settings.auto_create_projects => {
                    return Err(not_registered())
                }
                other => other?,
            }
        }
        None if !state.settings.auto_create_projects => return Err(not_registered()),
        None => policy::may_register(state, caller)?,
    }
    Ok(project)
}

/// Checks that a task of `name` may build from `repo` (both validated), registering the
/// project on its first publish when the server allows it, with the publishing user as its
/// maintainer. The caller's role was checked by [`may_publish`], which read `known`.
pub async fn admit(
    state: &AppState,
    caller: &Caller,
    name: &str,
    repo: &str,
    known: Option<Project>,
) -> Result<(), ProjectError> {
    let url = repo_url(state, repo)?;
    let known = match known {
        Some(p) => Some(p),
        None => state.store.get_project(name).await?,
    };
    let project = match known {
        Some(p) => p,
        None if !state.settings.auto_create_projects => return Err(ProjectError::NotRegistered(name.to_owned())),
        // A name with releases or secrets but no registration (its registration was deleted)
        // is not up for grabs by whoever publishes it next.
        None if has_history(state, name).await? => return Err(ProjectError::Unregistered(name.to_owned())),
        None => {
            let new = record(name, &url, "main", Default::default(), caller);
            if state.store.create_project(&new).await? {
                tracing::info!(project = name, repo = %url, by = %caller.name, "project registered by its first publish");
                let target = format!("project {name} (by its first publish, from {url})");
                super::audit::record(
                    state,
                    caller,
                    "project.create",
                    target,
                    Some(name),
                    &Ok::<(), std::convert::Infallible>(()),
                )
                .await;
                return Ok(());
            }
            // Registered meanwhile (another publish, another server): its repository decides.
            state.store.get_project(name).await?.ok_or_else(|| ProjectError::NotFound(name.to_owned()))?
        }
    };
    if project.repo_identity != url.identity() {
        return Err(ProjectError::OtherRepository {
            project: project.name,
            registered: project.repo,
            requested: url.as_str().to_owned(),
        });
    }
    Ok(())
}

/// Checks, as a task publishes, that its project still builds from the task's repository: a
/// task created before its project moved to another repository (or lost its registration)
/// must not publish the old repository's build under the project's name.
pub async fn check_still_bound(state: &AppState, name: &str, repo: &str) -> Result<(), ProjectError> {
    let url = repo_url(state, repo)?;
    match state.store.get_project(name).await? {
        Some(p) if p.repo_identity == url.identity() => Ok(()),
        Some(p) => Err(ProjectError::Moved { project: p.name, now: p.repo, built: url.as_str().to_owned() }),
        None => Err(ProjectError::NotFound(name.to_owned())),
    }
}

fn record(
    name: &str,
    url: &RepoUrl,
    branch: &str,
    visibility: cloudbuild_proto::project::Visibility,
    caller: &Caller,
) -> Project {
    let now = Timestamp::now();
    // Its first maintainer is the user who registered it; admins and service tokens need none.
    let members =
        caller.user().map(|u| Member { user: u.to_owned(), role: ProjectRole::Maintainer }).into_iter().collect();
    Project {
        name: name.to_owned(),
        repo: url.as_str().to_owned(),
        repo_identity: url.identity(),
        default_branch: branch.to_owned(),
        visibility,
        members,
        triggers: Default::default(),
        webhook_secret: None,
        forge: None,
        schedules: Vec::new(),
        previews: Vec::new(),
        closed_pull_requests: Vec::new(),
        freeze: Vec::new(),
        approvals: Default::default(),
        created_by: caller.name.clone(),
        created_at: now,
        updated_at: now,
    }
}

/// Registers a project.
pub async fn create(state: &AppState, caller: &Caller, req: CreateProject) -> Result<Project, ProjectError> {
    let name = req.name.clone();
    let result = register(state, caller, req).await;
    super::audit::record(state, caller, "project.create", format!("project {name}"), Some(&name), &result).await;
    result
}

async fn register(state: &AppState, caller: &Caller, req: CreateProject) -> Result<Project, ProjectError> {
    policy::may_register(state, caller)?;
    let name = ProjectName::parse(&req.name)?;
    let url = repo_url(state, &req.repo)?;
    let branch = GitRef::parse(req.default_branch.as_deref().unwrap_or("main"))?;
    let project = record(name.as_str(), &url, branch.as_str(), req.visibility.unwrap_or_default(), caller);
    if !state.store.create_project(&project).await? {
        return Err(ProjectError::Exists(project.name));
    }
    Ok(project)
}

/// The projects `caller` may read, by name.
pub async fn list(state: &AppState, caller: &Caller) -> Result<Vec<Project>, ProjectError> {
    let all = state.store.list_projects().await?;
    Ok(all.into_iter().filter(|p| policy::project_role(caller, Some(p)).is_some()).collect())
}

/// One project, if `caller` may do `action` in it (a project it may not read does not exist).
pub async fn get(
    state: &AppState,
    caller: &Caller,
    name: &str,
    action: ProjectAction,
) -> Result<Project, ProjectError> {
    let name = ProjectName::parse(name)?;
    let hidden = || ProjectError::NotFound(name.to_string());
    policy::project(state, caller, name.as_str(), action, || format!("project {name}")).await?.ok_or_else(hidden)
}

/// Changes what the request gives (repository, default branch, visibility).
pub async fn edit(state: &AppState, caller: &Caller, name: &str, req: EditProject) -> Result<Project, ProjectError> {
    let result = async {
        let now = get(state, caller, name, ProjectAction::Maintain).await?;
        // Else one maintainer could turn approvals off, publish alone, and turn them on again.
        if now.approvals.prod && req.approvals.is_some_and(|a| !a.prod) {
            policy::require_admin(caller, "turning a project's prod approvals off")?;
        }
        change(state, name, req).await
    }
    .await;
    super::audit::record(state, caller, "project.edit", format!("project {name}"), Some(name), &result).await;
    result
}

async fn change(state: &AppState, name: &str, req: EditProject) -> Result<Project, ProjectError> {
    let url = req.repo.as_deref().map(|r| repo_url(state, r)).transpose()?;
    let branch = req.default_branch.as_deref().map(GitRef::parse).transpose()?;
    if let Some(rules) = &req.triggers {
        rules.validate().map_err(ProjectError::BadTriggers)?;
    }
    if let Some(approvals) = &req.approvals {
        approvals.validate()?;
    }
    let old = state.store.get_project(name).await?;
    let new = update(state, name, |project| {
        if let Some(url) = &url {
            if url.identity() != project.repo_identity {
                // Another repository's pull requests are not these.
                project.closed_pull_requests.clear();
            }
            project.repo = url.as_str().to_owned();
            project.repo_identity = url.identity();
        }
        if let Some(branch) = &branch {
            project.default_branch = branch.to_string();
        }
        if let Some(visibility) = req.visibility {
            project.visibility = visibility;
        }
        if let Some(rules) = &req.triggers {
            project.triggers = rules.clone();
        }
        if let Some(approvals) = req.approvals {
            project.approvals = approvals;
        }
        Ok::<_, ProjectError>(())
    })
    .await?;
    // What the new settings no longer allow is not left up (after they are written, so that
    // no pull request is built under the old ones meanwhile): another repository's previews,
    // previews turned off, forks' previews turned off.
    let moved = old.is_some_and(|o| o.repo_identity != new.repo_identity);
    let (why, which): (&str, fn(&cloudbuild_proto::preview::Preview) -> bool) = match &new.triggers {
        _ if moved => ("the project builds from another repository now", |_| true),
        r if !r.previews => ("the project's previews were turned off", |_| true),
        r if !r.fork_previews => ("the project's fork previews were turned off", |p| p.fork),
        _ => return Ok(new),
    };
    let caller = Caller::on_behalf_of("project settings");
    super::previews::remove_all(state, &caller, &new, why, which)
        .await
        .map_err(|e| ProjectError::Previews(e.to_string()))?;
    Ok(state.store.get_project(name).await?.unwrap_or(new))
}

/// Applies `edit` to the stored record by compare-and-set: an edit made meanwhile (another
/// caller, another server) is never overwritten with a stale copy; the change is made again on
/// the new record.
pub(crate) async fn update<E: From<ProjectError>>(
    state: &AppState,
    name: &str,
    mut edit: impl FnMut(&mut Project) -> Result<(), E>,
) -> Result<Project, E> {
    for _ in 0..8 {
        let old = state.store.get_project(name).await.map_err(ProjectError::from)?;
        let old = old.ok_or_else(|| ProjectError::NotFound(name.to_owned()))?;
        let mut project = old.clone();
        edit(&mut project)?;
        project.updated_at = Timestamp::now();
        if state.store.update_project(&old, &project).await.map_err(ProjectError::from)? {
            return Ok(project);
        }
    }
    Err(ProjectError::Contended(name.to_owned()).into())
}

/// Removes a project's registration (its test and prod releases and sites stay, its previews
/// are removed; the name can be registered
/// again).
pub async fn delete(state: &AppState, caller: &Caller, name: &str) -> Result<(), ProjectError> {
    let result = async {
        get(state, caller, name, ProjectAction::Read).await?;
        policy::require_admin(caller, "deleting a project's registration")?;
        unregister(state, name).await
    }
    .await;
    super::audit::record(state, caller, "project.delete", format!("project {name}"), Some(name), &result).await;
    result
}

async fn unregister(state: &AppState, name: &str) -> Result<(), ProjectError> {
    let name = ProjectName::parse(name)?;
    // Its previews first: nothing would ever remove them once the record that lists them is
    // gone. No new one is built meanwhile: previews are turned off first.
    bookkeep(state, name.as_str(), |p| std::mem::replace(&mut p.triggers.previews, false)).await?;
    if let Some(project) = state.store.get_project(name.as_str()).await? {
        let caller = Caller::on_behalf_of("project removal");
        super::previews::remove_all(state, &caller, &project, "the project's registration was deleted", |_| true)
            .await
            .map_err(|e| ProjectError::Previews(e.to_string()))?;
    }
    if !state.store.delete_project(name.as_str()).await? {
        return Err(ProjectError::NotFound(name.to_string()));
    }
    Ok(())
}

/// A project's members (readers of the project).
pub async fn members(state: &AppState, caller: &Caller, name: &str) -> Result<Vec<Member>, ProjectError> {
    Ok(get(state, caller, name, ProjectAction::Read).await?.members)
}

/// Adds a member or changes their role (maintainers). A project keeps at least one maintainer.
pub async fn set_member(
    state: &AppState,
    caller: &Caller,
    name: &str,
    user: &str,
    role: ProjectRole,
) -> Result<Project, ProjectError> {
    let result = async {
        get(state, caller, name, ProjectAction::Maintain).await?;
        if state.store.get_user(user).await?.is_none() {
            return Err(ProjectError::NoSuchUser(user.to_owned()));
        }
        update(state, name, |p| {
            let had = has_maintainer(p);
            p.members.retain(|m| m.user != user);
            p.members.push(Member { user: user.to_owned(), role });
            p.members.sort_by(|a, b| a.user.cmp(&b.user));
            keeps_a_maintainer(p, had)
        })
        .await
    }
    .await;
    let target = format!("member {user} of project {name} as {role}");
    super::audit::record(state, caller, "member.set", target, Some(name), &result).await;
    result
}

/// Removes a member (maintainers). A project keeps at least one maintainer.
pub async fn remove_member(state: &AppState, caller: &Caller, name: &str, user: &str) -> Result<Project, ProjectError> {
    let result = async {
        get(state, caller, name, ProjectAction::Maintain).await?;
        update(state, name, |p| {
            let (had, before) = (has_maintainer(p), p.members.len());
            p.members.retain(|m| m.user != user);
            if p.members.len() == before {
                return Err(ProjectError::NoSuchUser(format!("{user} among the members of {name}")));
            }
            keeps_a_maintainer(p, had)
        })
        .await
    }
    .await;
    let target = format!("member {user} of project {name}");
    super::audit::record(state, caller, "member.remove", target, Some(name), &result).await;
    result
}

fn has_maintainer(p: &Project) -> bool {
    p.members.iter().any(|m| m.role == ProjectRole::Maintainer)
}

/// Refuses a member change that takes a project's last maintainer away (a project registered
/// by an admin may have none: admins maintain every project).
fn keeps_a_maintainer(p: &Project, had: bool) -> Result<(), ProjectError> {
    if had && !has_maintainer(p) {
        return Err(ProjectError::LastMaintainer(format!(
            "project {} would be left without a maintainer; make another member maintainer first",
            p.name
        )));
    }
    Ok(())
}

/// Changes a project's record by compare-and-set, retried on conflict: `change` says whether
/// it changed anything (false: nothing to write). Bookkeeping (a schedule's last run, a
/// preview's record), not an edit of the project: `updated_at` stays. True when written;
/// false when `change` wrote nothing or the project is gone.
///
/// # Errors
/// [`StoreError::Conflict`] when other writers changed the record at every one of 64 tries
/// (each waits a little longer), so that a lost change is never taken for a written one.
pub(crate) async fn bookkeep(
    state: &AppState,
    name: &str,
    mut change: impl FnMut(&mut Project) -> bool,
) -> Result<bool, StoreError> {
    for attempt in 0..64u64 {
        let Some(old) = state.store.get_project(name).await? else { return Ok(false) };
        let mut new = old.clone();
        if !change(&mut new) {
            return Ok(false);
        }
        if state.store.update_project(&old, &new).await? {
            return Ok(true);
        }
        // Writers that met here go apart: each waits a different time (its place in line
        // is random), longer at each try.
        let mut byte = [0u8; 1];
        let _ = getrandom::fill(&mut byte);
        let spread = u64::from(byte[0] % 8);
        tokio::time::sleep(std::time::Duration::from_millis(attempt.min(16) + spread)).await;
    }
    Err(StoreError::Conflict { what: format!("a change of project {name} (others kept changing it)") })
}
