//! The `Store` trait: tasks, the dispatch queue, leases and per-task event logs; and its backends.
//!
//! The server reaches persistent state only through [`Store`]. Every method that changes a task
//! is atomic and, where a worker is involved, fenced by the task's attempt: a result from a
//! stale attempt is refused with [`StoreError::Stale`]. Terminal transitions append the final
//! events in the same transaction as the state change, so a log that ends with `end` always
//! belongs to a terminal task and vice versa.

mod apply;
mod redis_store;
mod sqlite;

use async_trait::async_trait;
use cloudbuild_proto::audit::AuditEntry;
use cloudbuild_proto::event::{EventBody, WireEvent};
use cloudbuild_proto::gate::FreezeWindow;
use cloudbuild_proto::project::Project;
use cloudbuild_proto::release::{ManifestFile, Release};
use cloudbuild_proto::task::{Environment, Stage, Task, TaskId, TaskState, Trigger};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{ApiTokenRecord, UserRecord};
use cloudbuild_proto::worker::{WorkerInfo, WorkerToken};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use apply::labels_match;
pub use redis_store::{RedisOptions, RedisStore};
pub use sqlite::SqliteStore;

/// How long a webhook delivery's record (and so its deduplication) is kept, in days.
pub const DELIVERY_DAYS: i64 = 30;

/// Where a content (by hash) can be copied from: a live release holding it, and its path there.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHolder {
    /// The content's blake3 hash (hex).
    pub hash: String,
    pub release: Release,
    /// The file's path inside that release.
    pub path: String,
}

/// The error a backend's client library gave, kept as the source of a [`StoreError`].
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a [`StoreError::NotFound`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Task(TaskId),
    Release(i64),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Task(id) => write!(f, "task {id}"),
            Missing::Release(id) => write!(f, "release {id}"),
        }
    }
}

/// Errors of a store. The API shows clients only the variants' meaning, never backend details
/// (`Database` and `Unavailable` are logged with their sources).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} does not exist")]
    NotFound(Missing),
    #[error("task {task} is at attempt {current}; attempt {given} is stale")]
    Stale { task: TaskId, current: u32, given: u32 },
    #[error("task {0} has already finished")]
    Terminal(TaskId),
    /// A worker message about a task that another worker holds (P: only the lease holder may
    /// change a running task).
    #[error("task {task} is not held by worker {worker}")]
    NotHolder { task: TaskId, worker: String },
    /// Something of this name exists already (`what` names it).
    #[error("{what} exists already")]
    Conflict { what: String },
    /// Other servers kept changing the task between this server's read and write.
    #[error("too many concurrent changes to task {0}; try again")]
    Contended(TaskId),
    /// The backend cannot be reached right now (Redis down, timed out); worth retrying later.
    #[error("storage unavailable ({backend}): {source}")]
    Unavailable { backend: &'static str, source: BackendError },
    /// The backend failed (`context` says where: SQLite, Redis, encoding a record).
    #[error("storage error ({context}): {source}")]
    Database { context: &'static str, source: BackendError },
    /// A stored value the store cannot read back (a row edited by hand, a newer schema).
    #[error("corrupt data in the store: {0}")]
    Corrupt(String),
    /// A change no caller may ask for (events only the store itself writes).
    #[error("invalid change: {0}")]
    InvalidChange(&'static str),
}

impl StoreError {
    /// A backend failure with where it happened.
    pub fn database(context: &'static str, source: impl Into<BackendError>) -> Self {
        StoreError::Database { context, source: source.into() }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::database("SQLite", e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::database("SQLite migrations", e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A validated request to create a task.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub name: String,
    pub version: String,
    pub repo: String,
    pub branch: String,
    /// The commit to build (40 hex digits), when pinned (by `publish` or a retry); `None`
    /// builds the branch's head, resolved by the worker.
    pub commit: Option<String>,
    pub build_cmd: Option<String>,
    pub env: Environment,
    pub trigger: Trigger,
    /// What caused it beyond its trigger (a forge's delivery), for the record.
    pub cause: Option<String>,
    pub force: bool,
    pub requested_by: String,
    pub retry_of: Option<TaskId>,
    /// Bytes of output kept for this task before a `truncated` event.
    pub output_limit: u64,
    /// Labels a worker must have to run this task (validated, sorted, unique).
    pub labels: Vec<String>,
    /// Build without the worker's caches.
    pub no_cache: bool,
    /// The files its push changed (for path filters), at most `task::MAX_CHANGED`.
    pub changed: Option<Vec<String>>,
    /// Created held instead of `queued`: `gated` (a freeze window holds it) or
    /// `awaiting_approval`; [`Store::release_held`] moves it on. Any other state is refused.
    pub held: Option<TaskState>,
}

/// Filters of `list_audit`: all given must match; entries with an id below `before`.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub project: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// Filters of `list_tasks`; newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub name: Option<String>,
    pub state: Option<TaskState>,
    /// Only tasks with an id lower than this (pagination cursor).
    pub before: Option<TaskId>,
    pub limit: u32,
}

/// Who is changing a task: the server itself, or a worker holding an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The server (cancel, timeout); no attempt check.
    Server,
    /// A worker; refused unless the task is running at this attempt.
    Attempt(u32),
}

/// How a task ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Succeeded {
        url: String,
    },
    Failed {
        stage: Stage,
        reason: String,
    },
    Cancelled {
        stage: Option<Stage>,
        reason: String,
    },
    /// Ended before building: the path filters match no changed file.
    Skipped {
        reason: String,
    },
    TimedOut {
        stage: Option<Stage>,
        reason: String,
    },
    /// Unexpected failure outside any stage (e.g. worker lost after the last attempt).
    Error {
        reason: String,
    },
}

/// The result of appending one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored; the events written (output past the cap adds a `truncated` event).
    Events(Vec<WireEvent>),
    /// Output after the cap was reached; nothing stored.
    Dropped,
}

/// One change a worker's message asks for; see [`Store::apply_worker_ops`].
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOp {
    pub task: TaskId,
    pub attempt: u32,
    /// The worker that sent it; refused unless it holds the task's lease.
    pub worker: String,
    /// The worker's number for this message within the attempt (from 1). A number at or below
    /// the last one applied is a resend after a broken connection: skipped, not an error.
    pub seq: u64,
    pub change: Change,
}

/// What a change does to a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Append a stage or output event.
    Append(EventBody),
    /// Record the resolved commit.
    Commit(String),
    /// Record the version read from the commit, for a task created without one (ignored once
    /// the task has a version).
    Version(String),
    /// Record what the build reused from the worker's caches.
    Cache(cloudbuild_proto::task::CacheReport),
    /// End the task.
    Finish(Finish),
}

/// What one server tells the others sharing its store (see [`Store::announce`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice {
    /// A task's log grew to `last_seq`; `ended` when its `end` event is stored.
    Events { task: TaskId, last_seq: u64, ended: bool },
    /// A task was queued (created or requeued): servers with free workers dispatch.
    Queued,
    /// A running task was cancelled: the server its worker is connected to forwards it.
    Cancel { task: TaskId, attempt: u32, worker: String },
    /// A worker token was revoked: servers disconnect the workers using it.
    TokenRevoked { name: String },
}

/// The result of a cancel request.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The task was queued and is now cancelled; it will never run.
    CancelledQueued(Task, Vec<WireEvent>),
    /// The task is running; its worker must stop it (the flag is set; repeated calls are fine).
    Requested(Task),
    /// It was cancelled before.
    AlreadyCancelled(Task),
    /// It ended otherwise (succeeded, failed, timed out) and cannot be cancelled.
    AlreadyFinished(Task),
    /// It runs, and only a queued task was to be cancelled: nothing changed.
    NotQueued(Task),
}

/// The result of returning a lost worker's task to the queue.
#[derive(Debug, Clone)]
pub enum RequeueOutcome {
    /// Back in the queue at `attempt`.
    Requeued { attempt: u32, events: Vec<WireEvent> },
    /// Out of attempts: failed.
    Failed { events: Vec<WireEvent> },
    /// Nothing to do (already finished, or already at another attempt).
    Unchanged,
}

/// Persistent state of the service. Implementations must be safe to share between tasks.
/// A project's secret as stored: the value sealed by the server (never in the clear here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    pub project: String,
    pub env: Environment,
    pub name: String,
    /// The encrypted value with its key id and nonce (see the server's `vault`).
    pub sealed: String,
    pub stages: Vec<Stage>,
    pub updated_at: Timestamp,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a queued task and its first event (`create task`); returns the task.
    async fn create_task(&self, new: NewTask) -> Result<(Task, WireEvent)>;
    /// One task.
    async fn get_task(&self, id: TaskId) -> Result<Task>;
    /// A page of tasks, newest first.
    async fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<Task>>;
    /// Takes the oldest queued task this worker may run (its labels cover the task's), marking it
    /// running with a lease until `lease_until`. `lease_key` (the blake3 hash of a secret sent
    /// to the worker only) is what [`Store::holds_lease`] checks later.
    async fn claim_next(
        &self,
        worker: &str,
        labels: &[String],
        lease_until: Timestamp,
        lease_key: &str,
    ) -> Result<Option<Task>>;
    /// Whether the task is running at `attempt` under the lease claimed with `lease_key`: how
    /// publish calls (plain HTTP, not the worker's socket) prove they come from the holder.
    async fn holds_lease(&self, id: TaskId, attempt: u32, lease_key: &str) -> Result<bool>;
    /// Extends the lease of a running task held by `worker` at `attempt`; false if it is not held.
    async fn extend_lease(&self, id: TaskId, attempt: u32, worker: &str, until: Timestamp) -> Result<bool>;
    /// Running tasks whose lease ended before `now`.
    async fn expired_leases(&self, now: Timestamp) -> Result<Vec<Task>>;
    /// Running tasks (for the server's own timeout watchdog).
    async fn running_tasks(&self) -> Result<Vec<Task>>;
    /// Appends an event. Stage events also move the task's current stage; the first `prepare`
    /// sets `started_at`. Output beyond the task's cap is cut with one `truncated` event.
    async fn append_event(&self, id: TaskId, fence: Fence, body: EventBody) -> Result<Appended>;
    /// Applies a batch of worker operations, in order, in one transaction: under load a worker's
    /// messages arrive faster than one transaction each could commit. Each operation gets its
    /// own result (fence errors are per operation); a database error fails the whole batch.
    /// Events written are returned per operation (none for commits, dropped output, or a
    /// finish of an already finished task).
    async fn apply_worker_ops(&self, ops: Vec<WorkerOp>) -> Result<Vec<Result<Vec<WireEvent>>>>;
    /// Ends a task: sets the terminal state and appends the final events atomically.
    /// Returns `Ok(None)` if it had already ended (the first ending wins).
    async fn finish(&self, id: TaskId, fence: Fence, finish: Finish) -> Result<Option<Vec<WireEvent>>>;
    /// Moves a waiting task from state `from` to `to`: a held one to `queued`, one awaiting
    /// approval to `gated`, a queued one (not yet claimed) to `gated`; appending `body` (the
    /// reason) to its log in the same change. `None` when it is not in `from` any more (moved
    /// on, claimed or ended meanwhile, by any server).
    async fn release_held(
        &self,
        id: TaskId,
        from: TaskState,
        to: TaskState,
        body: EventBody,
    ) -> Result<Option<Vec<WireEvent>>>;
    /// Ends a held task as `cancelled` with `reason` (a rejected or expired approval) while it
    /// is still in `from`; `None` when it moved on or ended meanwhile.
    async fn end_held(&self, id: TaskId, from: TaskState, reason: String) -> Result<Option<Vec<WireEvent>>>;
    /// Cancels a queued or held task at once, or flags a running one; idempotent.
    async fn request_cancel(&self, id: TaskId, queued_only: bool) -> Result<CancelOutcome>;
    /// Returns a running task whose worker was lost to the queue with attempt + 1, or fails it
    /// when `max_attempts` is reached.
    async fn requeue(&self, id: TaskId, attempt: u32, max_attempts: u32, why: &str) -> Result<RequeueOutcome>;
    /// Events with `seq > after`, in order, at most `limit`.
    async fn events_after(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<WireEvent>>;

    /// Records a release and its files (not yet current).
    async fn record_release(&self, new: NewRelease, files: &[ManifestFile]) -> Result<Release>;
    /// Makes a release its environment's current one; returns the one it replaced.
    async fn set_current(&self, release_id: i64) -> Result<Option<Release>>;
    /// Releases of a project (all environments when `env` is `None`), newest first.
    async fn list_releases(&self, env: Option<Environment>, name: &str) -> Result<Vec<Release>>;
    /// One release.
    async fn get_release(&self, id: i64) -> Result<Option<Release>>;
    /// The files of a release.
    async fn release_files(&self, release_id: i64) -> Result<Vec<ManifestFile>>;
    /// For each of `hashes` held by a live (not pruned) release of `env`, one release and path
    /// holding it: where the content can be copied from instead of uploaded. The newest live
    /// holder is chosen; a hash whose newest holder was pruned is still found in an older live one.
    async fn find_contents(&self, env: Environment, hashes: &[String]) -> Result<Vec<ContentHolder>>;
    /// Marks releases as removed from their target.
    /// A pruned release that was its environment's current one leaves it without one.
    async fn mark_pruned(&self, ids: &[i64]) -> Result<()>;

    /// Records a worker's registration, heartbeat or departure (keyed by its name).
    async fn put_worker(&self, worker: &WorkerInfo) -> Result<()>;
    /// Every worker ever registered, by name.
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>>;
    /// Stores a new worker token's blake3 hash under a name; `Conflict` if the name is taken.
    async fn create_worker_token(&self, name: &str, hash: &str) -> Result<WorkerToken>;
    /// Revokes a token by name; false if there is no live token of that name.
    async fn revoke_worker_token(&self, name: &str) -> Result<bool>;
    /// Every worker token (live and revoked), by name.
    async fn list_worker_tokens(&self) -> Result<Vec<WorkerToken>>;
    /// The name of the live token with this hash, if any.
    async fn worker_token_name(&self, hash: &str) -> Result<Option<String>>;

    /// Adds or replaces a project's secret for an environment (its sealed value only).
    async fn put_secret(&self, secret: &StoredSecret) -> Result<()>;
    /// Removes a secret; false if there was none.
    async fn delete_secret(&self, project: &str, env: Environment, name: &str) -> Result<bool>;
    /// A project's secrets, every environment, by environment then name.
    async fn list_secrets(&self, project: &str) -> Result<Vec<StoredSecret>>;

    /// Registers a project unless one of its name exists (atomically: of two servers
    /// registering one name, one wins); false if it existed.
    async fn create_project(&self, project: &Project) -> Result<bool>;
    /// The project of that name, if registered.
    async fn get_project(&self, name: &str) -> Result<Option<Project>>;
    /// Every project, by name.
    async fn list_projects(&self) -> Result<Vec<Project>>;
    /// Replaces a project's record `old` by `new` if the stored one is still `old`
    /// (compare-and-set); false if it changed meanwhile or is not registered any more.
    async fn update_project(&self, old: &Project, new: &Project) -> Result<bool>;
    /// Removes a project's record (not its releases or sites); false if there was none.
    async fn delete_project(&self, name: &str) -> Result<bool>;

    /// Adds a user unless one of that name exists (atomically); false if it existed.
    async fn create_user(&self, user: &UserRecord) -> Result<bool>;
    /// The user of that name.
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>>;
    /// Every user, by name.
    async fn list_users(&self) -> Result<Vec<UserRecord>>;
    /// Replaces a user's record `old` by `new` if the stored one is still `old`
    /// (compare-and-set); false if it changed meanwhile.
    async fn update_user(&self, old: &UserRecord, new: &UserRecord) -> Result<bool>;

    /// Keeps a personal API token unless its user has one of that name; false if they had.
    async fn create_api_token(&self, token: &ApiTokenRecord) -> Result<bool>;
    /// The token whose secret hashes to `hash`.
    async fn api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>>;
    /// A user's tokens, by name.
    async fn list_api_tokens(&self, user: &str) -> Result<Vec<ApiTokenRecord>>;
    /// Removes a user's token by name; false if there was none.
    async fn delete_api_token(&self, user: &str, name: &str) -> Result<bool>;
    /// Records that the token `hash` was presented at `at`.
    async fn touch_api_token(&self, hash: &str, at: Timestamp) -> Result<()>;

    /// Records a webhook delivery under `key` unless one is recorded there (from any server,
    /// since a restart too, for [`DELIVERY_DAYS`]); false when it was: a repeat. A delivery
    /// claimed under several keys is `listed` under one.
    async fn claim_delivery(
        &self,
        key: &str,
        delivery: &cloudbuild_proto::webhook::Delivery,
        listed: bool,
    ) -> Result<bool>;
    /// Gives a claimed key back (the delivery could not be acted on: the forge's retry may).
    async fn release_delivery(&self, key: &str) -> Result<()>;
    /// The record kept under `key`, if any.
    async fn get_delivery(&self, key: &str) -> Result<Option<cloudbuild_proto::webhook::Delivery>>;
    /// Replaces the record of a claimed delivery (its outcome).
    async fn set_delivery(&self, key: &str, delivery: &cloudbuild_proto::webhook::Delivery) -> Result<()>;
    /// A project's newest deliveries, newest first, at most `limit` (at most 200 are kept listed).
    async fn list_deliveries(&self, project: &str, limit: u32) -> Result<Vec<cloudbuild_proto::webhook::Delivery>>;

    /// Keeps a global freeze window unless one of its id exists; false if it did.
    async fn create_freeze_window(&self, window: &FreezeWindow) -> Result<bool>;
    /// Every global freeze window, by id.
    async fn list_freeze_windows(&self) -> Result<Vec<FreezeWindow>>;
    /// Removes a global freeze window; false if there was none.
    async fn delete_freeze_window(&self, id: &str) -> Result<bool>;

    /// Appends an entry to the audit log; the store numbers it in order (the entry's `id` is
    /// ignored), and it is never changed afterwards.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
    /// Entries matching the query, newest first.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;

    /// Takes (or, for the same `holder`, extends) a lock shared by every server on this store,
    /// expiring after `ttl` unless extended; false while another holder has it. A single-server
    /// backend has nobody to share with: the server's own mutexes suffice, so it always grants.
    async fn try_lock(&self, _name: &str, _holder: &str, _ttl: std::time::Duration) -> Result<bool> {
        Ok(true)
    }
    /// Extends a lock that `holder` still has; false if it expired or another holder has it
    /// (never takes it again: see the release lock in the server).
    async fn extend_lock(&self, _name: &str, _holder: &str, _ttl: std::time::Duration) -> Result<bool> {
        Ok(true)
    }
    /// Releases a lock if `holder` still has it.
    async fn unlock(&self, _name: &str, _holder: &str) -> Result<()> {
        Ok(())
    }

    /// Tells the other servers sharing this store. A single-server backend has nobody to tell.
    async fn announce(&self, _notice: Notice) -> Result<()> {
        Ok(())
    }
    /// Notices announced by the other servers; `None` for a single-server backend.
    fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
        None
    }
}

/// A release to record.
#[derive(Debug, Clone)]
pub struct NewRelease {
    pub env: Environment,
    pub name: String,
    pub version: String,
    pub task_id: TaskId,
    pub commit: Option<String>,
    pub requested_by: String,
}

/// The final stage events of a task ending this way, before the `end` event.
pub fn final_stage_event(finish: &Finish) -> EventBody {
    use cloudbuild_proto::task::actions;
    let (action, message) = match finish {
        Finish::Succeeded { url } => (actions::BUILD_SUCCESS.to_owned(), format!("published: {url}")),
        Finish::Failed { stage, reason } => (stage.failed_action().to_owned(), reason.clone()),
        Finish::Cancelled { reason, .. } => (actions::CANCELLED.to_owned(), reason.clone()),
        Finish::Skipped { reason } => (actions::SKIPPED.to_owned(), reason.clone()),
        Finish::TimedOut { reason, .. } => (actions::TIMED_OUT.to_owned(), reason.clone()),
        Finish::Error { reason } => (actions::ERROR.to_owned(), reason.clone()),
    };
    EventBody::Stage { action, message }
}

impl Finish {
    /// The terminal state this ending leads to.
    pub fn state(&self) -> TaskState {
        match self {
            Finish::Succeeded { .. } => TaskState::Succeeded,
            Finish::Failed { .. } | Finish::Error { .. } => TaskState::Failed,
            Finish::Cancelled { .. } => TaskState::Cancelled,
            Finish::Skipped { .. } => TaskState::Skipped,
            Finish::TimedOut { .. } => TaskState::TimedOut,
        }
    }
}
