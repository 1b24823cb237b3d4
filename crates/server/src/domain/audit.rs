//! The audit log: every change of state is appended with who asked (a token's name), from
//! where, what (action and target) and how it ended. Appending never fails the change it
//! records: a store failure is logged.

use cloudbuild_proto::audit::AuditEntry;
use cloudbuild_proto::audit::AuditPage;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::validate::ValidationError;
use cloudbuild_store::{AuditQuery, StoreError};

use super::callers::Caller;
use super::policy::{self, Denied};
use crate::state::AppState;
use cloudbuild_proto::user::ProjectRole;

/// What an error may say in the audit log, which callers read: a refusal is told as the
/// caller was told it; a failure of the server's own (its store, a target, the disk) only as a
/// failure, its details staying in the server's log (as `ApiError` keeps them from clients).
pub trait Outcome: std::fmt::Display {
    /// Whether it is the server's own failure rather than a refusal of the request.
    fn internal(&self) -> bool;
}

impl Outcome for policy::PolicyError {
    fn internal(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

impl Outcome for super::tasks::TaskError {
    fn internal(&self) -> bool {
        match self {
            Self::Store(_) => true,
            Self::Policy(p) => p.internal(),
            Self::Release(r) => r.internal(),
            Self::Project(p) => p.internal(),
            Self::Gate(g) => g.internal(),
            _ => false,
        }
    }
}

impl Outcome for super::releases::ReleaseError {
    fn internal(&self) -> bool {
        match self {
            Self::Project(p) => p.internal(),
            Self::Gate(g) => g.internal(),
            other => matches!(other, Self::Store(_) | Self::Target(_) | Self::Io { .. } | Self::Lock(_)),
        }
    }
}

impl Outcome for super::projects::ProjectError {
    fn internal(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Previews(_)) || matches!(self, Self::Policy(p) if p.internal())
    }
}

impl Outcome for super::workers::WorkerError {
    fn internal(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Random(_)) || matches!(self, Self::Policy(p) if p.internal())
    }
}

impl Outcome for super::secrets::SecretError {
    fn internal(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Vault(_)) || matches!(self, Self::Policy(p) if p.internal())
    }
}

impl Outcome for super::users::UserError {
    fn internal(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Random(_) | Self::Hashing(_))
            || matches!(self, Self::Policy(p) if p.internal())
    }
}

impl<E: Outcome> Outcome for &E {
    fn internal(&self) -> bool {
        (*self).internal()
    }
}

/// For what never fails.
impl Outcome for std::convert::Infallible {
    fn internal(&self) -> bool {
        false
    }
}

/// Appends what `caller` did to `target` (`task 12`, `project site`) of `project`, and how it
/// ended (`Ok`, or the error it was refused with).
pub async fn record<T, E: Outcome>(
    state: &AppState,
    caller: &Caller,
    action: &str,
    target: impl Into<String>,
    project: Option<&str>,
    result: &Result<T, E>,
) {
    let entry = AuditEntry {
        id: 0, // the store numbers it
        at: Timestamp::now(),
        actor: caller.name.clone(),
        address: caller.address.map(|a| a.to_string()),
        action: action.to_owned(),
        target: clip(&target.into()),
        project: project.map(clip),
        outcome: match result {
            Ok(_) => "ok".to_owned(),
            Err(e) if e.internal() => "failed: an error of the server's own (its log has the details)".to_owned(),
            Err(e) => clip(&format!("refused: {e}")),
        },
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        tracing::error!(action, target = %entry.target, "cannot append to the audit log: {e}");
    }
}

/// What an entry keeps of a value a caller gave (a name that failed validation, an error
/// quoting it): at most 300 characters, control characters as `?` (they would reach the
/// terminals of those who read the log).
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(300).map(|c| if c.is_control() { '?' } else { c }).collect();
    if s.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// Filters of [`list`].
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub project: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

/// Why the audit log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A page of entries, newest first (at most 200 a page, 50 by default): every entry for
/// admins, the entries of the projects they maintain for maintainers.
pub async fn list(state: &AppState, caller: &Caller, f: AuditFilter) -> Result<AuditPage, AuditError> {
    let limit = f.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ValidationError { field: "limit", reason: "must be 1 to 200".into() }.into());
    }
    if let Some(p) = &f.project {
        cloudbuild_proto::validate::ProjectName::parse(p)?;
    }
    let maintained = policy::readable(state, caller, ProjectRole::Maintainer).await?;
    match (&maintained, &f.project) {
        (Some(m), Some(p)) if !m.contains(p) => {
            let hidden = policy::project_role(caller, state.store.get_project(p).await?.as_ref()).is_none();
            let denied = if hidden {
                Denied::Hidden(format!("project {p}"))
            } else {
                Denied::Forbidden(format!("the audit log of project {p} is for its maintainers"))
            };
            return Err(policy::PolicyError::from(denied).into());
        }
        (Some(m), None) if m.is_empty() => {
            let denied = Denied::Forbidden("the audit log is for admins and the maintainers of a project".into());
            return Err(policy::PolicyError::from(denied).into());
        }
        _ => {}
    }
    let step = if maintained.is_some() { 200 } else { limit };
    let mut query = AuditQuery { project: f.project, actor: f.actor, action: f.action, before: f.before, limit: step };
    let (mut entries, mut scanned) = (Vec::new(), 0);
    // Pages of the whole log, filtered to the maintained projects' entries, until this page is
    // full or as many pages as a task listing reads were read (then it says where to go on).
    let mine = |e: &AuditEntry| maintained.as_ref().is_none_or(|m| e.project.as_ref().is_some_and(|p| m.contains(p)));
    let cut_short = loop {
        let page = state.store.list_audit(&query).await?;
        let full = page.len() == step as usize;
        query.before = page.last().map(|e| e.id);
        entries.extend(page.into_iter().filter(mine));
        scanned += 1;
        if !full || entries.len() >= limit as usize {
            break false;
        }
        if scanned == super::tasks::MAX_SCANNED_PAGES {
            break true;
        }
    };
    entries.truncate(limit as usize);
    let next_before = if entries.len() == limit as usize {
        entries.last().map(|e| e.id)
    } else if cut_short {
        query.before
    } else {
        None
    };
    Ok(AuditPage { entries, next_before })
}

#[cfg(test)]
mod tests {
    use super::{clip, Outcome};
    use crate::domain::tasks::TaskError;

    #[test]
    fn what_a_caller_gave_is_clipped_and_made_printable() {
        assert_eq!(clip("project \u{1b}[2Jsite\n"), "project ?[2Jsite?");
        let long = "x".repeat(1000);
        assert_eq!(clip(&long).chars().count(), 301);
    }

    #[test]
    fn a_failure_of_the_servers_own_is_not_told_in_detail() {
        let store = TaskError::Store(cloudbuild_store::StoreError::Corrupt("row 7 of tasks".into()));
        assert!(store.internal());
        assert!(!TaskError::Refused("a reserved trigger".into()).internal());
    }
}
