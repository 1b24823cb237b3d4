//! Projects: the registered things builds belong to (name, the repository they build from,
//! default branch, visibility) and the requests that create and edit them.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Who may read a project (once users exist: `private` for its members, `internal` for every
/// signed-in user).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Private,
    Internal,
}

/// A registered project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// The npm-style name its builds publish under (`@team/site`).
    pub name: String,
    /// The repository URL it builds from, as given when it was registered.
    pub repo: String,
    /// That repository's identity (`github.com/org/site`, see
    /// [`crate::validate::RepoUrl::identity`]): publishes from another repository are refused.
    pub repo_identity: String,
    pub default_branch: String,
    pub visibility: Visibility,
    /// Its members and their roles, by user name (admins need none).
    #[serde(default)]
    pub members: Vec<crate::user::Member>,
    /// Who registered it (a caller's name), and when.
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// `POST /api/v1/projects`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
    pub repo: String,
    /// Default `main`.
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub visibility: Option<Visibility>,
}

/// `PATCH /api/v1/projects/{name}`: only the fields given change; any other field (a
/// `created_by`, a role) is refused, not ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditProject {
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub visibility: Option<Visibility>,
}

/// `GET /api/v1/projects`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectList {
    pub projects: Vec<Project>,
}
