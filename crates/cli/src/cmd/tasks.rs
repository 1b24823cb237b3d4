//! `cloudbuild logs`, `tasks`, `cancel`, `retry`.

use std::process::ExitCode;

use anyhow::Result;
use cloudbuild_proto::task::{Task, TaskPage};

use super::publish::{follow_task, verdict};
use super::ServerArg;
use crate::display::Display;

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Task id.
    id: i64,
    /// Keep following until the task ends.
    #[arg(short, long)]
    follow: bool,
    /// Start after this event sequence number.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Print events as JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TasksArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Only this project.
    #[arg(long)]
    name: Option<String>,
    /// Only this state (queued, running, succeeded, failed, cancelled, timed_out).
    #[arg(long)]
    state: Option<String>,
    /// How many to show.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Show tasks older than this id (the next page).
    #[arg(long)]
    before: Option<i64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Task id.
    id: i64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn logs(args: LogsArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let mut display = Display::new(args.json);
    client.follow(args.id, args.after, args.follow, &mut |ev| display.show(ev)).await?;
    Ok(if display.end.is_some() { verdict(&display, args.id, args.json) } else { ExitCode::SUCCESS })
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
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    if page.tasks.is_empty() {
        println!("no tasks");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:>6}  {:<10} {:<12} {:<24} {:<12} {:<16} CREATED", "ID", "STATE", "STAGE", "NAME", "VERSION", "BRANCH");
    for t in &page.tasks {
        println!(
            "{:>6}  {:<10} {:<12} {:<24} {:<12} {:<16} {}",
            t.id,
            t.state.as_str(),
            t.stage.map(|s| s.action()).unwrap_or("-"),
            t.name,
            t.version,
            t.branch,
            &t.created_at.to_string()[..19]
        );
    }
    if let Some(next) = page.next_before {
        println!("more: cloudbuild tasks --before {next}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn cancel(args: IdArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let task: Task = client.post(&format!("/api/v1/tasks/{}/cancel", args.id), None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&task)?);
    } else if task.state.is_terminal() {
        println!("task {} is {}", task.id, task.state);
    } else {
        println!("task {} is being stopped (was {})", task.id, task.stage.map(|s| s.action()).unwrap_or("queued"));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn retry(args: IdArgs) -> Result<ExitCode> {
    let client = args.server.client()?;
    let task: Task = client.post(&format!("/api/v1/tasks/{}/retry", args.id), None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&task)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("task {} queued as a retry of task {}", task.id, args.id);
    follow_task(&client, task.id, false).await
}
