//! Reading a task from a row of the SQLite `tasks` table.

use cloudbuild_proto::task::{Environment, Stage, Task, TaskState, Trigger};
use cloudbuild_proto::time::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{Result, StoreError};

pub(crate) const TASK_COLUMNS: &str = "id, name, version, repo, branch, commit_sha, build_cmd, env, trigger_kind, force, requested_by, \
     state, stage, reason, attempt, worker, retry_of, url, cancel_requested, created_us, started_us, finished_us, last_seq, labels, no_cache, cache, cause, changed";

pub(crate) fn task_from_row(row: &SqliteRow) -> Result<Task> {
    let bad = |what: &str, v: &str| StoreError::Corrupt(format!("{what} `{v}` in the tasks table"));
    let env: String = row.try_get("env")?;
    let trigger: String = row.try_get("trigger_kind")?;
    let state: String = row.try_get("state")?;
    let stage: Option<String> = row.try_get("stage")?;
    let stage = match stage {
        Some(s) => Some(Stage::from_action(&s).ok_or_else(|| bad("stage", &s))?),
        None => None,
    };
    Ok(Task {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        repo: row.try_get("repo")?,
        branch: row.try_get("branch")?,
        commit: row.try_get("commit_sha")?,
        build_cmd: row.try_get("build_cmd")?,
        env: Environment::parse(&env).ok_or_else(|| bad("env", &env))?,
        trigger: Trigger::parse(&trigger).ok_or_else(|| bad("trigger", &trigger))?,
        cause: row.try_get("cause")?,
        force: row.try_get::<i64, _>("force")? != 0,
        requested_by: row.try_get("requested_by")?,
        state: TaskState::parse(&state).ok_or_else(|| bad("state", &state))?,
        stage,
        reason: row.try_get("reason")?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        worker: row.try_get("worker")?,
        retry_of: row.try_get("retry_of")?,
        url: row.try_get("url")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: Timestamp(row.try_get("created_us")?),
        started_at: row.try_get::<Option<i64>, _>("started_us")?.map(Timestamp),
        finished_at: row.try_get::<Option<i64>, _>("finished_us")?.map(Timestamp),
        last_seq: row.try_get::<i64, _>("last_seq")? as u64,
        labels: split_labels(&row.try_get::<String, _>("labels")?),
        no_cache: row.try_get::<i64, _>("no_cache")? != 0,
        cache: match row.try_get::<Option<String>, _>("cache")? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| bad("cache", &json))?),
            None => None,
        },
        changed: match row.try_get::<Option<String>, _>("changed")? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| bad("changed", &json))?),
            None => None,
        },
    })
}

pub(crate) fn split_labels(s: &str) -> Vec<String> {
    s.split(',').filter(|l| !l.is_empty()).map(str::to_owned).collect()
}
