//! Rollback: an environment switched back to an earlier release without rebuilding, unless a
//! freeze window holding rollbacks refuses it.

use cloudbuild_proto::release::{Release, RollbackRequest, RollbackResult};
use cloudbuild_proto::validate::{ProjectName, ValidationError, Version};

use super::{project_guard, switch, ReleaseError};
use crate::domain::callers::Caller;
use crate::domain::freeze::{self, GateRequest};
use crate::domain::policy::{self, ProjectAction};
use crate::domain::projects::ProjectError;
use crate::state::AppState;

/// The distinct versions of `releases`, in their order (several builds of one version,
/// published with `--force`, are one version here).
fn distinct_versions<'a>(releases: impl Iterator<Item = &'a Release>) -> Vec<&'a str> {
    let mut versions: Vec<&str> = Vec::new();
    for r in releases {
        if !versions.contains(&r.version.as_str()) {
            versions.push(&r.version);
        }
    }
    versions
}

/// Switches an environment back to an earlier release, without rebuilding: the newest one of
/// version `to`, or the one before the current release.
/// A freeze window that holds rollbacks refuses it unless overridden (see `freeze`).
pub async fn rollback(
    state: &AppState,
    caller: &Caller,
    req: &RollbackRequest,
    zone: Option<&str>,
) -> Result<RollbackResult, ReleaseError> {
    let result = roll_back(state, caller, req, zone).await;
    let target = format!("project {} {}", req.name, req.env.as_str());
    crate::domain::audit::record(state, caller, "release.rollback", target, Some(&req.name), &result).await;
    result
}

async fn roll_back(
    state: &AppState,
    caller: &Caller,
    req: &RollbackRequest,
    zone: Option<&str>,
) -> Result<RollbackResult, ReleaseError> {
    let name = ProjectName::parse(&req.name)?;
    policy::project(state, caller, name.as_str(), ProjectAction::Rollback, || format!("project {name}"))
        .await
        .map_err(ProjectError::from)?;
    // Before the lock: a refusal waits for nothing.
    let gate =
        GateRequest { override_reason: req.gate_override.clone(), zone: zone.map(str::to_owned), ..Default::default() };
    freeze::check_rollback(state, caller, name.as_str(), req.env, &gate).await.map_err(Box::new)?;
    let env = req.env.to_string();
    let guard = project_guard(state, req.env, name.as_str()).await?;
    let all = state.store.list_releases(Some(req.env), name.as_str()).await?;
    let current = all.iter().find(|r| r.current).cloned();
    let live = || all.iter().filter(|r| !r.pruned);
    let chosen = match (&req.to, req.task) {
        (Some(_), Some(_)) => {
            let reason = "give the version (`to`) or the build (`task`) to switch to, not both".into();
            return Err(ValidationError { field: "task", reason }.into());
        }
        (None, Some(task)) => live().find(|r| r.task_id == task).ok_or_else(|| ReleaseError::NoSuchVersion {
            name: name.to_string(),
            env: env.clone(),
            version: format!("of task {task}"),
            available: {
                let tasks: Vec<String> = live().map(|r| r.task_id.to_string()).collect();
                if tasks.is_empty() {
                    "none".into()
                } else {
                    format!("tasks {}", tasks.join(", "))
                }
            },
        })?,
        (Some(v), None) => {
            Version::parse(v)?;
            live().find(|r| &r.version == v).ok_or_else(|| {
                let versions = distinct_versions(live());
                ReleaseError::NoSuchVersion {
                    name: name.to_string(),
                    env: env.clone(),
                    version: v.clone(),
                    available: if versions.is_empty() { "none".into() } else { versions.join(", ") },
                }
            })?
        }
        // The release before the current one (releases are newest first).
        (None, None) if current.is_none() => {
            return Err(ReleaseError::NoReleases { name: name.to_string(), env: env.clone() })
        }
        (None, None) => live().skip_while(|r| !r.current).nth(1).ok_or_else(|| {
            // Rolled back to the oldest: the newer ones are still there, by version.
            let newer = distinct_versions(live().take_while(|r| !r.current));
            let hint = match newer.first() {
                Some(v) => format!(" (newer: {}; switch with --to {v})", newer.join(", ")),
                None => String::new(),
            };
            ReleaseError::NothingToRollBack { name: name.to_string(), env: env.clone(), hint }
        })?,
    }
    .clone();
    if chosen.current {
        return Err(ReleaseError::AlreadyCurrent { name: name.to_string(), version: chosen.version, env: env.clone() });
    }
    guard.ensure_held().await?;
    let previous = switch(state, &chosen).await?;
    drop(guard);
    tracing::info!(by = %caller.name, %name, %env, release = chosen.id, "rolled back");
    let target = state.targets.get(req.env);
    let release = state.store.get_release(chosen.id).await?.unwrap_or(chosen);
    Ok(RollbackResult {
        url: target.urls().site(&name),
        immutable_url: target.urls().release(&name, &release.version, release.task_id),
        release,
        previous: previous.or(current),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(id: i64, version: &str) -> Release {
        serde_json::from_value(serde_json::json!({
            "id": id, "env": "prod", "name": "site", "version": version, "task_id": id,
            "commit": null, "requested_by": "me", "created_at": "2026-01-01T00:00:00Z",
            "files": 1, "bytes": 1, "current": false, "pruned": false
        }))
        .unwrap()
    }

    #[test]
    fn each_version_is_listed_once_however_many_builds_it_has() {
        let all = [release(4, "1.0.1"), release(3, "1.0.1"), release(2, "1.0.0"), release(1, "1.0.1")];
        assert_eq!(distinct_versions(all.iter()), ["1.0.1", "1.0.0"]);
    }
}
