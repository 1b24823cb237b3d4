//! The audit log: an append-only record of every change of state, who asked for it, from
//! where, and how it ended.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing with time (a paging cursor).
    pub id: i64,
    pub at: Timestamp,
    /// Who asked: a token's name, `anonymous`, or `server` for what the server does itself.
    pub actor: String,
    /// The caller's IP address, when it came over the network.
    pub address: Option<String>,
    /// What was asked, as `<thing>.<verb>`: `task.create`, `task.cancel`, `task.retry`,
    /// `release.rollback`, `project.create`, `project.edit`, `project.delete`,
    /// `worker_token.create`, `worker_token.revoke`.
    pub action: String,
    /// What it was asked of: `task 12`, `project @team/site`, `worker token ci`.
    pub target: String,
    /// The project it concerns, if any (a filter).
    pub project: Option<String>,
    /// `ok`, or `refused: <why>`.
    pub outcome: String,
}

/// `GET /api/v1/audit`: a page of entries, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before=` for the next page; absent on the last.
    pub next_before: Option<i64>,
}
