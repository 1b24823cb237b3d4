//! Projects: the registered things builds belong to (name, the repository they build from,
//! default branch, visibility, which forge pushes build, the webhook secret) and the requests
//! that create and edit them.

use globset::{Glob, GlobBuilder};
use serde::{Deserialize, Serialize};

use crate::task::Environment;
use crate::time::Timestamp;
use crate::webhook::RefTarget;

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
    /// Which pushes of its forge build (webhooks).
    #[serde(default)]
    pub triggers: TriggerRules,
    /// The secret its forge signs webhook deliveries with: sealed in the store; in the clear
    /// only in answers to its maintainers; absent until first asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Where its commit statuses go: the forge, its repository there, the token (sealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<ForgeLink>,
    /// Its schedules (cron builds), with the last due time each one ran.
    #[serde(default)]
    pub schedules: Vec<crate::schedule::Schedule>,
    /// Its open pull requests' previews, by number.
    #[serde(default)]
    pub previews: Vec<crate::preview::Preview>,
    /// Its pull requests closed lately (at most [`crate::preview::MAX_CLOSED`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closed_pull_requests: Vec<crate::preview::ClosedPullRequest>,
    /// The project's own freeze windows (its maintainers'; global ones are kept apart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<crate::gate::FreezeWindow>,
    /// Whether `prod` publishes wait for an approval, and how long.
    #[serde(default)]
    pub approvals: crate::gate::Approvals,
    /// Who registered it (a caller's name), and when.
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Project {
    /// The record of pull request `number`'s open preview.
    pub fn preview(&self, number: u32) -> Option<&crate::preview::Preview> {
        self.previews.iter().find(|p| p.number == number)
    }
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
    #[serde(default)]
    pub triggers: Option<TriggerRules>,
    #[serde(default)]
    pub approvals: Option<crate::gate::Approvals>,
}

/// Which forge pushes build, and where: a push to a branch matching `branches` builds for
/// `test`, a tag matching `tags` for `prod` (globs: `*` within a path segment, `**` across).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRules {
    /// Branch globs; empty: the project's default branch only.
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(default = "default_tags")]
    pub tags: Vec<String>,
    /// A newer push to a branch cancels that branch's older build still queued (not running).
    #[serde(default = "default_supersede")]
    pub supersede: bool,
    /// Pull (merge) requests get a preview site, built from their head.
    #[serde(default = "default_previews")]
    pub previews: bool,
    /// Pull requests from forks get one too (built without the project's secrets).
    #[serde(default)]
    pub fork_previews: bool,
    /// Days a preview lives after its pull request's last update before the sweep removes it.
    #[serde(default = "default_preview_days")]
    pub preview_days: u32,
}

/// The most days a preview may be kept without an update.
pub const MAX_PREVIEW_DAYS: u32 = 365;

fn default_previews() -> bool {
    true
}

fn default_preview_days() -> u32 {
    14
}

/// A ref pattern: `*` does not cross a `/` (as in GitLab's and GitHub's branch filters).
fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

fn default_tags() -> Vec<String> {
    vec!["v*".to_owned()]
}

fn default_supersede() -> bool {
    true
}

impl Default for TriggerRules {
    fn default() -> Self {
        TriggerRules {
            branches: Vec::new(),
            tags: default_tags(),
            supersede: true,
            previews: true,
            fork_previews: false,
            preview_days: default_preview_days(),
        }
    }
}

impl TriggerRules {
    /// Checks every glob (at most 32, each at most 200 characters).
    pub fn validate(&self) -> Result<(), String> {
        if self.branches.len() + self.tags.len() > 32 {
            return Err("at most 32 branch and tag patterns".into());
        }
        if !(1..=MAX_PREVIEW_DAYS).contains(&self.preview_days) {
            return Err(format!("preview_days must be from 1 to {MAX_PREVIEW_DAYS}"));
        }
        for g in self.branches.iter().chain(&self.tags) {
            if g.is_empty() || g.len() > 200 {
                return Err(format!("`{g}` is not a pattern of 1 to 200 characters"));
            }
            glob(g).map_err(|e| format!("`{g}` is not a valid pattern: {e}"))?;
        }
        Ok(())
    }

    /// The environment a push to `target` builds for, if any.
    pub fn environment(&self, target: &RefTarget, default_branch: &str) -> Option<Environment> {
        let matches = |globs: &[String], name: &str| {
            globs.iter().any(|g| glob(g).is_ok_and(|g| g.compile_matcher().is_match(name)))
        };
        match target {
            RefTarget::Branch(b) if self.branches.is_empty() => {
                (b.as_str() == default_branch).then_some(Environment::Test)
            }
            RefTarget::Branch(b) => matches(&self.branches, b.as_str()).then_some(Environment::Test),
            RefTarget::Tag(t) => matches(&self.tags, t.as_str()).then_some(Environment::Prod),
        }
    }
}

/// `GET /api/v1/projects`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectList {
    pub projects: Vec<Project>,
}

/// `[trigger]` in a repository's `cloudbuild.toml`: which changed files make a push build
/// (as GitHub's `paths` / `paths-ignore` and GitLab's `rules:changes`). A file counts when it
/// matches `paths` (or `paths` is empty) and no `ignore_paths` pattern; a push builds when one
/// of its files counts. Globs as for the trigger rules (`docs/**`, `*.md` at the top only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathFilters {
    pub paths: Vec<String>,
    pub ignore_paths: Vec<String>,
}

impl PathFilters {
    /// Why a push that changed `changed` is not built (`None`: it is).
    ///
    /// # Errors
    /// A pattern that is not a valid glob, named.
    pub fn skip_reason(&self, changed: &[String]) -> Result<Option<String>, String> {
        if self.paths.is_empty() && self.ignore_paths.is_empty() {
            return Ok(None);
        }
        let set = |globs: &[String]| -> Result<globset::GlobSet, String> {
            let mut b = globset::GlobSetBuilder::new();
            for g in globs {
                b.add(glob(g).map_err(|e| format!("[trigger] pattern `{g}` is not valid: {e}"))?);
            }
            b.build().map_err(|e| e.to_string())
        };
        let (paths, ignored) = (set(&self.paths)?, set(&self.ignore_paths)?);
        let counts = |f: &String| (self.paths.is_empty() || paths.is_match(f)) && !ignored.is_match(f);
        if changed.iter().any(counts) {
            return Ok(None);
        }
        let files = match changed.len() {
            1 => format!("the 1 file it changed ({})", changed[0]),
            n => format!("the {n} files it changed"),
        };
        Ok(Some(match (self.paths.is_empty(), self.ignore_paths.is_empty()) {
            (false, true) => format!("none of {files} matches [trigger] paths = {:?} in cloudbuild.toml", self.paths),
            (true, false) => {
                let all = if changed.len() == 1 { "matches" } else { "all match" };
                format!("{files} {all} [trigger] ignore_paths = {:?} in cloudbuild.toml", self.ignore_paths)
            }
            _ => format!(
                "none of {files} matches [trigger] paths = {:?} outside ignore_paths = {:?} in cloudbuild.toml",
                self.paths, self.ignore_paths
            ),
        }))
    }
}

#[cfg(test)]
mod trigger_tests {
    use super::*;
    use crate::validate::GitRef;

    #[test]
    fn pushes_build_by_branch_and_tag_globs() {
        let branch = |b: &str| RefTarget::Branch(GitRef::parse(b).unwrap());
        let tag = |t: &str| RefTarget::Tag(GitRef::parse(t).unwrap());
        let rules = TriggerRules::default();
        assert_eq!(rules.environment(&branch("main"), "main"), Some(Environment::Test));
        assert_eq!(rules.environment(&branch("feature"), "main"), None);
        assert_eq!(rules.environment(&tag("v1.2.0"), "main"), Some(Environment::Prod));
        assert_eq!(rules.environment(&tag("nightly"), "main"), None);
        let rules = TriggerRules { branches: vec!["release/*".into(), "main".into()], ..Default::default() };
        assert_eq!(rules.environment(&branch("release/2.0"), "trunk"), Some(Environment::Test));
        assert_eq!(rules.environment(&branch("release/2.0/hotfix"), "trunk"), None, "`*` stays in its segment");
        assert_eq!(rules.environment(&branch("trunk"), "trunk"), None, "the list replaces the default branch");
        assert!(rules.validate().is_ok());
        assert!(TriggerRules { tags: vec!["v[".into()], ..Default::default() }.validate().is_err());
        let json: TriggerRules = serde_json::from_str("{}").unwrap();
        assert_eq!(json, TriggerRules::default());
    }
}

/// A project's repository on its forge, for commit statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgeLink {
    pub forge: crate::webhook::Forge,
    /// The repository's path there: `owner/repo` (GitLab: `group/subgroup/project`).
    pub path: String,
    /// The API token, sealed in the store; empty in every answer (it is never shown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    pub set_by: String,
    pub set_at: Timestamp,
}

/// `PUT /api/v1/projects/{name}/forge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetForgeLink {
    pub forge: crate::webhook::Forge,
    /// Default: the path of the project's repository URL (`github.com/org/site` → `org/site`).
    #[serde(default)]
    pub path: Option<String>,
    /// A token that may set commit statuses (GitHub: a fine-grained token with "Commit
    /// statuses: write"; GitLab: `api` scope; Gitea: `write:repository`).
    pub token: String,
}

/// Checks a repository path on a forge: `owner/repo` for GitHub and Gitea, two or more
/// segments for GitLab; each segment of letters, digits, `-`, `_`, `.`, not `.` or `..`.
pub fn forge_path(forge: crate::webhook::Forge, path: &str) -> Result<String, crate::validate::ValidationError> {
    let refuse = |reason: String| Err(crate::validate::ValidationError { field: "forge path", reason });
    // As copied from a clone URL: `octo/site.git` is the repository `octo/site`.
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    let count_ok = match forge {
        crate::webhook::Forge::GitLab => (2..=20).contains(&segments.len()),
        _ => segments.len() == 2,
    };
    if !count_ok || path.len() > 255 {
        return refuse(format!("`{}` is not owner/repository (GitLab: group/…/project)", path.escape_debug()));
    }
    for seg in &segments {
        let ok = !seg.is_empty()
            && *seg != "."
            && *seg != ".."
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return refuse(format!(
                "`{}` has a segment that is not letters, digits, `-`, `_`, `.`",
                path.escape_debug()
            ));
        }
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod forge_tests {
    use super::*;
    use crate::webhook::Forge;

    #[test]
    fn path_filters_build_a_push_when_one_changed_file_counts() {
        let f = |paths: &[&str], ignore: &[&str]| PathFilters {
            paths: paths.iter().map(|s| s.to_string()).collect(),
            ignore_paths: ignore.iter().map(|s| s.to_string()).collect(),
        };
        let changed = |files: &[&str]| files.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let docs = changed(&["docs/guide.md", "README.md"]);
        let code = changed(&["src/app.tsx", "docs/guide.md"]);
        assert_eq!(f(&[], &[]).skip_reason(&docs), Ok(None), "no filter: every push builds");
        let src = f(&["src/**", "package.json"], &[]);
        assert_eq!(src.skip_reason(&code), Ok(None));
        let why = src.skip_reason(&docs).unwrap().unwrap();
        assert!(why.contains("none of the 2 files it changed matches [trigger] paths"), "{why}");
        let no_docs = f(&[], &["docs/**", "*.md"]);
        assert_eq!(no_docs.skip_reason(&code), Ok(None));
        let why = no_docs.skip_reason(&docs).unwrap().unwrap();
        assert!(why.starts_with("the 2 files it changed all match [trigger] ignore_paths"), "{why}");
        // `*` stays in its directory: a Markdown file deeper down still counts.
        assert_eq!(no_docs.skip_reason(&changed(&["src/notes.md"])), Ok(None));
        let both = f(&["src/**"], &["src/**/*.test.ts"]);
        assert!(both.skip_reason(&changed(&["src/a.test.ts"])).unwrap().is_some());
        assert_eq!(both.skip_reason(&changed(&["src/a.ts"])), Ok(None));
        assert!(f(&["src/[a"], &[]).skip_reason(&code).unwrap_err().contains("`src/[a` is not valid"));
    }

    #[test]
    fn forge_paths_are_owner_and_repository() {
        assert_eq!(forge_path(Forge::GitHub, "octo/site").unwrap(), "octo/site");
        assert_eq!(forge_path(Forge::GitLab, "group/sub/site").unwrap(), "group/sub/site");
        assert_eq!(forge_path(Forge::GitHub, "/octo/site.git").unwrap(), "octo/site", "as in a clone URL");
        for bad in ["octo", "octo/site/x", "../site", "octo/..", "octo/si te", "octo/site?x=1", "octo/%2e%2e", ""] {
            assert!(forge_path(Forge::GitHub, bad).is_err(), "{bad}");
        }
        assert!(forge_path(Forge::GitLab, "group").is_err());
    }
}
