//! Projects: registered names bound to the repository they build from. A publish of a
//! registered project from another repository is refused (anyone could otherwise overwrite
//! another team's site by reusing its name); the first publish of an unknown name registers it
//! (`[projects] auto_create`, on by default), else only `cloudbuild projects create` does.

use cloudbuild_proto::project::{CreateProject, EditProject, Project};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::validate::{GitRef, ProjectName, RepoUrl, ValidationError};
use cloudbuild_store::StoreError;

use super::callers::Caller;
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
            let by = Caller(format!("{} (adopted)", task.requested_by), None);
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

/// Checks that a task of `name` may build from `repo` (both validated), registering the
/// project on its first publish when the server allows it.
pub async fn admit(state: &AppState, caller: &Caller, name: &str, repo: &str) -> Result<(), ProjectError> {
    let url = repo_url(state, repo)?;
    let project = match state.store.get_project(name).await? {
        Some(p) => p,
        None if !state.settings.auto_create_projects => return Err(ProjectError::NotRegistered(name.to_owned())),
        // A name with releases or secrets but no registration (its registration was deleted)
        // is not up for grabs by whoever publishes it next.
        None if has_history(state, name).await? => return Err(ProjectError::Unregistered(name.to_owned())),
        None => {
            let new = record(name, &url, "main", Default::default(), caller);
            if state.store.create_project(&new).await? {
                tracing::info!(project = name, repo = %url, by = %caller.0, "project registered by its first publish");
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
    Project {
        name: name.to_owned(),
        repo: url.as_str().to_owned(),
        repo_identity: url.identity(),
        default_branch: branch.to_owned(),
        visibility,
        created_by: caller.0.clone(),
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
    let name = ProjectName::parse(&req.name)?;
    let url = repo_url(state, &req.repo)?;
    let branch = GitRef::parse(req.default_branch.as_deref().unwrap_or("main"))?;
    let project = record(name.as_str(), &url, branch.as_str(), req.visibility.unwrap_or_default(), caller);
    if !state.store.create_project(&project).await? {
        return Err(ProjectError::Exists(project.name));
    }
    Ok(project)
}

/// Every project, by name.
pub async fn list(state: &AppState) -> Result<Vec<Project>, ProjectError> {
    Ok(state.store.list_projects().await?)
}

/// One project.
pub async fn get(state: &AppState, name: &str) -> Result<Project, ProjectError> {
    let name = ProjectName::parse(name)?;
    state.store.get_project(name.as_str()).await?.ok_or_else(|| ProjectError::NotFound(name.to_string()))
}

/// Changes what the request gives (repository, default branch, visibility).
pub async fn edit(state: &AppState, caller: &Caller, name: &str, req: EditProject) -> Result<Project, ProjectError> {
    let result = change(state, name, req).await;
    super::audit::record(state, caller, "project.edit", format!("project {name}"), Some(name), &result).await;
    result
}

async fn change(state: &AppState, name: &str, req: EditProject) -> Result<Project, ProjectError> {
    let url = req.repo.as_deref().map(|r| repo_url(state, r)).transpose()?;
    let branch = req.default_branch.as_deref().map(GitRef::parse).transpose()?;
    // Compare-and-set on the whole record: an edit made meanwhile (another caller, another
    // server) is never overwritten with this one's stale copy; the change is made again on it.
    for _ in 0..8 {
        let old = get(state, name).await?;
        let mut project = old.clone();
        if let Some(url) = &url {
            project.repo = url.as_str().to_owned();
            project.repo_identity = url.identity();
        }
        if let Some(branch) = &branch {
            project.default_branch = branch.to_string();
        }
        if let Some(visibility) = req.visibility {
            project.visibility = visibility;
        }
        project.updated_at = Timestamp::now();
        if state.store.update_project(&old, &project).await? {
            return Ok(project);
        }
    }
    Err(ProjectError::Contended(name.to_owned()))
}

/// Removes a project's registration (its releases and sites stay; the name can be registered
/// again).
pub async fn delete(state: &AppState, caller: &Caller, name: &str) -> Result<(), ProjectError> {
    let result = unregister(state, name).await;
    super::audit::record(state, caller, "project.delete", format!("project {name}"), Some(name), &result).await;
    result
}

async fn unregister(state: &AppState, name: &str) -> Result<(), ProjectError> {
    let name = ProjectName::parse(name)?;
    if !state.store.delete_project(name.as_str()).await? {
        return Err(ProjectError::NotFound(name.to_string()));
    }
    Ok(())
}
