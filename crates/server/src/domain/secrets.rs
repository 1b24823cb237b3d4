//! Project secrets: set, list (never values) and delete, per project and environment. Values
//! are sealed by the server's [`Vault`](crate::vault::Vault) before they reach the store, and
//! opened only to hand them to the worker of a task of that project and environment
//! ([`crate::vault::task_secrets`]).

use cloudbuild_proto::secret::{check_name, check_value, SecretInfo, SetSecret, SECRET_STAGES};
use cloudbuild_proto::task::Environment;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::validate::{ProjectName, ValidationError};
use cloudbuild_store::{StoreError, StoredSecret};

use super::callers::Caller;
use super::policy::{self, PolicyError, ProjectAction};
use crate::state::AppState;
use crate::vault::{slot, Vault, VaultError};

/// Why a secret could not be set, listed or deleted.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{project} has no {env} secret named {name}")]
    NotFound { project: String, env: String, name: String },
    /// Secrets belong to registered projects (registered by a first publish, or `cloudbuild
    /// projects create`).
    #[error(
        "no project named {0}: publish it once, or register it with `cloudbuild projects create {0} --repo URL`, \
         before setting its secrets"
    )]
    NoProject(String),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn info(s: &StoredSecret) -> SecretInfo {
    SecretInfo {
        project: s.project.clone(),
        env: s.env,
        name: s.name.clone(),
        stages: s.stages.clone(),
        key: Vault::key_of(&s.sealed).to_owned(),
        updated_at: s.updated_at,
    }
}

/// Sets (adds or replaces) `name` for `project` in `env`. The value is checked (6 bytes at
/// least, one line) and sealed; stages default to install, check and build.
pub async fn set(
    state: &AppState,
    caller: &Caller,
    project: &str,
    env: Environment,
    name: &str,
    req: SetSecret,
) -> Result<SecretInfo, SecretError> {
    let result = seal_and_store(state, caller, project, env, name, req).await;
    let target = format!("secret {name} of {project} {}", env.as_str());
    super::audit::record(state, caller, "secret.set", target, Some(project), &result).await;
    result
}

async fn seal_and_store(
    state: &AppState,
    caller: &Caller,
    project: &str,
    env: Environment,
    name: &str,
    req: SetSecret,
) -> Result<SecretInfo, SecretError> {
    let project = ProjectName::parse(project)?;
    check_name(name)?;
    check_value(&req.value)?;
    if env.pull_request().is_some() {
        // A preview builds a pull request's unreviewed code: the scheduler gives it none.
        return Err(ValidationError {
            field: "env",
            reason: "previews get no secrets (they build a pull request's code before review): set it for test or prod"
                .into(),
        }
        .into());
    }
    maintained(state, caller, &project).await?;
    let mut stages = req.stages.unwrap_or_else(|| SECRET_STAGES.to_vec());
    if let Some(bad) = stages.iter().find(|s| !SECRET_STAGES.contains(s)) {
        return Err(ValidationError {
            field: "stages",
            reason: format!("`{}` runs no project command; choose among install, check, build", bad.action()),
        }
        .into());
    }
    stages.sort();
    stages.dedup();
    let sealed = state.vault.seal(&slot(project.as_str(), env, name), &req.value)?;
    let stored = StoredSecret {
        project: project.as_str().to_owned(),
        env,
        name: name.to_owned(),
        sealed,
        stages,
        updated_at: Timestamp::now(),
    };
    state.store.put_secret(&stored).await?;
    Ok(info(&stored))
}

/// Checks that `caller` maintains the registered project (secrets are its maintainers').
async fn maintained(state: &AppState, caller: &Caller, project: &ProjectName) -> Result<(), SecretError> {
    let what = || format!("project {project}");
    if policy::project(state, caller, project.as_str(), ProjectAction::Maintain, what).await?.is_none() {
        return Err(SecretError::NoProject(project.to_string()));
    }
    Ok(())
}

/// The project's secrets, every environment: names, stages and dates, never values
/// (maintainers).
pub async fn list(state: &AppState, caller: &Caller, project: &str) -> Result<Vec<SecretInfo>, SecretError> {
    let project = ProjectName::parse(project)?;
    maintained(state, caller, &project).await?;
    Ok(state.store.list_secrets(project.as_str()).await?.iter().map(info).collect())
}

/// Deletes a secret.
pub async fn delete(
    state: &AppState,
    caller: &Caller,
    project: &str,
    env: Environment,
    name: &str,
) -> Result<(), SecretError> {
    let result = remove(state, caller, project, env, name).await;
    let target = format!("secret {name} of {project} {}", env.as_str());
    super::audit::record(state, caller, "secret.delete", target, Some(project), &result).await;
    result
}

async fn remove(
    state: &AppState,
    caller: &Caller,
    project: &str,
    env: Environment,
    name: &str,
) -> Result<(), SecretError> {
    let project = ProjectName::parse(project)?;
    check_name(name)?;
    maintained(state, caller, &project).await?;
    if state.store.delete_secret(project.as_str(), env, name).await? {
        Ok(())
    } else {
        Err(SecretError::NotFound { project: project.as_str().to_owned(), env: env.to_string(), name: name.to_owned() })
    }
}
