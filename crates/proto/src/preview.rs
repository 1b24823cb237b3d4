//! Pull-request (GitLab: merge-request) previews: what a forge's pull request event says, read
//! from GitHub's and Gitea's `pull_request` and GitLab's `Merge Request Hook` payloads into one
//! shape, and the record of an open preview kept with its project. Pure: the server decides
//! what to build or remove.

use serde::{Deserialize, Serialize};

use crate::task::TaskId;
use crate::time::Timestamp;
use crate::validate::{CommitSha, GitRef};
use crate::webhook::{Forge, HookError, Repository};

/// The most previews one project keeps open; a pull request opened beyond it is not built.
pub const MAX_OPEN: usize = 100;

/// The longest pull request title kept (longer ones are cut, on a character boundary).
const MAX_TITLE: usize = 200;

/// What a pull request event asks of its preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullRequestAction {
    /// Opened, reopened, or new commits pushed to it: build its head.
    Build,
    /// Closed or merged: remove the preview.
    Close,
    /// Anything else (a title edited, a label added, GitLab's update without new commits), by
    /// the forge's word.
    Other(String),
}

/// A pull request event, as every forge says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The base (target) repository's URLs: the project's.
    pub repo_urls: Vec<String>,
    /// Its number in the base repository (GitLab's `iid`), from 1.
    pub number: u32,
    pub action: PullRequestAction,
    /// The head commit (required to build).
    pub head: Option<CommitSha>,
    /// The ref the base repository keeps the head under, which the build fetches:
    /// `refs/pull/<N>/head` (GitHub, Gitea) or `refs/merge-requests/<N>/head` (GitLab).
    pub head_ref: GitRef,
    /// The branch it comes from (in the fork, for a fork), for display.
    pub source_branch: String,
    /// Whether the head is in another repository than the base (a fork).
    pub fork: bool,
    pub title: String,
    /// Its page on the forge (`http(s)` only; empty when the payload has none).
    pub web_url: String,
    /// Who opened it.
    pub author: String,
    /// The forge's own time of this change ([`forge_time`]; none when it sent none it could
    /// be read as): with the action and head, what tells one event from another (a pull
    /// request closed and reopened at the same head builds again), and what orders them.
    pub updated_at: Option<Timestamp>,
}

/// An open preview, kept in its project's record (`GET /api/v1/projects/{name}/previews`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub number: u32,
    pub forge: Forge,
    pub title: String,
    #[serde(default)]
    pub web_url: String,
    pub source_branch: String,
    pub author: String,
    pub fork: bool,
    /// The head commit last built (or being built).
    pub head: String,
    /// The forge's time of the update that built it ([`PullRequest::updated_at`]): an update
    /// older than this arriving late is not built over it.
    #[serde(default)]
    pub forge_updated_at: Option<Timestamp>,
    /// Its newest build.
    pub task: Option<TaskId>,
    pub opened_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the sweep removes it unless the pull request is updated first.
    pub expires_at: Timestamp,
}

/// A pull request closed recently, kept so that an update of it delivered late (forges do not
/// promise order) does not build its preview again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedPullRequest {
    pub number: u32,
    /// The forge's time of the close ([`PullRequest::updated_at`]).
    pub forge_updated_at: Option<Timestamp>,
    pub closed_at: Timestamp,
}

/// How many closed pull requests a project remembers (the newest).
pub const MAX_CLOSED: usize = 200;

/// A preview as listed: the record and where its site is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewView {
    #[serde(flatten)]
    pub preview: Preview,
    /// `preview/pr-<N>`.
    pub env: String,
    /// Where its site is (answers once a build has published).
    pub url: String,
    /// The state of its newest build (`succeeded`: the site shows its head).
    #[serde(default)]
    pub build: Option<crate::task::TaskState>,
}

/// `GET /api/v1/projects/{name}/previews`: by number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewList {
    pub previews: Vec<PreviewView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Side {
    #[serde(rename = "ref")]
    reference: String,
    sha: String,
    repo: Option<Repository>,
    repo_id: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Login {
    login: Option<String>,
    username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GitHubPull {
    number: u64,
    title: String,
    html_url: String,
    updated_at: Option<String>,
    head: Side,
    base: Side,
    user: Login,
}

/// GitHub's and Gitea's `pull_request` event.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GitHubPayload {
    action: String,
    number: u64,
    pull_request: GitHubPull,
    repository: Repository,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LastCommit {
    id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MergeRequest {
    iid: u64,
    title: String,
    url: String,
    action: String,
    oldrev: Option<String>,
    last_commit: LastCommit,
    source_branch: String,
    source_project_id: Option<u64>,
    target_project_id: Option<u64>,
    updated_at: Option<String>,
}

/// GitLab's `Merge Request Hook`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GitLabPayload {
    object_attributes: MergeRequest,
    project: Repository,
    user: Login,
}

/// A forge's time of a change, as an instant: RFC 3339 (GitHub, Gitea, with any offset) or
/// GitLab's `2026-11-30 10:00:00 UTC` (or `+0100`). `None` for anything else: such an event is
/// not ordered against others.
pub fn forge_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    Timestamp::parse(s).or_else(|| {
        let utc = s.strip_suffix(" UTC").map(|t| format!("{t} +0000"));
        let with_zone = utc.as_deref().unwrap_or(s);
        chrono::DateTime::parse_from_str(with_zone, "%Y-%m-%d %H:%M:%S %z")
            .ok()
            .map(|t| Timestamp(t.timestamp_micros()))
    })
}

/// A name for display (an author, a branch): control and bidirectional-override characters
/// dropped (they would rewrite a terminal or reorder what a reader sees), cut at 200 bytes.
fn clean(s: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
    let mut out: String = s.chars().filter(|c| !c.is_control() && !bidi(*c)).collect();
    if out.len() > MAX_TITLE {
        let mut cut = MAX_TITLE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn number(n: u64) -> Result<u32, HookError> {
    u32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| HookError::Json(format!("pull request number {n}")))
}

/// A title for display: see [`clean`].
fn clean_title(title: &str) -> String {
    clean(title)
}

/// A link for display: kept only when it is an `http(s)` URL (never `javascript:`).
fn clean_url(url: &str) -> String {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        url.to_owned()
    } else {
        String::new()
    }
}

/// Reads a pull request event of `forge` (GitHub or Gitea `pull_request`, GitLab `Merge
/// Request Hook`), checking its commit and numbers as a client's would be.
pub fn parse(forge: Forge, body: &[u8]) -> Result<PullRequest, HookError> {
    let invalid = |field| move |source| HookError::Invalid { field, source };
    let json = |e: serde_json::Error| HookError::Json(e.to_string());
    let (pr, head) = match forge {
        Forge::GitHub | Forge::Gitea => {
            let p: GitHubPayload = serde_json::from_slice(body).map_err(json)?;
            let pull = &p.pull_request;
            if p.number != 0 && pull.number != 0 && p.number != pull.number {
                return Err(HookError::Json(format!(
                    "number {} and pull_request.number {} disagree",
                    p.number, pull.number
                )));
            }
            let n = number(if p.number != 0 { p.number } else { pull.number })?;
            let action = match p.action.as_str() {
                "opened" | "reopened" | "synchronize" | "synchronized" => PullRequestAction::Build,
                "closed" => PullRequestAction::Close,
                other => PullRequestAction::Other(other.to_owned()),
            };
            // A fork's head is in another repository; a deleted fork's head repository is null.
            let same = |h: &Repository, b: &Repository| match (&h.full_name, &b.full_name, h.id, b.id) {
                (Some(h), Some(b), _, _) => h.eq_ignore_ascii_case(b),
                (_, _, Some(h), Some(b)) => h == b,
                _ => false,
            };
            let fork = match (&pull.head.repo, &pull.base.repo) {
                (Some(h), Some(b)) => !same(h, b),
                (None, _) if pull.head.repo_id.is_some() => pull.head.repo_id != pull.base.repo_id,
                _ => true,
            };
            let pr = PullRequest {
                repo_urls: p.repository.urls(),
                number: n,
                action,
                head: None,
                head_ref: GitRef::parse(&format!("refs/pull/{n}/head")).map_err(invalid("number"))?,
                source_branch: clean(&pull.head.reference),
                fork,
                title: clean_title(&pull.title),
                web_url: clean_url(&pull.html_url),
                author: clean(&pull.user.login.clone().or(pull.user.username.clone()).unwrap_or_default()),
                updated_at: pull.updated_at.as_deref().and_then(forge_time),
            };
            (pr, pull.head.sha.clone())
        }
        Forge::GitLab => {
            let p: GitLabPayload = serde_json::from_slice(body).map_err(json)?;
            let mr = &p.object_attributes;
            let n = number(mr.iid)?;
            let action = match mr.action.as_str() {
                "open" | "reopen" => PullRequestAction::Build,
                // An update that pushed commits says the old head; a title edit does not.
                "update" if mr.oldrev.as_deref().is_some_and(|r| !r.is_empty()) => PullRequestAction::Build,
                "update" => PullRequestAction::Other("update without new commits".into()),
                "close" | "merge" => PullRequestAction::Close,
                other => PullRequestAction::Other(other.to_owned()),
            };
            let pr = PullRequest {
                repo_urls: p.project.urls(),
                number: n,
                action,
                head: None,
                head_ref: GitRef::parse(&format!("refs/merge-requests/{n}/head")).map_err(invalid("iid"))?,
                source_branch: clean(&mr.source_branch),
                fork: mr.source_project_id != mr.target_project_id,
                title: clean_title(&mr.title),
                web_url: clean_url(&mr.url),
                author: clean(&p.user.username.clone().or(p.user.login.clone()).unwrap_or_default()),
                updated_at: mr.updated_at.as_deref().and_then(forge_time),
            };
            (pr, mr.last_commit.id.clone())
        }
    };
    let head = match (&pr.action, head.is_empty()) {
        (PullRequestAction::Build, _) | (_, false) => Some(CommitSha::parse(&head).map_err(invalid("head"))?),
        _ => None,
    };
    if head.as_ref().is_some_and(|h| h.as_str().bytes().all(|b| b == b'0')) {
        let reason = "the all-zero commit names no head".into();
        return Err(HookError::Invalid {
            field: "head",
            source: crate::validate::ValidationError { field: "head", reason },
        });
    }
    Ok(PullRequest { head, ..pr })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

    fn github(action: &str, head_repo: &str) -> String {
        format!(
            r#"{{"action":"{action}","number":12,"pull_request":{{"number":12,"title":"Add\u0007 login page",
              "html_url":"https://github.com/o/r/pull/12","updated_at":"2026-11-30T10:00:00Z",
              "head":{{"ref":"feature/login","sha":"{SHA}","repo":{{"full_name":"{head_repo}"}}}},
              "base":{{"ref":"main","sha":"{SHA}","repo":{{"full_name":"o/r"}}}},"user":{{"login":"octocat"}}}},
              "repository":{{"clone_url":"https://github.com/o/r.git","html_url":"https://github.com/o/r"}}}}"#
        )
    }

    #[test]
    fn github_pull_requests_opened_updated_closed_and_from_forks() {
        let pr = parse(Forge::GitHub, github("opened", "o/r").as_bytes()).unwrap();
        assert_eq!((pr.number, &pr.action, pr.fork), (12, &PullRequestAction::Build, false));
        assert_eq!(pr.head.as_ref().unwrap().as_str(), SHA);
        assert_eq!(pr.head_ref.as_str(), "refs/pull/12/head");
        assert_eq!((pr.title.as_str(), pr.author.as_str()), ("Add login page", "octocat"));
        assert_eq!(pr.repo_urls[0], "https://github.com/o/r.git");
        let pr = parse(Forge::GitHub, github("synchronize", "alice/r").as_bytes()).unwrap();
        assert_eq!((pr.action, pr.fork), (PullRequestAction::Build, true));
        let closed = parse(Forge::GitHub, github("closed", "o/r").as_bytes()).unwrap();
        assert_eq!(closed.action, PullRequestAction::Close);
        let edited = parse(Forge::GitHub, github("labeled", "o/r").as_bytes()).unwrap();
        assert_eq!(edited.action, PullRequestAction::Other("labeled".into()));
    }

    #[test]
    fn gitea_pull_requests_say_synchronized() {
        let body = format!(
            r#"{{"action":"synchronized","number":3,"pull_request":{{"number":3,"title":"t","html_url":"http://gitea.example/o/r/pulls/3",
              "head":{{"ref":"dev","sha":"{SHA}","repo_id":7,"repo":{{"id":7,"full_name":"o/r"}}}},
              "base":{{"ref":"main","sha":"{SHA}","repo_id":7,"repo":{{"id":7,"full_name":"o/r"}}}},"user":{{"login":"g"}}}},
              "repository":{{"clone_url":"http://gitea.example/o/r.git"}}}}"#
        );
        let pr = parse(Forge::Gitea, body.as_bytes()).unwrap();
        assert_eq!((pr.number, pr.action, pr.fork), (3, PullRequestAction::Build, false));
        assert_eq!(pr.web_url, "http://gitea.example/o/r/pulls/3");
    }

    #[test]
    fn gitlab_merge_requests_build_only_on_new_commits() {
        let body = |action: &str, oldrev: &str, source: u32| {
            format!(
                r#"{{"object_kind":"merge_request","user":{{"username":"jsmith"}},
                  "project":{{"git_http_url":"https://gitlab.example/o/r.git","web_url":"https://gitlab.example/o/r"}},
                  "object_attributes":{{"iid":5,"title":"MR","url":"javascript:alert(1)","action":"{action}"{oldrev},
                  "source_branch":"feat","source_project_id":{source},"target_project_id":1,
                  "last_commit":{{"id":"{SHA}"}},"updated_at":"2026-11-30 10:00:00 UTC"}}}}"#
            )
        };
        let open = parse(Forge::GitLab, body("open", "", 1).as_bytes()).unwrap();
        assert_eq!((open.number, &open.action, open.fork), (5, &PullRequestAction::Build, false));
        assert_eq!(open.head_ref.as_str(), "refs/merge-requests/5/head");
        assert_eq!(open.web_url, "", "only http(s) links are kept");
        let pushed = format!(r#","oldrev":"{}""#, "a".repeat(40));
        assert_eq!(
            parse(Forge::GitLab, body("update", &pushed, 2).as_bytes()).unwrap().action,
            PullRequestAction::Build
        );
        assert!(parse(Forge::GitLab, body("update", &pushed, 2).as_bytes()).unwrap().fork);
        assert!(matches!(
            parse(Forge::GitLab, body("update", "", 1).as_bytes()).unwrap().action,
            PullRequestAction::Other(_)
        ));
        assert_eq!(parse(Forge::GitLab, body("merge", "", 1).as_bytes()).unwrap().action, PullRequestAction::Close);
    }

    #[test]
    fn forge_times_are_instants_whatever_their_offset() {
        let utc = forge_time("2026-12-01T04:30:00Z").unwrap();
        assert_eq!(forge_time("2026-12-01T06:30:00+02:00"), Some(utc), "Gitea with the server's offset");
        assert_eq!(forge_time("2026-12-01 04:30:00 UTC"), Some(utc), "GitLab");
        assert_eq!(forge_time("2026-12-01 05:30:00 +0100"), Some(utc));
        assert!(forge_time("2026-12-01T05:10:00+02:00").unwrap() < utc);
        assert_eq!(forge_time("garbage"), None);
        assert_eq!(forge_time(""), None);
    }

    #[test]
    fn heads_and_numbers_are_checked() {
        let bad = github("opened", "o/r").replace(SHA, "HEAD~1");
        assert!(matches!(parse(Forge::GitHub, bad.as_bytes()), Err(HookError::Invalid { field: "head", .. })));
        let zero = github("opened", "o/r").replace("\"number\":12", "\"number\":0");
        assert!(matches!(parse(Forge::GitHub, zero.as_bytes()), Err(HookError::Json(_))));
        assert!(matches!(parse(Forge::GitHub, b"[]"), Err(HookError::Json(_))));
        let disagree = github("opened", "o/r").replacen("\"number\":12", "\"number\":13", 1);
        assert!(matches!(parse(Forge::GitHub, disagree.as_bytes()), Err(HookError::Json(_))));
        let zero = github("opened", "o/r").replace(SHA, &"0".repeat(40));
        assert!(matches!(parse(Forge::GitHub, zero.as_bytes()), Err(HookError::Invalid { field: "head", .. })));
        assert_eq!(clean("bob\u{1b}[2J\u{9b}\u{202e}x"), "bob[2Jx", "no terminal or bidi controls");
        let long = "é".repeat(300);
        assert!(clean_title(&long).len() <= MAX_TITLE && clean_title(&long).starts_with('é'));
    }
}
