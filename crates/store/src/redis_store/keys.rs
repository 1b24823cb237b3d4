//! Key names (prefix `cb:`); the layout is described in the module documentation.

use cloudbuild_proto::task::{Environment, TaskId};

pub(super) const P: &str = "cb:";

pub(super) const NOTICES: &str = "cb:notices";

pub(super) fn task_key(id: TaskId) -> String {
    format!("{P}task:{id}")
}

pub(super) fn events_key(id: TaskId) -> String {
    format!("{P}ev:{id}")
}

pub(super) fn queue_key() -> String {
    format!("{P}queue")
}

/// Held tasks (gated by a freeze window, or awaiting approval), score = id: listed without
/// scanning history, never claimed.
pub(super) fn held_key() -> String {
    format!("{P}held")
}

pub(super) fn running_key() -> String {
    format!("{P}running")
}

/// The set of releases (`id path`) holding a content in an environment.
pub(super) fn holders_key(env: Environment, hash: &str) -> String {
    format!("{P}holders:{}:{hash}", env.as_str())
}

/// Where a running attempt's lease key is kept: `attempt hash`.
pub(super) fn lease_key_key(id: TaskId) -> String {
    format!("{P}lease_key:{id}")
}

pub(super) fn current_field(env: Environment, name: &str) -> String {
    format!("{}/{name}", env.as_str())
}

/// How long a lease key outlives its claim: longer than any task may run.
pub(super) const LEASE_KEY_TTL_SECS: u64 = 7 * 24 * 3600;
