//! Wire and domain types of cloudbuild, and the validation of every user-given value.
//!
//! This crate does no I/O and depends on nothing internal: the server, the worker and the CLI
//! all speak through these types, so a value that passed `validate` here is safe everywhere.
//!
//! - [`validate`]: repo URLs, git refs, project names, versions, command lines.
//! - [`task`]: tasks, states, stages, the REST request and response bodies.
//! - [`event`]: the per-task event log and its exact wire form (SSE / WebSocket).
//! - [`worker`]: the worker protocol (one WebSocket per worker).
//! - [`release`]: releases, rollback, and the incremental publish messages.
//! - [`audit`]: the audit log's entries.
//! - [`checks`]: the server's mandatory pre-release checks and which apply to a task.
//! - [`project`]: registered projects (repository, default branch, visibility).
//! - [`secret`], [`mask`]: project secrets (names, values, listings) and their masking in output.
//! - [`freeze`], [`gate`]: freeze windows, when they hold releases, what a publish asks of them.
//! - [`schedule`]: project schedules (cron in an IANA zone), when they are due and run next.
//! - [`sandbox`]: the build sandbox's settings (mode, shared and read-only directories).
//! - [`site`]: site labels (`<site>.<env>.<domain>`), `[site]` settings, the cache rule.
//! - [`user`]: users, roles, project members, personal API tokens.
//! - [`time`]: microsecond timestamps rendered as RFC 3339.

pub mod audit;
pub mod checks;
pub mod event;
pub mod freeze;
pub mod gate;
pub mod mask;
pub mod preview;
pub mod project;
pub mod release;
pub mod sandbox;
pub mod schedule;
pub mod secret;
pub mod site;
pub mod task;
pub mod text;
pub mod time;
pub mod user;
pub mod validate;
pub mod webhook;
pub mod worker;

/// The JSON body of every API error: a stable machine code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiErrorBody {
    /// Stable, snake_case code a script can match on (`invalid_input`, `not_found`, ...).
    pub code: String,
    /// A sentence for humans; says what was wrong and, where possible, what to do.
    pub message: String,
}
