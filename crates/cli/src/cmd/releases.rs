//! `cloudbuild releases` and `cloudbuild rollback`.

use std::process::ExitCode;

use anyhow::Result;
use cloudbuild_proto::release::{ReleaseList, RollbackResult};

use super::ServerArg;
use crate::output::outln;

/// An environment's name as the server spells it.
fn environment(s: &str) -> Result<String, String> {
    cloudbuild_proto::task::Environment::parse(s)
        .map(|e| e.to_string())
        .ok_or_else(|| format!("`{s}` is not an environment: test, prod or preview/pr-<N>"))
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReleasesArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Project name (as in package.json).
    name: String,
    /// Only this environment (`test`, `prod`, or a pull request's `preview/pr-<N>`); all when
    /// absent.
    #[arg(long, value_parser = environment)]
    env: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RollbackArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Project name (as in package.json).
    name: String,
    /// Environment to switch (required: rolling back `prod` by accident is worse than typing
    /// it): `test`, `prod` or `preview/pr-<N>`.
    #[arg(long, required = true, value_parser = environment)]
    env: String,
    /// Version to switch to (its latest build) [default: the release before the current one].
    #[arg(long)]
    to: Option<String>,
    /// The build to switch to, by its task id (one version may have several builds, as a
    /// pull request's preview has); not with --to.
    #[arg(long, conflicts_with = "to")]
    task: Option<i64>,
    /// Roll back through a freeze window that holds rollbacks, with this reason (admins, or
    /// the role the window names; audited).
    #[arg(long, value_name = "REASON")]
    override_freeze: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn releases(args: ReleasesArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let mut path = format!("/api/v1/releases?name={}", crate::client::query_encode(&args.name));
    if let Some(env) = &args.env {
        path.push_str(&format!("&env={env}"));
    }
    let list: ReleaseList = client.get(&path).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.releases.is_empty() {
        match &args.env {
            Some(env) => outln!("{} has no {env} releases", args.name),
            None => outln!("{} has no releases", args.name),
        }
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<5} {:<12} {:>6}  {:<9} {:>6} {:>10}  {:<14} {:<19} COMMIT",
        "ENV",
        "VERSION",
        "TASK",
        "STATE",
        "FILES",
        "BYTES",
        "BY",
        "CREATED"
    );
    for r in &list.releases {
        let state = if r.current {
            "current"
        } else if r.pruned {
            "pruned"
        } else {
            "available"
        };
        outln!(
            "{:<5} {:<12} {:>6}  {:<9} {:>6} {:>10}  {:<14} {:<20} {}",
            r.env.as_str(),
            r.version,
            r.task_id,
            state,
            r.files,
            r.bytes,
            r.requested_by,
            crate::display::utc(r.created_at),
            r.commit.as_deref().map(|c| &c[..c.len().min(12)]).unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn rollback(args: RollbackArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let mut body = serde_json::json!({ "name": args.name, "env": args.env, "to": args.to });
    // Only when given: a server from before `task` refuses fields it does not know.
    if let Some(task) = args.task {
        body["task"] = task.into();
    }
    if let Some(reason) = &args.override_freeze {
        body["override"] = reason.as_str().into();
    }
    let result: RollbackResult = client.post("/api/v1/releases/rollback", Some(&body)).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(ExitCode::SUCCESS);
    }
    let from =
        result.previous.as_ref().map(|p| format!("{} (task {})", p.version, p.task_id)).unwrap_or_else(|| "-".into());
    outln!(
        "rolled back {} in {}: now {} (task {}), was {from}\n{}\nimmutable: {}",
        args.name,
        args.env,
        result.release.version,
        result.release.task_id,
        result.url,
        result.immutable_url
    );
    Ok(ExitCode::SUCCESS)
}
