//! Forge webhook deliveries (GitHub, GitLab, Gitea): which forge, which event, and what a push
//! says (pull requests: [`crate::preview`]), read from the forges' documented payloads into one
//! shape, every ref and commit checked as a client's would be. Pure: the server checks signatures and decides what to build.

use serde::{Deserialize, Serialize};

use crate::task::TaskId;
use crate::time::Timestamp;
use crate::validate::{CommitSha, GitRef, ValidationError};

/// A forge that delivers webhooks, named as in `POST /api/v1/hooks/{forge}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forge {
    GitHub,
    GitLab,
    Gitea,
}

impl Forge {
    pub fn parse(s: &str) -> Option<Forge> {
        match s {
            "github" => Some(Forge::GitHub),
            "gitlab" => Some(Forge::GitLab),
            "gitea" => Some(Forge::Gitea),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea => "gitea",
        }
    }

    /// The header naming the event (`X-GitHub-Event: push`).
    pub fn event_header(self) -> &'static str {
        match self {
            Forge::GitHub => "x-github-event",
            Forge::GitLab => "x-gitlab-event",
            Forge::Gitea => "x-gitea-event",
        }
    }

    /// The headers carrying a delivery's id, in order of preference (GitLab sends
    /// `Idempotency-Key` on retries of one delivery, `X-Gitlab-Event-UUID` on each).
    pub fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Forge::GitHub => &["x-github-delivery"],
            Forge::GitLab => &["idempotency-key", "x-gitlab-event-uuid"],
            Forge::Gitea => &["x-gitea-delivery"],
        }
    }
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// The forge checking the hook (GitHub's `ping`), with the repository's URLs when it says.
    Ping { repo_urls: Vec<String> },
    /// Commits pushed to a branch or tag, or the ref deleted.
    Push(Push),
    /// A pull (merge) request opened, updated or closed.
    PullRequest(crate::preview::PullRequest),
    /// An event cloudbuild does not act on, by its name.
    Other(String),
}

/// A push, as every forge says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The repository's URLs as the payload gives them (clone, SSH, web).
    pub repo_urls: Vec<String>,
    pub target: RefTarget,
    /// The commit to build: the one the ref now points at (for an annotated tag, the tagged
    /// commit, not the tag object); `None` when the push deleted the ref.
    pub after: Option<CommitSha>,
    /// The ref's commit before the push, as the forge says it (hex digits only; empty if none):
    /// with `after`, what tells one push from another to the same commit (a force-push back).
    pub before: String,
    /// The head commit's message (for `[skip ci]`).
    pub message: String,
    /// Every path the pushed commits added, modified or removed; empty when the payload
    /// does not list every pushed commit (GitLab lists 20), so that no filter is applied.
    pub changed: Vec<String>,
    /// Who pushed (the forge's user name), for the task's record.
    pub pusher: String,
}

/// A pushed ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefTarget {
    Branch(GitRef),
    Tag(GitRef),
}

impl RefTarget {
    /// The branch or tag name.
    pub fn name(&self) -> &str {
        match self {
            RefTarget::Branch(r) | RefTarget::Tag(r) => r.as_str(),
        }
    }
}

/// A delivery as recorded (`GET /api/v1/projects/{name}/deliveries`): what came, and what
/// cloudbuild did with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `github`, `gitlab`, `gitea`.
    pub forge: String,
    /// The forge's delivery id (empty when it sent none).
    pub id: String,
    pub project: String,
    /// The event header's value (`push`, `Tag Push Hook`).
    pub event: String,
    /// The pushed branch or tag, and the commit it points at (none: deleted).
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
    /// The commit the ref pointed at before the push (none: new, or not a push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    pub received_at: Timestamp,
    /// What happened: `queued`, `skipped`, `duplicate`, `ignored`, `deleted`, `failed`.
    pub outcome: String,
    /// Why, in words (`[skip ci] in the head commit`, `no trigger rule matches branch dev`).
    pub detail: String,
    #[serde(default)]
    pub task: Option<TaskId>,
}

/// `GET /api/v1/projects/{name}/deliveries`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// Why a delivery's body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("the payload is not the forge's JSON: {0}")]
    Json(String),
    #[error("the payload's {field} is not valid: {source}")]
    Invalid { field: &'static str, source: ValidationError },
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Commit {
    id: String,
    message: String,
    added: Vec<String>,
    modified: Vec<String>,
    removed: Vec<String>,
}

/// A repository as the forges describe one (also a pull request's sides: [`crate::preview`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Repository {
    // GitHub, Gitea
    pub(crate) full_name: Option<String>,
    pub(crate) id: Option<u64>,
    clone_url: Option<String>,
    ssh_url: Option<String>,
    html_url: Option<String>,
    // GitLab (`project`)
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct User {
    name: Option<String>,
    login: Option<String>,
    username: Option<String>,
}

/// The fields of a push that the three forges share (GitLab names some apart).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PushPayload {
    #[serde(rename = "ref")]
    reference: String,
    before: String,
    after: String,
    // GitLab: the commit a tag points at (`after` is the tag object for an annotated tag).
    checkout_sha: Option<String>,
    deleted: bool,
    commits: Vec<Commit>,
    // GitLab (and Gitea): how many commits were pushed; `commits` lists at most 20 of them.
    total_commits_count: Option<usize>,
    head_commit: Option<Commit>,
    repository: Repository,
    pusher: User,
    // GitLab
    project: Option<Repository>,
    user_username: Option<String>,
    // Gitea's `delete` event
    ref_type: Option<String>,
    sender: User,
}

/// The all-zero commit id forges send as `after` when a ref was deleted.
fn is_zero(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// Reads a delivery of `forge` whose event header said `event`.
pub fn parse(forge: Forge, event: &str, body: &[u8]) -> Result<HookEvent, HookError> {
    let push_event = match (forge, event) {
        (Forge::GitHub, "ping") => {
            let p: PushPayload = serde_json::from_slice(body).map_err(|e| HookError::Json(e.to_string()))?;
            return Ok(HookEvent::Ping { repo_urls: urls(&p) });
        }
        (Forge::GitHub | Forge::Gitea, "pull_request") | (Forge::GitLab, "Merge Request Hook") => {
            return crate::preview::parse(forge, body).map(HookEvent::PullRequest);
        }
        (Forge::GitHub | Forge::Gitea, "push") | (Forge::GitLab, "Push Hook" | "Tag Push Hook") => true,
        (Forge::Gitea, "delete") => false,
        (_, other) => return Ok(HookEvent::Other(other.to_owned())),
    };
    let p: PushPayload = serde_json::from_slice(body).map_err(|e| HookError::Json(e.to_string()))?;
    let invalid = |field| move |source| HookError::Invalid { field, source };
    let target = if push_event {
        if let Some(branch) = p.reference.strip_prefix("refs/heads/") {
            RefTarget::Branch(GitRef::parse(branch).map_err(invalid("ref"))?)
        } else if let Some(tag) = p.reference.strip_prefix("refs/tags/") {
            RefTarget::Tag(GitRef::parse(tag).map_err(invalid("ref"))?)
        } else {
            return Ok(HookEvent::Other(format!("push to {}", p.reference)));
        }
    } else {
        // Gitea's `delete`: a bare ref name and its type.
        let name = GitRef::parse(&p.reference).map_err(invalid("ref"))?;
        match p.ref_type.as_deref() {
            Some("tag") => RefTarget::Tag(name),
            _ => RefTarget::Branch(name),
        }
    };
    let deleted = !push_event || p.deleted || is_zero(&p.after);
    // An annotated tag's `after` is the tag object: GitLab says the commit in `checkout_sha`,
    // GitHub and Gitea in `head_commit`.
    let built = p
        .checkout_sha
        .as_deref()
        .or(p.head_commit.as_ref().map(|c| c.id.as_str()))
        .filter(|c| !c.is_empty() && !is_zero(c))
        .unwrap_or(&p.after);
    let after = if deleted { None } else { Some(CommitSha::parse(built).map_err(invalid("after"))?) };
    // `before` is part of what makes a push the same as another: a full commit id (or none).
    let before = if p.before.is_empty() || is_zero(&p.before) {
        p.before.clone()
    } else {
        CommitSha::parse(&p.before).map_err(invalid("before"))?.as_str().to_owned()
    };
    let head = after.as_ref().and_then(|a| p.commits.iter().find(|c| c.id.eq_ignore_ascii_case(a.as_str())));
    let message = head.or(p.head_commit.as_ref()).or(p.commits.last()).map(|c| c.message.clone()).unwrap_or_default();
    let mut changed: Vec<String> =
        p.commits.iter().flat_map(|c| c.added.iter().chain(&c.modified).chain(&c.removed)).cloned().collect();
    changed.sort();
    changed.dedup();
    if p.total_commits_count.is_some_and(|n| n > p.commits.len()) {
        changed.clear();
    }
    let repo_urls = urls(&p);
    let pusher = [p.user_username, p.pusher.login, p.pusher.username, p.pusher.name, p.sender.login]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty())
        .unwrap_or_default();
    Ok(HookEvent::Push(Push { repo_urls, target, after, before, message, changed, pusher }))
}

/// The repository's URLs a payload gives (GitLab's under `project`).
fn urls(p: &PushPayload) -> Vec<String> {
    p.project.as_ref().unwrap_or(&p.repository).urls()
}

impl Repository {
    /// Its clone, SSH and web URLs, as given.
    pub(crate) fn urls(&self) -> Vec<String> {
        [&self.clone_url, &self.ssh_url, &self.html_url, &self.git_http_url, &self.git_ssh_url, &self.web_url]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// Whether a commit message asks for no build: `[skip ci]` or `[ci skip]` (as GitHub Actions,
/// GitLab CI and Gitea Actions read it), in any case.
pub fn skips_ci(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("[skip ci]") || m.contains("[ci skip]")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

    #[test]
    fn a_github_push_and_ping_and_a_branch_deletion() {
        let body = format!(
            r#"{{"ref":"refs/heads/main","before":"{z}","after":"{SHA}","deleted":false,
              "repository":{{"clone_url":"https://github.com/o/r.git","ssh_url":"git@github.com:o/r.git","html_url":"https://github.com/o/r"}},
              "pusher":{{"name":"octocat"}},"head_commit":{{"id":"{SHA}","message":"Fix [skip ci]"}},
              "commits":[{{"id":"{SHA}","message":"Fix [skip ci]","added":["a.js"],"modified":["src/b.js"],"removed":[]}}]}}"#,
            z = "0".repeat(40)
        );
        let HookEvent::Push(p) = parse(Forge::GitHub, "push", body.as_bytes()).unwrap() else { panic!() };
        assert_eq!(p.target, RefTarget::Branch(GitRef::parse("main").unwrap()));
        assert_eq!(p.after.as_ref().map(|a| a.as_str()), Some(SHA));
        assert_eq!(p.repo_urls.len(), 3);
        assert_eq!((p.pusher.as_str(), p.changed.clone()), ("octocat", vec!["a.js".to_owned(), "src/b.js".to_owned()]));
        assert!(skips_ci(&p.message));
        assert_eq!(parse(Forge::GitHub, "ping", b"{}").unwrap(), HookEvent::Ping { repo_urls: vec![] });
        assert_eq!(parse(Forge::GitHub, "issues", b"{}").unwrap(), HookEvent::Other("issues".into()));
        let gone = format!(r#"{{"ref":"refs/heads/feature","after":"{}","deleted":true}}"#, "0".repeat(40));
        let HookEvent::Push(p) = parse(Forge::GitHub, "push", gone.as_bytes()).unwrap() else { panic!() };
        assert_eq!(p.after, None);
    }

    #[test]
    fn a_push_listing_only_some_of_its_commits_names_no_changed_files() {
        let commit = format!(r#"{{"id":"{SHA}","message":"m","added":["docs/a.md"],"modified":[],"removed":[]}}"#);
        let body = |total: usize| {
            format!(
                r#"{{"ref":"refs/heads/main","before":"{z}","after":"{SHA}","total_commits_count":{total},
                  "project":{{"git_http_url":"https://gitlab.com/o/r.git"}},"commits":[{commit}]}}"#,
                z = "0".repeat(40)
            )
        };
        let HookEvent::Push(all) = parse(Forge::GitLab, "Push Hook", body(1).as_bytes()).unwrap() else { panic!() };
        assert_eq!(all.changed, ["docs/a.md"]);
        let HookEvent::Push(some) = parse(Forge::GitLab, "Push Hook", body(21).as_bytes()).unwrap() else { panic!() };
        assert!(some.changed.is_empty(), "20 of 21 commits listed: the files are not known");
    }

    #[test]
    fn gitlab_and_gitea_pushes_tags_and_deletions() {
        let tag = format!(
            r#"{{"object_kind":"tag_push","ref":"refs/tags/v1.2.0","after":"{SHA}","user_username":"jsmith",
              "project":{{"git_http_url":"http://gitlab.example/o/r.git","git_ssh_url":"git@gitlab.example:o/r.git","web_url":"http://gitlab.example/o/r"}},
              "commits":[]}}"#
        );
        let HookEvent::Push(p) = parse(Forge::GitLab, "Tag Push Hook", tag.as_bytes()).unwrap() else { panic!() };
        assert_eq!(p.target, RefTarget::Tag(GitRef::parse("v1.2.0").unwrap()));
        assert_eq!((p.pusher.as_str(), p.repo_urls[0].as_str()), ("jsmith", "http://gitlab.example/o/r.git"));
        let gitea = format!(
            r#"{{"ref":"refs/heads/dev","after":"{SHA}","pusher":{{"login":"gitea-user"}},
              "repository":{{"clone_url":"http://gitea.example/o/r.git"}},"commits":[{{"id":"{SHA}","message":"m"}}]}}"#
        );
        let HookEvent::Push(p) = parse(Forge::Gitea, "push", gitea.as_bytes()).unwrap() else { panic!() };
        assert_eq!((p.target.name(), p.pusher.as_str()), ("dev", "gitea-user"));
        let deleted = br#"{"ref":"dev","ref_type":"branch","sender":{"login":"u"},"repository":{"clone_url":"http://gitea.example/o/r.git"}}"#;
        let HookEvent::Push(p) = parse(Forge::Gitea, "delete", deleted).unwrap() else { panic!() };
        assert_eq!((p.target.name(), p.after.clone()), ("dev", None));
    }

    #[test]
    fn an_annotated_tag_builds_the_tagged_commit_not_the_tag_object() {
        let tag_object = "9".repeat(40);
        let github = format!(
            r#"{{"ref":"refs/tags/v2.0.0","before":"{z}","after":"{tag_object}","head_commit":{{"id":"{SHA}","message":"m"}}}}"#,
            z = "0".repeat(40)
        );
        let HookEvent::Push(p) = parse(Forge::GitHub, "push", github.as_bytes()).unwrap() else { panic!() };
        assert_eq!(p.after.unwrap().as_str(), SHA);
        let gitlab = format!(r#"{{"ref":"refs/tags/v2.0.0","after":"{tag_object}","checkout_sha":"{SHA}"}}"#);
        let HookEvent::Push(p) = parse(Forge::GitLab, "Tag Push Hook", gitlab.as_bytes()).unwrap() else { panic!() };
        assert_eq!(p.after.unwrap().as_str(), SHA);
        let gone = format!(r#"{{"ref":"refs/tags/v2.0.0","after":"{}","checkout_sha":null}}"#, "0".repeat(40));
        let HookEvent::Push(p) = parse(Forge::GitLab, "Tag Push Hook", gone.as_bytes()).unwrap() else { panic!() };
        assert_eq!(p.after, None, "a deleted tag");
    }

    #[test]
    fn refs_and_commits_are_checked_like_a_clients() {
        for bad_ref in ["refs/heads/--upload-pack=x", "refs/heads/a..b", "refs/heads/a b"] {
            let body = format!(r#"{{"ref":"{bad_ref}","after":"{SHA}"}}"#);
            assert!(matches!(
                parse(Forge::GitHub, "push", body.as_bytes()),
                Err(HookError::Invalid { field: "ref", .. })
            ));
        }
        let body = br#"{"ref":"refs/heads/main","after":"HEAD~1"}"#;
        assert!(matches!(parse(Forge::GitHub, "push", body), Err(HookError::Invalid { field: "after", .. })));
        assert!(matches!(parse(Forge::GitHub, "push", b"not json"), Err(HookError::Json(_))));
        let note = format!(r#"{{"ref":"refs/notes/x","after":"{SHA}"}}"#);
        assert_eq!(
            parse(Forge::GitHub, "push", note.as_bytes()).unwrap(),
            HookEvent::Other("push to refs/notes/x".into())
        );
        assert!(skips_ci("Release [CI SKIP]") && !skips_ci("skip ci"));
    }
}
