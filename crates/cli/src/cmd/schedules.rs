//! `cloudbuild schedules list|add|remove|run-now`: a project's cron builds, with when each
//! runs next.

use std::process::ExitCode;

use anyhow::Result;
use cloudbuild_proto::schedule::{ScheduleList, ScheduleView};
use cloudbuild_proto::task::Task;

use super::ServerArg;
use crate::client::query_encode;
use crate::output::outln;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SchedulesCommand {
    /// List a project's schedules: expression, zone, branch, environment, next and last run.
    List {
        #[command(flatten)]
        server: ServerArg,
        /// The project's name (`site`, `@team/site`).
        project: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a schedule (maintainers): the head of a branch is built at each time the cron
    /// expression names, in its time zone (daylight-saving changes included). A run missed
    /// while no server was up is made once when one is, not once per missed time.
    Add {
        #[command(flatten)]
        server: ServerArg,
        project: String,
        /// Its name in the project (`nightly`).
        name: String,
        /// Five fields: minute hour day-of-month month day-of-week (`0 3 * * 1-5`), or
        /// `@daily`, `@hourly`, `@weekly`, `@monthly`, `@yearly`.
        #[arg(long)]
        cron: String,
        /// The IANA time zone the expression is read in (`Europe/Berlin`) [default: UTC].
        #[arg(long)]
        timezone: Option<String>,
        /// The branch to build [default: the project's default branch].
        #[arg(long)]
        branch: Option<String>,
        /// Where it publishes [default: test].
        #[arg(long, value_parser = ["test", "prod"])]
        env: Option<String>,
        /// Print the schedule as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule (maintainers); a build it started goes on.
    Remove {
        #[command(flatten)]
        server: ServerArg,
        project: String,
        name: String,
    },
    /// Start a schedule's build now and follow it (its next times do not change).
    RunNow {
        #[command(flatten)]
        server: ServerArg,
        project: String,
        name: String,
        /// Print the task as JSON and do not follow it.
        #[arg(long)]
        json: bool,
    },
}

impl SchedulesCommand {
    pub(crate) fn json(&self) -> bool {
        matches!(
            self,
            SchedulesCommand::List { json: true, .. }
                | SchedulesCommand::Add { json: true, .. }
                | SchedulesCommand::RunNow { json: true, .. }
        )
    }
}

fn path(project: &str) -> String {
    format!("/api/v1/projects/{}/schedules", query_encode(project))
}

fn next(v: &ScheduleView) -> String {
    match (&v.next_run_local, v.schedule.timezone.as_str()) {
        (Some(local), "UTC") => local.clone(),
        (Some(local), zone) => format!("{local} ({zone})"),
        (None, _) => "never".into(),
    }
}

pub(crate) async fn run(cmd: SchedulesCommand) -> Result<ExitCode> {
    match cmd {
        SchedulesCommand::List { server, project, json } => {
            let list: ScheduleList = server.client()?.get(&path(&project)).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.schedules.is_empty() {
                outln!("{project} has no schedules (`cloudbuild schedules add {project} NAME --cron EXPR`)");
            } else {
                outln!("{:<16} {:<16} {:<20} {:<5} {:<42} LAST TASK", "NAME", "CRON", "BRANCH", "ENV", "NEXT RUN");
                for v in &list.schedules {
                    let s = &v.schedule;
                    let last = s.last_task.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
                    outln!(
                        "{:<16} {:<16} {:<20} {:<5} {:<42} {last}",
                        s.name,
                        s.cron,
                        s.branch,
                        s.env.as_str(),
                        next(v)
                    );
                }
            }
        }
        SchedulesCommand::Add { server, project, name, cron, timezone, branch, env, json } => {
            let body = serde_json::json!({
                "name": name, "cron": cron, "timezone": timezone, "branch": branch, "env": env,
            });
            let v: ScheduleView = server.client()?.post(&path(&project), Some(&body)).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let s = &v.schedule;
            outln!(
                "schedule {} of {project} builds {} for {}; next run {}",
                s.name,
                s.branch,
                s.env.as_str(),
                next(&v)
            );
        }
        SchedulesCommand::Remove { server, project, name } => {
            server.client()?.delete(&format!("{}/{}", path(&project), query_encode(&name))).await?;
            outln!("schedule {name} of {project} removed");
        }
        SchedulesCommand::RunNow { server, project, name, json } => {
            let client = server.client()?;
            let task: Task = client.post(&format!("{}/{}/run", path(&project), query_encode(&name)), None).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&task)?);
                return Ok(ExitCode::SUCCESS);
            }
            outln!("task {} queued by schedule {name} of {project}", task.id);
            return super::publish::follow_task(&client, task.id, false).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
