//! Tasks (builds): their states, stages, and the REST request and response bodies.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;
use crate::webhook::Forge;

/// A task id: a positive integer assigned by the store, easy to type in `cloudbuild logs 42`.
pub type TaskId = i64;

/// Where a task publishes, like the original's test and production buckets, plus one preview
/// environment per open pull (merge) request: `test`, `prod`, `preview/pr-<N>`.
///
/// Like GitLab's dynamic environments, each pull request's preview has its own releases and
/// current release, so everything keyed by environment (releases, switch locks, retention)
/// keeps previews apart without knowing about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Environment {
    #[default]
    Test,
    Prod,
    /// The preview of pull (merge) request number `N` (GitLab's `iid`), from 1.
    Preview(u32),
}

impl Environment {
    /// `test`, `prod` or `preview/pr-<N>`: the name stored and shown (and taken by `releases
    /// --env` and `rollback --env`; publishing and secrets take `test` and `prod` only).
    pub fn as_str(self) -> std::borrow::Cow<'static, str> {
        match self {
            Environment::Preview(n) => format!("preview/pr-{n}").into(),
            other => other.kind().into(),
        }
    }

    /// `test`, `prod` or `preview`: which target, secrets scope and status context it uses.
    pub fn kind(self) -> &'static str {
        match self {
            Environment::Test => "test",
            Environment::Prod => "prod",
            Environment::Preview(_) => "preview",
        }
    }

    /// The pull request number of a preview.
    pub fn pull_request(self) -> Option<u32> {
        match self {
            Environment::Preview(n) => Some(n),
            _ => None,
        }
    }

    /// Parses `test`, `prod` or `preview/pr-<N>` (`N` from 1, without leading zeros).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "test" => Some(Environment::Test),
            "prod" => Some(Environment::Prod),
            _ => s.strip_prefix("preview/pr-").and_then(parse_pull_request).map(Environment::Preview),
        }
    }
}

/// A pull request number as written in names (`12`): from 1, digits only, no leading zero.
pub fn parse_pull_request(s: &str) -> Option<u32> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for Environment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Environment::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown environment `{s}`: expected test, prod or preview/pr-<N>"))
        })
    }
}

/// What created a task, stored and shown as `cli`, `socket.io`, `webhook:<forge>`, `preview`,
/// `schedule`, `api` (the default) or `retry`. A client's own request says `cli`, `api` or
/// `socket.io`; the server sets the others (webhooks, previews, schedules, retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    Cli,
    SocketIo,
    /// A push delivered by this forge's webhook.
    Webhook(Forge),
    /// A pull or merge request's preview build.
    Preview,
    /// A project's schedule.
    Schedule,
    #[default]
    Api,
    Retry,
}

impl Trigger {
    /// The name stored and shown (`webhook:github`).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cli => "cli",
            Trigger::SocketIo => "socket.io",
            Trigger::Webhook(Forge::GitHub) => "webhook:github",
            Trigger::Webhook(Forge::GitLab) => "webhook:gitlab",
            Trigger::Webhook(Forge::Gitea) => "webhook:gitea",
            Trigger::Preview => "preview",
            Trigger::Schedule => "schedule",
            Trigger::Api => "api",
            Trigger::Retry => "retry",
        }
    }

    /// Parses a stored name (also `socket_io`, as tasks stored before 2026-11 spell it).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cli" => Trigger::Cli,
            "socket.io" | "socket_io" => Trigger::SocketIo,
            "preview" => Trigger::Preview,
            "schedule" => Trigger::Schedule,
            "api" => Trigger::Api,
            "retry" => Trigger::Retry,
            _ => Trigger::Webhook(Forge::parse(s.strip_prefix("webhook:")?)?),
        })
    }

    /// Whether a client's request may name this trigger (`cli`, `api`, `socket.io`): the
    /// others say the server itself started the task.
    pub fn client_may_claim(self) -> bool {
        matches!(self, Trigger::Cli | Trigger::Api | Trigger::SocketIo)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Trigger {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Trigger::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown trigger `{s}`: expected cli, socket.io, webhook:<forge>, preview, schedule, api or retry"
            ))
        })
    }
}

/// The lifecycle state of a task. `queued → running → succeeded | skipped | failed | cancelled | timed_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Held by a freeze window (`gate: queue`): not dispatched until every window holding it
    /// opens, or an override releases it; then `queued`.
    Gated,
    /// A `prod` publish of a project that requires approval: not dispatched until a
    /// maintainer other than its requester (or an admin) approves it; rejected or expired, it
    /// ends `cancelled` with the reason.
    AwaitingApproval,
    Queued,
    Running,
    Succeeded,
    /// Ended before installing: its `[trigger]` path filters match none of the files its
    /// push changed. Nothing was built or published.
    Skipped,
    Failed,
    Cancelled,
    TimedOut,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 9] = [
        TaskState::AwaitingApproval,
        TaskState::Gated,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Skipped,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::TimedOut,
    ];

    /// Whether no further change can happen.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::AwaitingApproval | TaskState::Gated | TaskState::Queued | TaskState::Running)
    }

    /// The snake_case name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Gated => "gated",
            TaskState::AwaitingApproval => "awaiting_approval",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Skipped => "skipped",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::TimedOut => "timed_out",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<Self> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pipeline stage, named as the original protocol names its actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stage {
    #[serde(rename = "prepare")]
    Prepare,
    #[serde(rename = "download repo")]
    DownloadRepo,
    #[serde(rename = "install")]
    Install,
    #[serde(rename = "check")]
    Check,
    #[serde(rename = "build")]
    Build,
    #[serde(rename = "pre-publish")]
    PrePublish,
    #[serde(rename = "publish")]
    Publish,
}

impl Stage {
    /// Every stage, in pipeline order (`check` runs only when checks are configured).
    pub const ALL: [Stage; 7] = [
        Stage::Prepare,
        Stage::DownloadRepo,
        Stage::Install,
        Stage::Check,
        Stage::Build,
        Stage::PrePublish,
        Stage::Publish,
    ];

    /// The action name of the original protocol (`download repo`, `pre-publish`, ...).
    pub fn action(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare",
            Stage::DownloadRepo => "download repo",
            Stage::Install => "install",
            Stage::Check => "check",
            Stage::Build => "build",
            Stage::PrePublish => "pre-publish",
            Stage::Publish => "publish",
        }
    }

    /// The failure action of the original protocol (note `download failed`, not `download repo failed`).
    pub fn failed_action(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare failed",
            Stage::DownloadRepo => "download failed",
            Stage::Install => "install failed",
            Stage::Check => "check failed",
            Stage::Build => "build failed",
            Stage::PrePublish => "pre-publish failed",
            Stage::Publish => "publish failed",
        }
    }

    /// The stage an action (start or success message) belongs to.
    pub fn from_action(action: &str) -> Option<Self> {
        Stage::ALL.into_iter().find(|s| s.action() == action)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action())
    }
}

/// Actions that are not stages: task creation and the terminal outcomes.
pub mod actions {
    /// The first event of every task.
    pub const CREATE_TASK: &str = "create task";
    /// The last stage event of a successful task; the message carries the URL.
    pub const BUILD_SUCCESS: &str = "build success";
    /// A task cancelled by a user.
    pub const CANCELLED: &str = "cancelled";
    /// A push's build that its path filters skip; the message says why.
    pub const SKIPPED: &str = "skipped";
    /// A task that ran past its task timeout.
    pub const TIMED_OUT: &str = "timed out";
    /// An unexpected error (worker lost after the last attempt, internal fault).
    pub const ERROR: &str = "error";
    /// The task is back in the queue after its worker was lost.
    pub const REQUEUED: &str = "requeued";
    /// The task waits for a worker with its labels, and none is registered.
    pub const WAITING: &str = "waiting";
    /// A freeze window holds the task (`gate: queue`); the message says which and until when.
    pub const GATED: &str = "gated";
    /// The windows that held a gated task opened (or an override released it): it is queued.
    pub const GATE_OPEN: &str = "gate open";
    /// A freeze window was overridden for this task; the message says by whom and why.
    pub const GATE_OVERRIDE: &str = "gate override";
    /// A `prod` publish waits for a maintainer's approval; the message says how to give it.
    pub const AWAITING_APPROVAL: &str = "awaiting approval";
    /// It was approved; the message says by whom and why.
    pub const APPROVED: &str = "approved";
}

/// `POST /api/v1/tasks`: what to build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// Git remote URL (https or ssh by default).
    pub repo: String,
    /// Branch or tag to build.
    pub branch: String,
    /// The exact commit to build (full id); absent: the branch's head when the build starts.
    /// `cloudbuild publish` pins the commit it checked against `origin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Project name (npm package name). Must equal `name` in the built commit's `package.json`.
    pub name: String,
    /// Project version (semver). Must equal `version` in the built commit's `package.json`.
    pub version: String,
    /// Build command overriding the repository's settings (must pass the command policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_cmd: Option<String>,
    /// `test` (default) or `prod`.
    #[serde(default)]
    pub env: Environment,
    /// What created the task; `api` when absent. `retry` is reserved for the retry endpoint.
    #[serde(default)]
    pub trigger: Trigger,
    /// Publish even if this version is already released to `prod` (a new build of it).
    #[serde(default)]
    pub force: bool,
    /// Labels a worker must have to run this task (e.g. `linux`, `node20`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Build without the worker's dependency and output caches (and save nothing to them).
    #[serde(default)]
    pub no_cache: bool,
    /// What to do when a freeze window holds the environment: `refuse` (default) or `queue`
    /// (wait as `gated` until it opens).
    #[serde(default, skip_serializing_if = "is_refuse")]
    pub gate: crate::gate::GateMode,
    /// Publish through any freeze window holding it, for this task only, with this reason
    /// (admins, or the role a window names; audited).
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub gate_override: Option<String>,
}

fn is_refuse(m: &crate::gate::GateMode) -> bool {
    *m == crate::gate::GateMode::Refuse
}

/// Whether a task reused a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheResult {
    Hit,
    Miss,
    /// Not used: `--no-cache`, caches off on the worker, or nothing to key it by (no lockfile).
    Off,
}

/// What a task's build reused, as its worker reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheReport {
    /// The saved `node_modules` (absent: not reached, or skipped by an output hit).
    pub dependencies: Option<CacheResult>,
    /// The saved build output.
    pub output: Option<CacheResult>,
    /// The task whose build output was reused (an output hit).
    pub output_of: Option<TaskId>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub name: String,
    pub version: String,
    pub repo: String,
    pub branch: String,
    /// The commit built: pinned at creation (publish, retry), or the branch's head as resolved
    /// by `download repo`.
    pub commit: Option<String>,
    pub build_cmd: Option<String>,
    pub env: Environment,
    pub trigger: Trigger,
    /// What caused it beyond its trigger: the forge's delivery (`github delivery <id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Whether an existing `prod` release of this version may be replaced.
    pub force: bool,
    pub requested_by: String,
    pub state: TaskState,
    /// The current stage while running; the failing stage once failed.
    pub stage: Option<Stage>,
    /// Why it failed, timed out or was cancelled.
    pub reason: Option<String>,
    /// 1 for the first run; incremented when a lost worker's task is requeued.
    pub attempt: u32,
    pub worker: Option<String>,
    /// The task this one retries.
    pub retry_of: Option<TaskId>,
    /// The published site, once succeeded.
    pub url: Option<String>,
    pub cancel_requested: bool,
    pub created_at: Timestamp,
    /// When the worker started `prepare`.
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Sequence number of the last event in the task's log.
    pub last_seq: u64,
    /// Labels a worker must have to run this task.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Whether the publish asked to build without caches (`--no-cache`).
    #[serde(default)]
    pub no_cache: bool,
    /// What the build reused, once the worker knows.
    #[serde(default)]
    pub cache: Option<CacheReport>,
    /// The files its push changed, for the project's `[trigger]` path filters (webhook
    /// builds of a branch push; at most [`MAX_CHANGED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
}

/// The most changed paths a task keeps; a push that changed more is built whatever its path
/// filters say.
pub const MAX_CHANGED: usize = 300;

/// `GET /api/v1/tasks`: a page of tasks, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Pass as `before=` to get the next page; absent on the last page.
    pub next_before: Option<TaskId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_round_trip_by_their_stored_names() {
        let all = [
            Trigger::Cli,
            Trigger::SocketIo,
            Trigger::Webhook(Forge::GitHub),
            Trigger::Webhook(Forge::GitLab),
            Trigger::Webhook(Forge::Gitea),
            Trigger::Preview,
            Trigger::Schedule,
            Trigger::Api,
            Trigger::Retry,
        ];
        for t in all {
            assert_eq!(Trigger::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Trigger>(&json).unwrap(), t, "{json}");
        }
        assert_eq!(serde_json::to_string(&Trigger::Webhook(Forge::GitLab)).unwrap(), r#""webhook:gitlab""#);
        assert_eq!(Trigger::parse("socket_io"), Some(Trigger::SocketIo), "as stored before");
        for bad in ["webhook", "webhook:bitbucket", "Webhook:github", ""] {
            assert_eq!(Trigger::parse(bad), None, "{bad}");
        }
        let err = serde_json::from_str::<Trigger>(r#""cron""#).unwrap_err().to_string();
        assert!(err.contains("unknown trigger `cron`"), "{err}");
        let claimed: Vec<_> = all.iter().filter(|t| t.client_may_claim()).map(|t| t.as_str()).collect();
        assert_eq!(claimed, ["cli", "socket.io", "api"]);
    }
}
