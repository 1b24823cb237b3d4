//! `cloudbuild logs`, `tasks`, `cancel`, `retry`.

use crate::i18n::tr;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use cloudbuild_proto::task::{Task, TaskPage};
use cloudbuild_proto::time::Timestamp;

use super::publish::{current_project, follow_task, verdict};
use super::ServerArg;
use crate::client::Client;
use crate::display::Display;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Task id [default: the latest task of the project in the current directory].
    id: Option<i64>,
    /// Keep following until the task ends.
    #[arg(short, long)]
    follow: bool,
    /// Start after this event sequence number.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Print events as JSON lines.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TasksArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Only this project.
    #[arg(long)]
    name: Option<String>,
    /// Only tasks in this state.
    #[arg(long, value_parser = ["awaiting_approval", "gated", "queued", "running", "succeeded", "skipped", "failed", "cancelled", "timed_out"])]
    state: Option<String>,
    /// How many to show.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Show tasks older than this id (the next page).
    #[arg(long)]
    before: Option<i64>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Task id.
    id: i64,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DecisionArgs {
    #[command(flatten)]
    server: ServerArg,
    /// The id of the task awaiting approval.
    id: i64,
    /// Why (kept in the audit log and the build's log; required to reject).
    #[arg(long)]
    reason: Option<String>,
    /// Print the task as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `approve` / `reject`: a decision on a `prod` publish awaiting approval.
pub(crate) async fn decide(args: DecisionArgs, approve: bool) -> Result<ExitCode> {
    let client = args.server.client()?;
    let verb = if approve { "approve" } else { "reject" };
    let body = serde_json::json!({ "reason": args.reason });
    let task: Task = client.post(&format!("/api/v1/tasks/{}/{verb}", args.id), Some(&body)).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&task)?);
    } else if approve {
        outln!(
            "task {} approved; it is {} (follow it with: cloudbuild logs {} --follow)",
            task.id,
            task.state,
            task.id
        );
    } else {
        outln!("task {} rejected: {}", task.id, task.reason.unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn logs(args: LogsArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let id = match args.id {
        Some(id) => id,
        None => latest_task(&client, &current_project(&tr!("pass-task-id"))?, None).await?.id,
    };
    let mut display = Display::new(args.json);
    client.follow(id, args.after, args.follow, &mut |ev| display.show(ev)).await?;
    display.finish();
    Ok(if display.end.is_some() { verdict(&display, id, args.json) } else { ExitCode::SUCCESS })
}

/// The newest task of project `name` for `test` or `prod` (in `state`, when given): what a
/// checkout's `logs` and `open` mean, not a pull request's preview built meanwhile.
pub(crate) async fn latest_task(client: &Client, name: &str, state: Option<&str>) -> Result<Task> {
    let mut query = format!("/api/v1/tasks?limit=100&name={}", crate::client::query_encode(name));
    if let Some(state) = state {
        query.push_str(&format!("&state={state}"));
    }
    let page: TaskPage = client.get(&query).await?;
    page.tasks.into_iter().find(|t| t.env.pull_request().is_none()).ok_or_else(|| match state {
        Some(state) => anyhow!("{name} has no {state} task yet (see `cloudbuild tasks --name {name}`)"),
        None => anyhow!("{name} has no tasks yet: publish it with `cloudbuild publish`"),
    })
}

/// How long a task ran (or has been running), `-` before it started.
fn duration(t: &Task) -> String {
    let Some(start) = t.started_at else { return "-".into() };
    let end = t.finished_at.unwrap_or_else(Timestamp::now);
    crate::display::seconds((end.0 - start.0) / 1000)
}

pub(crate) async fn tasks(args: TasksArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let mut query = format!("/api/v1/tasks?limit={}", args.limit);
    if let Some(n) = &args.name {
        query.push_str(&format!("&name={}", crate::client::query_encode(n)));
    }
    if let Some(s) = &args.state {
        query.push_str(&format!("&state={}", crate::client::query_encode(s)));
    }
    if let Some(b) = args.before {
        query.push_str(&format!("&before={b}"));
    }
    let page: TaskPage = client.get(&query).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    if page.tasks.is_empty() {
        outln!("no tasks");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:>6}  {:<10} {:<12} {:<24} {:<12} {:<16} {:>8}  CREATED",
        "ID",
        "STATE",
        "STAGE",
        "NAME",
        "VERSION",
        "BRANCH",
        "DURATION"
    );
    for t in &page.tasks {
        outln!(
            "{:>6}  {:<10} {:<12} {:<24} {:<12} {:<16} {:>8}  {}",
            t.id,
            t.state.as_str(),
            t.stage.map(|s| s.action()).unwrap_or("-"),
            t.name,
            t.version,
            t.branch,
            duration(t),
            crate::display::utc(t.created_at)
        );
    }
    if let Some(next) = page.next_before {
        outln!("more: cloudbuild tasks --before {next}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn cancel(args: IdArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let task: Task = client.post(&format!("/api/v1/tasks/{}/cancel", args.id), None).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&task)?);
    } else if task.state.is_terminal() {
        outln!("task {} is {}", task.id, task.state);
    } else {
        outln!(
            "task {} is being stopped by its worker (it was at {})",
            task.id,
            task.stage.map(|s| s.action()).unwrap_or("queued")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn retry(args: IdArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let task: Task = client.post(&format!("/api/v1/tasks/{}/retry", args.id), None).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&task)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("task {} queued as a retry of task {}", task.id, args.id);
    follow_task(&client, task.id, false).await
}

#[derive(Debug, clap::Args)]
pub(crate) struct OpenArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Project name [default: the one in the current directory's package.json].
    name: Option<String>,
    /// Only print the URL.
    #[arg(long)]
    print: bool,
}

/// Opens the site of the project's latest successful build.
pub(crate) async fn open(args: OpenArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let name = match args.name {
        Some(n) => n,
        None => current_project(&tr!("pass-project-name"))?,
    };
    let task = latest_task(&client, &name, Some("succeeded")).await?;
    let url = task.url.ok_or_else(|| anyhow!("task {} of {name} has no site URL", task.id))?;
    if args.print {
        outln!("{url}");
        return Ok(ExitCode::SUCCESS);
    }
    super::publish::open_in_browser(&url)?;
    Ok(ExitCode::SUCCESS)
}
