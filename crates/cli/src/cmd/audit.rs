//! `cloudbuild audit`: the server's audit log, newest first.

use std::process::ExitCode;

use anyhow::Result;
use cloudbuild_proto::audit::AuditPage;

use super::ServerArg;
use crate::client::query_encode;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Only entries about this project.
    #[arg(long)]
    project: Option<String>,
    /// Only what this caller (a token's name, `anonymous`) did.
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (`task.create`, `task.cancel`, `task.retry`, `release.rollback`,
    /// `project.create`, `project.edit`, `project.delete`, `worker_token.create`, ...).
    #[arg(long)]
    action: Option<String>,
    /// Entries before this id (the next page).
    #[arg(long)]
    before: Option<i64>,
    /// How many [default: 50, at most 200].
    #[arg(long)]
    limit: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn audit(args: AuditArgs) -> Result<ExitCode> {
    let mut query = Vec::new();
    for (k, v) in [("project", args.project), ("actor", args.actor), ("action", args.action)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", query_encode(&v)));
        }
    }
    if let Some(b) = args.before {
        query.push(format!("before={b}"));
    }
    if let Some(l) = args.limit {
        query.push(format!("limit={l}"));
    }
    let page: AuditPage = args.server.client()?.get(&format!("/api/v1/audit?{}", query.join("&"))).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    if page.entries.is_empty() {
        outln!("no audit entries");
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:>6}  {:<20} {:<14} {:<15} {:<20} {:<32} OUTCOME", "ID", "WHEN", "WHO", "FROM", "ACTION", "TARGET");
    for e in &page.entries {
        outln!(
            "{:>6}  {:<20} {:<14} {:<15} {:<20} {:<32} {}",
            e.id,
            crate::display::utc(e.at),
            e.actor,
            e.address.as_deref().unwrap_or("-"),
            e.action,
            e.target,
            e.outcome
        );
    }
    if let Some(next) = page.next_before {
        outln!("more: cloudbuild audit --before {next}");
    }
    Ok(ExitCode::SUCCESS)
}
