//! Commit statuses back to the forge: a project linked to its repository on a forge (with a
//! token, sealed like a secret and never shown) gets `pending` when a push's build is queued
//! and `success` / `failure` / `error` when it ends, with the build's page as the link and the
//! site's URL in the description, through the forge's statuses API. Each (task, state) is
//! sent once across servers (claimed in the deliveries' store), retried with backoff, and
//! recorded where the project's deliveries are listed. Only the API base configured for the
//! forge is called. Knows no HTTP of its own callers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use cloudbuild_proto::project::{forge_path, ForgeLink, Project, SetForgeLink};
use cloudbuild_proto::task::{Task, TaskId, TaskState, Trigger};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::validate::ValidationError;
use cloudbuild_proto::webhook::{Delivery, Forge};
use cloudbuild_store::TaskQuery;

use super::callers::Caller;
use super::policy::ProjectAction;
use super::projects::{self, ProjectError};
use crate::state::AppState;

/// How often each server looks for builds whose state its forge has not been told.
pub const TICK: Duration = Duration::from_secs(2);

/// The vault slot of a project's forge token.
fn slot(project: &str) -> String {
    format!("forge-token/{project}")
}

/// Links a project to its repository on a forge, with a token that may set commit statuses
/// (maintainers; audited). The answer carries no token.
pub async fn link(state: &AppState, caller: &Caller, name: &str, req: SetForgeLink) -> Result<ForgeLink, ProjectError> {
    let result = async {
        let project = projects::get(state, caller, name, ProjectAction::Maintain).await?;
        let default_path = project.repo_identity.split_once('/').map(|(_, p)| p.to_owned()).unwrap_or_default();
        let path = forge_path(req.forge, req.path.as_deref().unwrap_or(&default_path))?;
        let invalid = |field, reason: String| ProjectError::Invalid(ValidationError { field, reason });
        // The token goes to the forge's API: only for a repository that forge serves.
        let host = repo_host(&project);
        if !state.settings.forges.serves(req.forge, host) {
            let forge = req.forge.as_str();
            return Err(invalid(
                "forge",
                match state.settings.forges.api_url(req.forge) {
                    Some(api) => format!(
                        "project {name}'s repository is on {host}, which [forges.{forge}] ({api}) does not serve: \
                         set its api_url (and hosts) in the server's configuration"
                    ),
                    None => format!("no [forges.{forge}] api_url is configured on this server"),
                },
            ));
        }
        let token = req.token.trim();
        if token.is_empty() || token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("token", "must be the forge's token: 1 to 1024 visible ASCII characters".into()));
        }
        let sealed = state.vault.seal(&slot(name), token).map_err(|e| ProjectError::Vault(e.to_string()))?;
        let link =
            ForgeLink { forge: req.forge, path, token: sealed, set_by: caller.name.clone(), set_at: Timestamp::now() };
        projects::update(state, name, |p| {
            p.forge = Some(link.clone());
            Ok::<_, ProjectError>(())
        })
        .await?;
        Ok(ForgeLink { token: String::new(), ..link })
    }
    .await;
    super::audit::record(state, caller, "project.forge.set", format!("project {name}"), Some(name), &result).await;
    result
}

/// The host of a project's repository (`github.com` of `github.com/org/site`; `file` for a
/// local repository, whose identity is `file:<path>`).
fn repo_host(project: &Project) -> &str {
    let identity = project.repo_identity.as_str();
    if identity.starts_with("file:") {
        "file"
    } else {
        identity.split('/').next().unwrap_or_default()
    }
}

/// Unlinks a project from its forge: no more statuses (maintainers; audited).
pub async fn unlink(state: &AppState, caller: &Caller, name: &str) -> Result<(), ProjectError> {
    let result = async {
        projects::get(state, caller, name, ProjectAction::Maintain).await?;
        projects::update(state, name, |p| {
            p.forge = None;
            Ok::<_, ProjectError>(())
        })
        .await?;
        Ok(())
    }
    .await;
    super::audit::record(state, caller, "project.forge.remove", format!("project {name}"), Some(name), &result).await;
    result
}

/// The state a forge is told for a task state: `pending`, or the end.
fn status_of(task: &Task) -> &'static str {
    match task.state {
        TaskState::AwaitingApproval | TaskState::Gated | TaskState::Queued | TaskState::Running => "pending",
        // Nothing to build is not a failure: the commit's checks pass.
        TaskState::Succeeded | TaskState::Skipped => "success",
        TaskState::Failed | TaskState::TimedOut => "failure",
        TaskState::Cancelled => "error",
    }
}

/// The forge's own word for `status` (GitLab says `failed` and `canceled`).
fn forge_state(forge: Forge, status: &'static str) -> &'static str {
    match (forge, status) {
        (Forge::GitLab, "failure") => "failed",
        (Forge::GitLab, "error") => "canceled",
        (_, s) => s,
    }
}

/// One status call's request: URL, headers, JSON body.
pub struct StatusCall {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: serde_json::Value,
}

/// The statuses API call for `status` of `task` at `api` (the forge's API base).
pub fn call(
    api: &str,
    link: &ForgeLink,
    token: &str,
    task: &Task,
    status: &'static str,
    links: &Links,
) -> Option<StatusCall> {
    let sha = task.commit.as_deref()?;
    // One context per kind: a pull request's head gets `cloudbuild/preview`.
    let context = format!("cloudbuild/{}", task.env.kind());
    let description = truncate(&links.description, 140);
    let state = forge_state(link.forge, status);
    Some(match link.forge {
        Forge::GitHub => StatusCall {
            url: format!("{api}/repos/{}/statuses/{sha}", link.path),
            headers: vec![
                ("authorization", format!("Bearer {token}")),
                ("accept", "application/vnd.github+json".into()),
                ("x-github-api-version", "2022-11-28".into()),
            ],
            body: serde_json::json!({"state": state, "target_url": links.build, "description": description, "context": context}),
        },
        Forge::GitLab => {
            let mut body = serde_json::json!({
                "state": state, "target_url": links.build, "description": description, "name": context,
            });
            if let Some(git_ref) = &links.git_ref {
                body["ref"] = git_ref.clone().into();
            }
            StatusCall {
                url: format!("{api}/projects/{}/statuses/{sha}", link.path.replace('/', "%2F")),
                headers: vec![("private-token", token.to_owned())],
                body,
            }
        }
        Forge::Gitea => StatusCall {
            url: format!("{api}/repos/{}/statuses/{sha}", link.path),
            headers: vec![("authorization", format!("token {token}"))],
            body: serde_json::json!({"state": state, "target_url": links.build, "description": description, "context": context}),
        },
    })
}

/// What a status links to and says.
pub struct Links {
    /// The build's dashboard page.
    pub build: String,
    pub description: String,
    /// The branch GitLab files the status under (`ref`): the pushed one, or a same-project
    /// merge request's source branch; none for a fork's (its branch is not the project's).
    pub git_ref: Option<String>,
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn links(state: &AppState, project: &Project, task: &Task, status: &str) -> Links {
    let build = format!("{}/tasks/{}", state.public_url.trim_end_matches('/'), task.id);
    let git_ref = match task.env.pull_request() {
        None => Some(task.branch.clone()),
        Some(n) => project.preview(n).filter(|p| !p.fork).map(|p| p.source_branch.clone()),
    };
    Links { build, description: describe(task, status), git_ref }
}

fn describe(task: &Task, status: &str) -> String {
    match (status, &task.url) {
        ("pending", _) => format!("cloudbuild: building for {}", task.env.as_str()),
        ("success", _) if task.state == TaskState::Skipped => {
            format!("skipped: {}", task.reason.as_deref().unwrap_or("nothing to build"))
        }
        ("success", Some(site)) => format!("published {} at {site}", task.version),
        ("success", None) => format!("published {}", task.version),
        ("error", _) => "cloudbuild: cancelled".to_owned(),
        _ => format!("cloudbuild: {}", task.state.as_str().replace('_', " ")),
    }
}

/// Why a call failed, and whether trying again may help.
#[derive(Debug)]
struct CallError {
    message: String,
    transient: bool,
}

/// Sends one status, retrying transport errors, 429 and 5xx answers with backoff (1 s, 2 s,
/// 4 s, 8 s); returns the answer's status and how many tries it took.
async fn send(client: &reqwest::Client, call: &StatusCall) -> (Result<u16, String>, u32) {
    let tries = AtomicU32::new(0);
    let attempt = || async {
        tries.fetch_add(1, Ordering::Relaxed);
        let mut req = client.post(&call.url).json(&call.body);
        for (k, v) in &call.headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.map_err(|e| CallError { message: e.without_url().to_string(), transient: true })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let text: String = resp.text().await.unwrap_or_default().chars().take(200).collect();
        let transient = status.is_server_error() || status.as_u16() == 429;
        Err(CallError { message: format!("HTTP {}: {}", status.as_u16(), text.trim()), transient })
    };
    let policy = ExponentialBuilder::default().with_min_delay(Duration::from_secs(1)).with_max_times(4).with_jitter();
    let result = attempt.retry(policy).when(|e: &CallError| e.transient).await.map_err(|e| e.message);
    (result, tries.load(Ordering::Relaxed))
}

/// Reports what changed every [`TICK`] until the server stops.
pub async fn run(state: Arc<AppState>) {
    let mut reporter = match Reporter::new() {
        Ok(r) => r,
        Err(e) => return tracing::error!("no HTTP client for commit statuses: {e}"),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Err(e) = reporter.report(&state).await {
            tracing::warn!("reporting commit statuses: {e}");
        }
    }
}

/// The statuses one server has told (or seen told), and its HTTP client.
pub struct Reporter {
    client: reqwest::Client,
    told: HashMap<TaskId, &'static str>,
}

impl Reporter {
    /// A client that follows no redirect (only the configured API base is ever called) and
    /// gives up on an answer after 10 s.
    pub fn new() -> Result<Reporter, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cloudbuild/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Reporter { client, told: HashMap::new() })
    }

    /// Tells the forges what changed since the last look: the newest tasks, the unfinished
    /// ones, and those told `pending` here, each once per status.
    pub async fn report(&mut self, state: &AppState) -> Result<(), cloudbuild_store::StoreError> {
        let mut seen: HashMap<TaskId, Task> = HashMap::new();
        let newest = state.store.list_tasks(&TaskQuery { limit: 100, ..Default::default() }).await?;
        seen.extend(newest.into_iter().map(|t| (t.id, t)));
        for s in [TaskState::AwaitingApproval, TaskState::Gated, TaskState::Queued, TaskState::Running] {
            let open = state.store.list_tasks(&TaskQuery { state: Some(s), limit: 500, ..Default::default() }).await?;
            seen.extend(open.into_iter().map(|t| (t.id, t)));
        }
        let waiting: Vec<TaskId> =
            self.told.iter().filter(|(id, s)| **s == "pending" && !seen.contains_key(id)).map(|(id, _)| *id).collect();
        for id in waiting {
            match state.store.get_task(id).await {
                Ok(task) => {
                    seen.insert(id, task);
                }
                Err(_) => {
                    self.told.remove(&id);
                }
            }
        }
        let mut projects: HashMap<String, Option<Project>> = HashMap::new();
        let mut ids: Vec<TaskId> = seen.keys().copied().collect();
        ids.sort();
        let long_ago = Timestamp(Timestamp::now().0 - OLD_END.as_micros() as i64);
        for id in ids {
            let task = &seen[&id];
            // A push's build tells its forge; a preview's, the forge the project is linked to.
            let forge = match (task.trigger, task.env.pull_request()) {
                (Trigger::Webhook(forge), _) => Some(forge),
                (Trigger::Preview, _) | (Trigger::Retry, Some(_)) => None,
                _ => continue,
            };
            let status = status_of(task);
            if self.told.get(&id) == Some(&status) || task.commit.is_none() {
                continue;
            }
            if !projects.contains_key(&task.name) {
                projects.insert(task.name.clone(), state.store.get_project(&task.name).await?);
            }
            let link = projects[&task.name]
                .as_ref()
                .and_then(|p| p.forge.as_ref().filter(|l| forge.is_none_or(|f| l.forge == f)));
            // Not (or no longer) linked, a build from before the link, or one that ended long
            // ago (its record may be gone): nothing to tell.
            let Some(link) = link.filter(|l| task.created_at >= l.set_at) else {
                self.told.remove(&id);
                continue;
            };
            if task.finished_at.is_some_and(|f| f < long_ago) {
                continue;
            }
            let project = projects[&task.name].as_ref().expect("looked up above");
            let told = match status {
                "pending" => deliver(state, &self.client, project, link, task, status).await?,
                // The end waits while another server is still sending `pending`, which would
                // otherwise land last and stay on the commit.
                _ if sending(state, project, task, "pending").await? => false,
                _ => deliver(state, &self.client, project, link, task, status).await?,
            };
            if told {
                self.told.insert(id, status);
            }
        }
        // An end is remembered while its task is among those looked at (so it is not claimed
        // again on every tick); a pending one until its end is told.
        self.told.retain(|id, s| *s == "pending" || seen.contains_key(id));
        Ok(())
    }
}

/// How long a claimed status may stay `sending` before another server takes it over (its
/// sender died with the claim).
const STALE_SENDING: Duration = Duration::from_secs(120);

/// How long after its end a build is no longer told (its record may be gone).
const OLD_END: Duration = Duration::from_secs(86_400);

fn status_key(project: &str, task: TaskId, status: &str) -> String {
    format!("status:{project}:{task}:{status}")
}

/// Whether `status` of `task` is claimed by a server that is still sending it.
async fn sending(
    state: &AppState,
    project: &Project,
    task: &Task,
    status: &str,
) -> Result<bool, cloudbuild_store::StoreError> {
    let record = state.store.get_delivery(&status_key(&project.name, task.id, status)).await?;
    let fresh = Timestamp(Timestamp::now().0 - STALE_SENDING.as_micros() as i64);
    Ok(record.is_some_and(|r| r.outcome == "sending" && r.received_at > fresh))
}

/// Sends `status` of `task` once across servers: the first server to claim it sends it and
/// records the outcome where the project's deliveries are listed (a claim left `sending` by
/// a server that died is taken over). Returns whether the status is told (sent, or handled
/// by another server).
async fn deliver(
    state: &AppState,
    client: &reqwest::Client,
    project: &Project,
    link: &ForgeLink,
    task: &Task,
    status: &'static str,
) -> Result<bool, cloudbuild_store::StoreError> {
    let key = status_key(&project.name, task.id, status);
    let mut record = Delivery {
        forge: link.forge.as_str().to_owned(),
        id: String::new(),
        project: project.name.clone(),
        event: "commit status".into(),
        reference: Some(task.branch.clone()),
        after: task.commit.clone(),
        before: None,
        received_at: Timestamp::now(),
        outcome: "sending".into(),
        detail: format!("{status} for task {}", task.id),
        task: Some(task.id),
    };
    if !state.store.claim_delivery(&key, &record, true).await? {
        if sending(state, project, task, status).await?
            || state.store.get_delivery(&key).await?.is_none_or(|r| r.outcome != "sending")
        {
            return Ok(true);
        }
        state.store.release_delivery(&key).await?;
        if !state.store.claim_delivery(&key, &record, true).await? {
            return Ok(true);
        }
    }
    if status == "pending" && state.store.get_task(task.id).await.is_ok_and(|t| t.state.is_terminal()) {
        // Ended meanwhile: its end is told next, and a late `pending` would stay on the commit.
        record.outcome = "not sent".into();
        record.detail = format!("pending: task {} ended before it was sent", task.id);
        state.store.set_delivery(&key, &record).await?;
        return Ok(true);
    }
    // Checked again at each send: the configuration or the project's repository may have
    // changed since the link was made, and the token goes only where its repository is.
    if !state.settings.forges.serves(link.forge, repo_host(project)) {
        record.outcome = "not sent".into();
        record.detail = format!(
            "{status}: [forges.{}] does not serve {} (the configuration or the repository changed since the link)",
            link.forge.as_str(),
            repo_host(project)
        );
        state.store.set_delivery(&key, &record).await?;
        return Ok(true);
    }
    let Some(api) = state.settings.forges.api_url(link.forge) else {
        record.outcome = "not sent".into();
        record.detail = format!("{status}: no [forges.{}] api_url is configured", link.forge.as_str());
        state.store.set_delivery(&key, &record).await?;
        return Ok(true);
    };
    let token = match state.vault.open(&slot(&project.name), &link.token) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(project = %project.name, "cannot open the forge token: {e}");
            record.outcome = "not sent".into();
            record.detail = format!("{status}: the forge token could not be opened (set it again)");
            state.store.set_delivery(&key, &record).await?;
            return Ok(true);
        }
    };
    let links = links(state, project, task, status);
    let Some(call) = call(api, link, &token, task, status, &links) else { return Ok(true) };
    let (result, tries) = send(client, &call).await;
    let after = if tries == 1 { String::new() } else { format!(" after {tries} tries") };
    (record.outcome, record.detail) = match result {
        Ok(code) => ("sent".into(), format!("{status} → HTTP {code}{after}: {}", links.description)),
        Err(e) => {
            tracing::warn!(project = %project.name, task = task.id, "commit status not delivered: {e}");
            ("failed".into(), format!("{status} not delivered{after}: {e}"))
        }
    };
    record.received_at = Timestamp::now();
    state.store.set_delivery(&key, &record).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: &str) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": 7, "name": "site", "version": "1.2.0", "repo": "https://gitlab.example.com/g/site.git",
            "branch": "main", "commit": "a".repeat(40), "build_cmd": null, "env": "prod", "trigger": "webhook:gitlab",
            "force": false, "requested_by": "webhook:gitlab", "state": state, "stage": null, "reason": null,
            "attempt": 1, "worker": null, "retry_of": null, "url": "https://site.prod.example.com/",
            "cancel_requested": false, "created_at": "2026-01-01T00:00:00Z", "started_at": null,
            "finished_at": null, "last_seq": 3,
        }))
        .unwrap()
    }

    fn link(forge: Forge, path: &str) -> ForgeLink {
        ForgeLink { forge, path: path.into(), token: String::new(), set_by: "max".into(), set_at: Timestamp(0) }
    }

    #[test]
    fn each_forge_gets_its_own_call() {
        let links = |t: &Task, s: &str| Links {
            build: "https://cb.example.com/tasks/7".into(),
            description: describe(t, s),
            git_ref: Some(t.branch.clone()),
        };
        let failed = task("failed");
        let call = super::call(
            "https://gitlab.example.com/api/v4",
            &link(Forge::GitLab, "g/sub/site"),
            "glpat-x",
            &failed,
            "failure",
            &links(&failed, "failure"),
        )
        .unwrap();
        assert_eq!(
            call.url,
            format!("https://gitlab.example.com/api/v4/projects/g%2Fsub%2Fsite/statuses/{}", "a".repeat(40))
        );
        assert_eq!(call.headers, [("private-token", "glpat-x".to_owned())]);
        assert_eq!(call.body["state"], "failed");
        assert_eq!((call.body["name"].as_str(), call.body["ref"].as_str()), (Some("cloudbuild/prod"), Some("main")));
        let cancelled = task("cancelled");
        let call = super::call(
            "https://gitlab.example.com/api/v4",
            &link(Forge::GitLab, "g/site"),
            "t",
            &cancelled,
            "error",
            &links(&cancelled, "error"),
        )
        .unwrap();
        assert_eq!(call.body["state"], "canceled");
        let fork_mr = Links { git_ref: None, ..links(&cancelled, "error") };
        let call = super::call(
            "https://gitlab.example.com/api/v4",
            &link(Forge::GitLab, "g/site"),
            "t",
            &cancelled,
            "error",
            &fork_mr,
        )
        .unwrap();
        assert!(call.body.get("ref").is_none(), "a fork's merge request names no branch of the project");

        let done = task("succeeded");
        let call = super::call(
            "https://git.example.com/api/v1",
            &link(Forge::Gitea, "o/site"),
            "gt",
            &done,
            "success",
            &links(&done, "success"),
        )
        .unwrap();
        assert_eq!(call.url, format!("https://git.example.com/api/v1/repos/o/site/statuses/{}", "a".repeat(40)));
        assert_eq!(call.headers, [("authorization", "token gt".to_owned())]);
        assert_eq!(call.body["state"], "success");
        assert_eq!(call.body["context"], "cloudbuild/prod");
        assert_eq!(call.body["description"], "published 1.2.0 at https://site.prod.example.com/");
        assert_eq!(call.body["target_url"], "https://cb.example.com/tasks/7");

        let mut long = task("succeeded");
        long.url = Some(format!("https://{}.example.com/", "x".repeat(200)));
        let description = links(&long, "success").description;
        let call = super::call(
            "https://api.github.com",
            &link(Forge::GitHub, "o/site"),
            "t",
            &long,
            "success",
            &Links { build: String::new(), description, git_ref: None },
        )
        .unwrap();
        assert_eq!(call.body["description"].as_str().unwrap().chars().count(), 140, "GitHub's limit");
        let mut unpinned = task("queued");
        unpinned.commit = None;
        assert!(super::call(
            "https://api.github.com",
            &link(Forge::GitHub, "o/site"),
            "t",
            &unpinned,
            "pending",
            &links(&unpinned, "pending")
        )
        .is_none());
    }
}
