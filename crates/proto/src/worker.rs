//! The worker protocol: one WebSocket per worker, JSON text messages tagged by `type`.
//!
//! Lifecycle: the worker connects to `/api/v1/workers/connect` with `Authorization: Bearer
//! <token>`, sends [`WorkerMessage::Hello`], gets [`ServerMessage::Welcome`]. The server pushes
//! [`ServerMessage::Assign`] when a slot is free and [`ServerMessage::Cancel`] when a user
//! cancels. The worker sends heartbeats, events and one `Finished` per assignment. Every message
//! about a task carries `(task_id, attempt)`; the server refuses those of a stale attempt
//! (fencing), so a worker that lost its lease can never change a task again.
//!
//! Delivery: `Event` and `Finished` carry a number `seq`, counted from 1 within each attempt.
//! The server answers [`ServerMessage::Ack`] with the highest number it has stored; the worker
//! keeps every unacknowledged message and sends them again, in order, after reconnecting. The
//! store skips numbers it has already applied, so a resend neither loses nor duplicates events.

use serde::{Deserialize, Serialize};

use crate::event::OutputStream;
use crate::task::{Environment, Stage, TaskId};
use crate::time::Timestamp;

/// The version of this protocol; the server refuses workers that speak another one. 4: an
/// assignment's environment may be a preview (`preview/pr-<N>`), built from its pull
/// request's ref. 5: an assignment carries the server's mandatory checks, which a worker of
/// an earlier version would not run.
pub const PROTOCOL_VERSION: u32 = 5;

/// Worker → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    /// First message: who the worker is and how much it can run at once.
    Hello { protocol: u32, name: String, slots: u32, labels: Vec<String> },
    /// Keeps the leases of the listed tasks alive.
    Heartbeat { running: Vec<TaskAttempt> },
    /// Something happened in a running task; `seq` numbers it within the attempt.
    Event { task: TaskAttempt, seq: u64, event: WorkerEvent },
    /// The task's pipeline ended; exactly one per assignment, numbered after its events.
    Finished { task: TaskAttempt, seq: u64, outcome: Outcome },
}

/// Server → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The worker is registered under `worker_id`; heartbeat every `heartbeat_secs`.
    Welcome { worker_id: String, heartbeat_secs: u64 },
    /// Run this task.
    Assign { assignment: Box<Assignment> },
    /// Stop this task (a user cancelled it, or it timed out on the server's clock).
    Cancel { task: TaskAttempt },
    /// A message about a stale or finished attempt was refused; stop working on it.
    Refused { task: TaskAttempt, reason: String },
    /// Messages of this attempt up to `seq` are stored; the worker may forget them.
    Ack { task: TaskAttempt, seq: u64 },
    /// The server ends this connection for good (its token was revoked); do not reconnect.
    Goodbye { reason: String },
}

/// Fencing token: a task and the attempt a worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskAttempt {
    pub task_id: TaskId,
    pub attempt: u32,
}

/// What a worker reports while running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// A stage started or succeeded; the message is shown to users.
    Stage { stage: Stage, phase: StagePhase, message: String },
    /// A chunk of command output.
    Output { stream: OutputStream, text: String },
    /// `download repo` resolved the branch to this commit.
    Commit { sha: String },
    /// `download repo` read the version from the commit's `package.json`, for a task that
    /// publishes whatever version its commit carries (a webhook's; its version is empty).
    Version { version: String },
    /// What the build reused from the worker's caches (sent again as it changes).
    Cache { report: crate::task::CacheReport },
}

/// Start or success of a stage; failure is reported through [`Outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagePhase {
    Started,
    Succeeded,
}

/// How a task's pipeline ended on the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded {
        url: String,
    },
    /// Nothing to build: the push changed no file the project's path filters name.
    Skipped {
        reason: String,
    },
    Failed {
        stage: Stage,
        reason: String,
    },
    Cancelled {
        stage: Option<Stage>,
    },
    TimedOut {
        stage: Stage,
        reason: String,
    },
}

/// Everything a worker needs to run a task; values were validated by the server and are
/// validated again by the worker (a worker does not trust the network).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task: TaskAttempt,
    pub name: String,
    pub version: String,
    pub repo: String,
    pub branch: String,
    /// The commit to build, when pinned; else the branch's head.
    pub commit: Option<String>,
    pub build_cmd: Option<String>,
    pub env: Environment,
    /// The secret of this claim: publish calls send it (`X-Cloudbuild-Lease`), so that only the
    /// worker holding this attempt can publish the task. Never logged.
    pub lease_key: String,
    /// Protocols git may use (`GIT_ALLOW_PROTOCOL`).
    pub allowed_protocols: Vec<String>,
    /// Whether the repo host may be on a local network.
    pub allow_local_hosts: bool,
    /// Programs commands may start with.
    pub runners: Vec<String>,
    /// (`limits` on the wire, the name of protocol 1's first release.)
    #[serde(rename = "limits")]
    pub timeouts: Timeouts,
    /// The site will be served under a path (`/sites/<env>/<name>/`, or a bucket prefix), so
    /// root-absolute URLs in its HTML and CSS would miss: pre-publish looks for them.
    #[serde(default)]
    pub site_under_path: bool,
    /// The server's rule for packages' install scripts (`commands.ignore_install_scripts`).
    #[serde(default)]
    pub install_scripts: InstallScripts,
    /// The project's secrets for this environment (values never logged: `BuildSecret`'s
    /// `Debug` hides them), given to their stages and masked in all output.
    #[serde(default)]
    pub secrets: Vec<crate::secret::BuildSecret>,
    /// Which of the worker's build caches the task may read and write (none from a server
    /// that does not say).
    #[serde(default)]
    pub cache: CacheUse,
    /// The files the push that caused the task changed (repository paths), for the project's
    /// `[trigger]` path filters; none: not a push, or too many files to list (no filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
    /// The server's mandatory checks for this task (its `[[checks]]` that apply to the project
    /// and environment); the repository's settings cannot remove them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::checks::MandatoryCheck>,
}

/// Which build caches (dependencies, output) a task may use. A task reads them unless its
/// publish said `--no-cache`; it writes them only when its build is trusted (a publish by
/// the project's callers; never a pull-request preview or a fork), so that an untrusted build
/// cannot plant a `node_modules` or an output that a release would then use (the Nx "CREEP"
/// cache-poisoning advisory, CVE-2025-36852).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheUse {
    pub read: bool,
    pub write: bool,
}

/// A worker's cache settings (`[cache]` in the server's config for its embedded worker, flags
/// of `cloudbuild worker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether builds use the dependency and output caches and git mirrors (the package
    /// managers' own download caches are always kept).
    pub enabled: bool,
    /// The most the saved trees may take, in MiB; the least recently used go first.
    pub max_size_mib: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { enabled: true, max_size_mib: 10 * 1024 }
    }
}

/// Whether an install runs the dependencies' lifecycle scripts (`preinstall`, `install`,
/// `postinstall`): code of every package in the tree, run at install time, which is how the
/// 2025 npm worm ("Shai-Hulud") spread from one compromised package to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstallScripts {
    /// Install with scripts off (`npm_config_ignore_scripts=true`, which npm, pnpm and yarn
    /// classic honour).
    pub ignore: bool,
    /// Packages whose install scripts still run (`npm rebuild <name>…` after the install),
    /// e.g. `esbuild`, which fetches its binary in one.
    pub allow: Vec<String>,
}

/// Time limits of one task, in seconds. Also the `[timeouts]` table of the server's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    pub prepare_secs: u64,
    pub download_secs: u64,
    pub install_secs: u64,
    pub check_secs: u64,
    pub build_secs: u64,
    pub pre_publish_secs: u64,
    pub publish_secs: u64,
    /// The whole task, all stages included.
    pub task_secs: u64,
    /// After SIGTERM, how long a process group has before SIGKILL.
    pub kill_grace_secs: u64,
}

impl Timeouts {
    /// The time limit of one stage.
    pub fn stage_secs(&self, stage: Stage) -> u64 {
        match stage {
            Stage::Prepare => self.prepare_secs,
            Stage::DownloadRepo => self.download_secs,
            Stage::Install => self.install_secs,
            Stage::Check => self.check_secs,
            Stage::Build => self.build_secs,
            Stage::PrePublish => self.pre_publish_secs,
            Stage::Publish => self.publish_secs,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            prepare_secs: 60,
            download_secs: 600,
            install_secs: 1200,
            check_secs: 900,
            build_secs: 1200,
            pre_publish_secs: 60,
            publish_secs: 600,
            task_secs: 3600,
            kill_grace_secs: 10,
        }
    }
}

/// Whether a worker is connected, as `cloudbuild workers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Connected,
    /// Registered as connected, but no heartbeat for longer than a lease: its server died, or
    /// it was cut off; its tasks are requeued when their leases expire.
    Lost,
    Disconnected,
}

/// A worker as `GET /api/v1/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    pub state: WorkerState,
    pub slots: u32,
    pub labels: Vec<String>,
    /// The tasks it is running (task and attempt).
    pub running: Vec<TaskAttempt>,
    /// The name of the token it authenticated with.
    pub token: String,
    /// The server it is connected to (that server's listen address).
    pub server: String,
    pub connected_at: Timestamp,
    pub last_heartbeat: Timestamp,
}

/// `GET /api/v1/workers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerList {
    pub workers: Vec<WorkerInfo>,
}

/// A worker token as listed (the secret is shown once, at creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerToken {
    pub name: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// `POST /api/v1/worker-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkerToken {
    pub name: String,
}

/// The answer to `POST /api/v1/worker-tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedWorkerToken {
    pub name: String,
    pub token: String,
}

/// `GET /api/v1/worker-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerTokenList {
    pub tokens: Vec<WorkerToken>,
}
