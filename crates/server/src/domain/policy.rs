//! The one place that decides what a caller may do (docs/permissions.md is its table): every
//! adapter (REST, the event streams, socket.io) and every domain service asks here.
//!
//! Roles: a project's members are `reporter` < `developer` < `maintainer`; an `internal`
//! project makes every signed-in caller a reporter; an admin (a user, a service token, or the
//! anonymous caller of a loopback server) is a maintainer of every project and alone manages
//! workers, worker tokens, users and the registration of projects by name. A caller who may not
//! read a project is told that its task, log or release does not exist (404, not 403), so that
//! names and ids cannot be probed.

use std::collections::HashSet;

use cloudbuild_proto::project::{Project, Visibility};
use cloudbuild_proto::task::Environment;
use cloudbuild_proto::user::ProjectRole;
use cloudbuild_store::StoreError;

use super::callers::Caller;
use crate::state::AppState;

/// Why a caller may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The caller may not read the thing: said as if it did not exist (404).
    #[error("{0} does not exist")]
    Hidden(String),
    /// The caller may read it, but its role does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
}

/// Something done to or in one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectAction {
    /// Its tasks, logs, releases, members, settings.
    Read,
    /// Publishing a build to an environment (a new task, or the retry of one).
    Publish(Environment),
    /// Cancelling one of its tasks.
    Cancel,
    /// Switching an environment back to an earlier release.
    Rollback,
    /// Its repository, default branch, visibility, members, secrets; its audit entries.
    Maintain,
}

impl ProjectAction {
    /// The project role an action needs.
    pub fn needs(self) -> ProjectRole {
        match self {
            ProjectAction::Read => ProjectRole::Reporter,
            ProjectAction::Publish(Environment::Test | Environment::Preview(_)) | ProjectAction::Cancel => {
                ProjectRole::Developer
            }
            ProjectAction::Publish(Environment::Prod) | ProjectAction::Rollback | ProjectAction::Maintain => {
                ProjectRole::Maintainer
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ProjectAction::Read => "reading",
            ProjectAction::Publish(Environment::Test) => "publishing to test",
            ProjectAction::Publish(Environment::Prod) => "publishing to prod",
            ProjectAction::Publish(Environment::Preview(_)) => "building a preview",
            ProjectAction::Cancel => "cancelling a task",
            ProjectAction::Rollback => "rolling back",
            ProjectAction::Maintain => "changing the project's settings, members or secrets",
        }
    }
}

/// A caller's role in a project (`None`: it may not even read it). An unregistered name (no
/// record) is the admins' only.
pub fn project_role(caller: &Caller, project: Option<&Project>) -> Option<ProjectRole> {
    if caller.is_admin() {
        return Some(ProjectRole::Maintainer);
    }
    let project = project?;
    let member = caller.user().and_then(|u| project.members.iter().find(|m| m.user == u)).map(|m| m.role);
    let internal = (project.visibility == Visibility::Internal).then_some(ProjectRole::Reporter);
    member.max(internal)
}

/// Whether `caller` may do `action` in `project` (named `name`); `what` names the thing asked
/// about in a 404 (`task 12`, `project @team/site`).
pub fn authorize(
    caller: &Caller,
    name: &str,
    project: Option<&Project>,
    action: ProjectAction,
    what: impl FnOnce() -> String,
) -> Result<(), PolicyError> {
    let Some(role) = project_role(caller, project) else { return Err(Denied::Hidden(what()).into()) };
    if role < action.needs() {
        return Err(Denied::Forbidden(format!(
            "{} in project {name} needs the {} role; {} is {role}",
            action.describe(),
            action.needs(),
            caller.name
        ))
        .into());
    }
    Ok(())
}

/// [`authorize`] for the project of that name, read from the store; returns its record.
pub async fn project(
    state: &AppState,
    caller: &Caller,
    name: &str,
    action: ProjectAction,
    what: impl FnOnce() -> String,
) -> Result<Option<Project>, PolicyError> {
    // An admin needs no record (an unregistered name's releases, for one).
    let project = state.store.get_project(name).await?;
    authorize(caller, name, project.as_ref(), action, what)?;
    Ok(project)
}

/// Whether `caller` may register a project (`projects create`, or a first publish): admins
/// always, signed-in users while `[projects] auto_create` is on; never a non-admin service token
/// (a project needs a person as its first maintainer).
pub fn may_register(state: &AppState, caller: &Caller) -> Result<(), PolicyError> {
    if caller.is_admin() || (caller.user().is_some() && state.settings.auto_create_projects) {
        return Ok(());
    }
    Err(Denied::Forbidden(if caller.user().is_some() {
        "this server registers projects only by an admin ([projects] auto_create = false)".to_owned()
    } else {
        format!("{} is a service token without the admin role: it cannot register projects", caller.name)
    })
    .into())
}

/// Admins only: workers, worker tokens, users, deleting a project's registration.
pub fn require_admin(caller: &Caller, doing: &str) -> Result<(), PolicyError> {
    if caller.is_admin() {
        return Ok(());
    }
    Err(Denied::Forbidden(format!("{doing} is for admins; {} is not one", caller.name)).into())
}

/// The names of the projects `caller` may read; `None`: every one (an admin).
pub async fn readable(
    state: &AppState,
    caller: &Caller,
    at_least: ProjectRole,
) -> Result<Option<HashSet<String>>, StoreError> {
    if caller.is_admin() {
        return Ok(None);
    }
    let projects = state.store.list_projects().await?;
    Ok(Some(projects.into_iter().filter(|p| project_role(caller, Some(p)) >= Some(at_least)).map(|p| p.name).collect()))
}

/// Whether `caller`'s access can be taken away while it reads (a user's personal token can be
/// revoked or expire, the user disabled or removed from the project); service tokens and the
/// anonymous admin last as long as the configuration that let them in.
pub fn can_lose_access(caller: &Caller) -> bool {
    caller.token.is_some()
}

/// Whether `caller`, let in earlier, still may read `project`'s tasks (asked by open streams).
/// A store failure keeps the stream: an outage must not cut every follower at once, and the
/// check is made again shortly.
pub async fn still_reads(state: &AppState, caller: &Caller, project: &str) -> bool {
    let check = async {
        if !super::callers::still_valid(state, caller).await? {
            return Ok::<_, StoreError>(false);
        }
        let record = state.store.get_project(project).await?;
        Ok(project_role(caller, record.as_ref()).is_some())
    };
    check.await.unwrap_or_else(|e| {
        tracing::warn!(caller = %caller.name, "checking a follower's access: {e}");
        true
    })
}

/// A refusal, or the store failing while the policy read a project. Every domain error has a
/// `Policy` variant holding one; the HTTP adapter maps it once.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudbuild_proto::time::Timestamp;
    use cloudbuild_proto::user::{CallerKind, GlobalRole, Member};

    fn user(name: &str, role: GlobalRole) -> Caller {
        Caller { name: name.into(), kind: CallerKind::User, role, token: None, address: None }
    }

    fn project(visibility: Visibility) -> Project {
        Project {
            name: "site".into(),
            repo: "https://x.org/a/site.git".into(),
            repo_identity: "x.org/a/site".into(),
            default_branch: "main".into(),
            visibility,
            members: vec![
                Member { user: "rita".into(), role: ProjectRole::Reporter },
                Member { user: "dev".into(), role: ProjectRole::Developer },
                Member { user: "max".into(), role: ProjectRole::Maintainer },
            ],
            triggers: Default::default(),
            webhook_secret: None,
            forge: None,
            schedules: Vec::new(),
            previews: Vec::new(),
            closed_pull_requests: Vec::new(),
            freeze: Vec::new(),
            approvals: Default::default(),
            created_by: "max".into(),
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
        }
    }

    #[test]
    fn each_role_may_do_what_the_table_says() {
        use ProjectAction::*;
        let p = project(Visibility::Private);
        let actions = [Read, Publish(Environment::Test), Cancel, Publish(Environment::Prod), Rollback, Maintain];
        // Rows: how many of `actions` (in order) each caller may do.
        let rows = [
            (user("stranger", GlobalRole::User), 0),
            (user("rita", GlobalRole::User), 1),
            (user("dev", GlobalRole::User), 3),
            (user("max", GlobalRole::User), 6),
            (user("root", GlobalRole::Admin), 6),
            (Caller::anonymous(), 6),
        ];
        for (caller, allowed) in rows {
            for (i, action) in actions.iter().enumerate() {
                let got = authorize(&caller, "site", Some(&p), *action, || "project site".into());
                assert_eq!(got.is_ok(), i < allowed, "{} doing {action:?}: {got:?}", caller.name);
                if i >= allowed && allowed == 0 {
                    assert!(matches!(got, Err(PolicyError::Denied(Denied::Hidden(_)))), "strangers learn nothing");
                }
            }
        }
    }

    #[test]
    fn internal_projects_are_read_by_every_signed_in_caller_and_unregistered_ones_by_admins() {
        let stranger = user("stranger", GlobalRole::User);
        assert_eq!(project_role(&stranger, Some(&project(Visibility::Internal))), Some(ProjectRole::Reporter));
        assert_eq!(
            project_role(&user("dev", GlobalRole::User), Some(&project(Visibility::Internal))),
            Some(ProjectRole::Developer)
        );
        assert_eq!(project_role(&stranger, None), None);
        assert_eq!(project_role(&user("root", GlobalRole::Admin), None), Some(ProjectRole::Maintainer));
        let service = Caller { kind: CallerKind::Service, ..user("max", GlobalRole::User) };
        assert_eq!(project_role(&service, Some(&project(Visibility::Private))), None, "membership is a user's");
    }
}
