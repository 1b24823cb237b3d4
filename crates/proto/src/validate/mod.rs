//! Validation of every user-given value: repo URLs, git refs, project names, versions, commands.
//!
//! Each validated value is a newtype that can only be built through its `parse`, so code that
//! holds a `GitRef` or a `ProjectName` never has to wonder whether it is safe to pass to git or
//! to join into a path. Rules are allow-lists: anything not described here is refused, with a
//! message that says which rule was broken. One module per kind of value, each with its tests.

/// Why a value was refused. The message is shown to users as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// Which input was refused (`repo`, `branch`, `name`, `version`, `build command`, ...).
    pub field: &'static str,
    /// What rule it broke, in words.
    pub reason: String,
}

pub(crate) fn refuse<T>(field: &'static str, reason: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError { field, reason: reason.into() })
}

/// Characters that never belong in any value we accept: controls (including NUL, CR, LF) and,
/// in URLs, their percent-encoded forms (CVE-2020-5260 style credential smuggling).
pub(crate) fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control())
}

mod command;
mod git;
mod identifier;
mod name;
mod rel_path;
mod repo;

pub use command::{CommandIntent, CommandLine, CommandPolicy};
pub use git::{CommitSha, GitRef};
pub use identifier::{identifier, labels};
pub use name::{ProjectName, Version};
pub use rel_path::RelPath;
pub use repo::{is_internal_ip, is_local_host, GitProtocol, RepoPolicy, RepoUrl};
