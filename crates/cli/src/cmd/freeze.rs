//! `cloudbuild freeze list|add|remove|status|override`: freeze windows (封网), global or a
//! project's, whether releases are frozen now, and the override that releases a gated task.

use std::process::ExitCode;

use anyhow::{bail, Result};
use cloudbuild_proto::gate::{render_in_zone, FreezeList, FreezeStatus, FreezeView};
use cloudbuild_proto::task::Task;
use cloudbuild_proto::time::Timestamp;

use super::ServerArg;
use crate::client::{local_zone, query_encode};
use crate::output::outln;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum FreezeCommand {
    /// List the freeze windows: global ones, and a project's own with --project; whether each
    /// holds now and its next period, in your time zone.
    List {
        #[command(flatten)]
        server: ServerArg,
        /// Also the windows of this project.
        #[arg(long)]
        project: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a window: global (admins) or with --project a project's (its maintainers). One-off:
    /// --from and --to. Recurring: --start-cron with --end-cron or --duration, in --timezone.
    Add {
        #[command(flatten)]
        server: ServerArg,
        /// A window of this project only.
        #[arg(long)]
        project: Option<String>,
        /// Why releases are held; shown with every refusal.
        #[arg(long)]
        reason: String,
        /// Start of a one-off window, RFC 3339 (`2026-12-24T00:00:00+08:00`).
        #[arg(long, requires = "to", conflicts_with_all = ["start_cron", "end_cron", "duration", "timezone"])]
        from: Option<String>,
        /// End of a one-off window, RFC 3339 (excluded).
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// When each recurring period starts: five cron fields (`0 18 * * 5`: Fridays 18:00).
        #[arg(long)]
        start_cron: Option<String>,
        /// When each period ends: the first time this expression names after its start.
        #[arg(long, requires = "start_cron", conflicts_with = "duration")]
        end_cron: Option<String>,
        /// How long each period lasts instead (`48h`, `2days 6h`).
        #[arg(long, requires = "start_cron")]
        duration: Option<String>,
        /// The IANA zone the expressions are read in (`Asia/Shanghai`) [default: UTC].
        #[arg(long, requires = "start_cron")]
        timezone: Option<String>,
        /// Environments it holds (repeat or comma-separate) [default: prod].
        #[arg(long = "env", value_delimiter = ',', value_parser = ["test", "prod", "preview"])]
        environments: Vec<String>,
        /// Hold rollbacks too (by default they pass: they are the emergency path).
        #[arg(long)]
        rollbacks: bool,
        /// Who besides admins may override it for one task: the project role (`maintainer`).
        #[arg(long, value_parser = ["reporter", "developer", "maintainer"])]
        override_role: Option<String>,
        /// Print the window as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a window (by its id, from `freeze list`); tasks it held start when no other
    /// window holds them.
    Remove {
        #[command(flatten)]
        server: ServerArg,
        id: String,
        /// The window is this project's.
        #[arg(long)]
        project: Option<String>,
    },
    /// Whether test, prod and previews are frozen now (for a project's windows too with
    /// --project), until when, and when the next window begins.
    Status {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        project: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a gated task now, through the windows holding it (admins, or the role the
    /// windows name); the reason goes to the audit log and the build's log.
    Override {
        #[command(flatten)]
        server: ServerArg,
        /// The gated task's id.
        task: i64,
        #[arg(long)]
        reason: String,
    },
}

impl FreezeCommand {
    pub(crate) fn json(&self) -> bool {
        matches!(
            self,
            FreezeCommand::List { json: true, .. }
                | FreezeCommand::Add { json: true, .. }
                | FreezeCommand::Status { json: true, .. }
        )
    }
}

fn path(project: Option<&str>) -> String {
    match project {
        Some(p) => format!("/api/v1/projects/{}/freeze", query_encode(p)),
        None => "/api/v1/freeze".into(),
    }
}

/// A time in the caller's zone.
fn local(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".into(), |t| render_in_zone(t, local_zone().as_deref()))
}

/// When a window holds: its range, or its expressions and zone.
fn when(v: &FreezeView) -> String {
    let w = &v.window.when;
    match (&w.from, &w.to, &w.start_cron) {
        (Some(from), Some(to), _) => format!("{} → {}", local(Some(*from)), local(Some(*to))),
        (_, _, Some(start)) => {
            let end = match (&w.end_cron, w.duration_secs) {
                (Some(e), _) => format!("until `{e}`"),
                (None, Some(d)) => format!("for {}", humantime::format_duration(std::time::Duration::from_secs(d))),
                _ => String::new(),
            };
            format!("`{start}` {end} ({})", w.timezone.as_deref().unwrap_or("UTC"))
        }
        _ => "?".into(),
    }
}

fn print_window(v: &FreezeView) {
    let w = &v.window;
    let scope = w.project.as_deref().unwrap_or("global");
    let state = match (v.active, v.active_until) {
        (true, Some(_)) => format!("ACTIVE until {}", local(v.active_until)),
        (true, None) => "ACTIVE (no known end)".into(),
        (false, _) if v.next_closes.is_some() => {
            format!("next {} → {}", local(v.next_closes), local(v.next_opens))
        }
        (false, _) => "ended".into(),
    };
    outln!("{}  {scope}  {}  [{}]", w.id, w.reason, w.environments.join(","));
    outln!("    {}", when(v));
    outln!(
        "    {state}{}{}",
        if w.rollbacks { "; holds rollbacks" } else { "" },
        w.override_role.map(|r| format!("; {r}s may override")).unwrap_or_default()
    );
}

pub(crate) async fn run(cmd: FreezeCommand) -> Result<ExitCode> {
    match cmd {
        FreezeCommand::List { server, project, json } => {
            let list: FreezeList = server.client()?.get(&path(project.as_deref())).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.windows.is_empty() {
                outln!("no freeze windows (add one with `cloudbuild freeze add --reason TEXT --from TIME --to TIME`)");
            }
            for v in list.windows.iter().filter(|_| !json) {
                print_window(v);
            }
        }
        FreezeCommand::Add {
            server,
            project,
            reason,
            from,
            to,
            start_cron,
            end_cron,
            duration,
            timezone,
            environments,
            rollbacks,
            override_role,
            json,
        } => {
            if from.is_none() && start_cron.is_none() {
                bail!("give --from and --to (a one-off window), or --start-cron with --end-cron or --duration");
            }
            let duration_secs = match duration.as_deref().map(humantime::parse_duration).transpose() {
                Ok(d) => d.map(|d| d.as_secs()),
                Err(e) => bail!("--duration: {e} (e.g. 48h, 2days 6h)"),
            };
            let mut body = serde_json::json!({ "reason": reason, "rollbacks": rollbacks });
            for (key, value) in [("from", from), ("to", to), ("start_cron", start_cron), ("end_cron", end_cron)] {
                if let Some(v) = value {
                    body[key] = v.into();
                }
            }
            if let Some(z) = timezone {
                body["timezone"] = z.into();
            }
            if let Some(d) = duration_secs {
                body["duration_secs"] = d.into();
            }
            if !environments.is_empty() {
                body["environments"] = environments.into();
            }
            if let Some(r) = override_role {
                body["override_role"] = r.into();
            }
            let v: FreezeView = server.client()?.post(&path(project.as_deref()), Some(&body)).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                outln!("freeze window {} added", v.window.id);
                print_window(&v);
            }
        }
        FreezeCommand::Remove { server, id, project } => {
            server.client()?.delete(&format!("{}/{}", path(project.as_deref()), query_encode(&id))).await?;
            outln!("freeze window {id} removed");
        }
        FreezeCommand::Status { server, project, json } => {
            let mut p = "/api/v1/freeze/status".to_owned();
            if let Some(name) = &project {
                p.push_str(&format!("?project={}", query_encode(name)));
            }
            let status: FreezeStatus = server.client()?.get(&p).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(ExitCode::SUCCESS);
            }
            for e in &status.environments {
                if e.frozen {
                    let until = if e.opens.is_some() { local(e.opens) } else { "an admin removes it".into() };
                    outln!(
                        "{:<8} FROZEN until {until} by {} ({})",
                        e.environment,
                        e.windows.join(", "),
                        e.reasons.join("; ")
                    );
                } else {
                    let next = e.next_closes.map(|t| format!("; next freeze {}", local(Some(t)))).unwrap_or_default();
                    outln!("{:<8} open{next}", e.environment);
                }
            }
        }
        FreezeCommand::Override { server, task, reason } => {
            let body = serde_json::json!({ "reason": reason });
            let t: Task = server.client()?.post(&format!("/api/v1/tasks/{task}/override"), Some(&body)).await?;
            outln!("task {} is {} (follow it with: cloudbuild logs {} --follow)", t.id, t.state, t.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
