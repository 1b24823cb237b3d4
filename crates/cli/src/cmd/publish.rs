//! `cloudbuild publish`: submit the current checkout and stream its build.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use cloudbuild_proto::task::{Environment, Task};

use super::ServerArg;
use crate::client::Client;
use crate::display::Display;

#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Build command, overriding cloudbuild.toml and package.json (e.g. "npm run build:prod").
    #[arg(long)]
    build_cmd: Option<String>,
    /// Branch or tag to build [default: the current branch].
    #[arg(long)]
    branch: Option<String>,
    /// Environment to publish to.
    #[arg(long, default_value = "test", value_parser = ["test", "prod"])]
    env: String,
    /// Publish even if this version is already released to prod (a new build of the same version).
    #[arg(long)]
    force: bool,
    /// Only workers with all these labels may build it (comma-separated, e.g. linux,node20).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Submit and exit; print how to follow the build.
    #[arg(long)]
    detach: bool,
    /// Print events as JSON lines (and the task as JSON with --detach).
    #[arg(long)]
    json: bool,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run git; is it installed?")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What `publish` derives from the checkout.
struct Checkout {
    root: PathBuf,
    repo: String,
    branch: String,
    name: String,
    version: String,
}

fn inspect(cwd: &Path, branch: Option<String>) -> Result<Checkout> {
    let root = PathBuf::from(
        git(cwd, &["rev-parse", "--show-toplevel"])
            .map_err(|_| anyhow!("not inside a git checkout: run publish in your project's repository"))?,
    );
    let repo = git(&root, &["remote", "get-url", "origin"]).map_err(|_| {
        anyhow!("the checkout has no remote `origin`; the server clones from it (git remote add origin <url>)")
    })?;
    let branch = match branch {
        Some(b) => b,
        None => {
            let b = git(&root, &["rev-parse", "--abbrev-ref", "HEAD"])?;
            if b == "HEAD" {
                bail!("HEAD is detached; pass --branch <branch or tag>");
            }
            b
        }
    };
    let pkg_path = root.join("package.json");
    let pkg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&pkg_path).with_context(|| format!("cannot read {}", pkg_path.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", pkg_path.display()))?;
    let field = |k: &str| {
        pkg.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("package.json has no \"{k}\" field; the project's name and version come from it"))
    };
    Ok(Checkout { name: field("name")?, version: field("version")?, root, repo, branch })
}

/// Warns about local work the server will not see: it builds what `origin` has.
fn warn_unpublished(c: &Checkout) {
    if let Ok(s) = git(&c.root, &["status", "--porcelain", "--untracked-files=no"]) {
        if !s.is_empty() {
            eprintln!("warning: uncommitted changes are not built; the server clones `origin`");
        }
    }
    let upstream = format!("origin/{}", c.branch);
    if let Ok(n) = git(&c.root, &["rev-list", "--count", &format!("{upstream}..HEAD")]) {
        if n != "0" {
            eprintln!("warning: {n} local commit(s) are not pushed to {upstream} and will not be built");
        }
    }
}

pub(crate) async fn publish(args: PublishArgs) -> Result<ExitCode> {
    let cwd = std::env::current_dir()?;
    let checkout = inspect(&cwd, args.branch)?;
    warn_unpublished(&checkout);
    let client = args.server.client()?;
    let env = Environment::parse(&args.env).unwrap_or_default();
    let body = serde_json::json!({
        "repo": checkout.repo,
        "branch": checkout.branch,
        "name": checkout.name,
        "version": checkout.version,
        "build_cmd": args.build_cmd,
        "env": env,
        "trigger": "cli",
        "force": args.force,
        "labels": args.labels,
    });
    let task: Task = client.post("/api/v1/tasks", Some(&body)).await?;
    if args.detach {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&task)?);
        } else {
            println!("task {} queued: {}@{} ({} {})", task.id, task.name, task.version, task.repo, task.branch);
            println!("follow it with: cloudbuild logs {} --follow", task.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow_task(&client, task.id, args.json).await
}

/// Follows a task to its end; Ctrl-C asks whether to cancel it (or, without a terminal, leaves
/// it running and says how to follow it).
pub(crate) async fn follow_task(client: &Client, id: i64, json: bool) -> Result<ExitCode> {
    let mut display = Display::new(json);
    let mut show = |ev: &cloudbuild_proto::event::WireEvent| display.show(ev);
    tokio::select! {
        res = client.follow(id, 0, true, &mut show) => res?,
        _ = tokio::signal::ctrl_c() => return interrupted(client, id).await,
    }
    Ok(verdict(&display, id, json))
}

/// The exit code and last line for a finished task.
pub(crate) fn verdict(display: &Display, id: i64, json: bool) -> ExitCode {
    let Some(end) = &display.end else {
        return ExitCode::SUCCESS;
    };
    let state = end.get("state").and_then(|v| v.as_str()).unwrap_or("unknown");
    if state == "succeeded" {
        if !json {
            let url = end.get("url").and_then(|v| v.as_str()).unwrap_or("");
            println!("\npublished: {url}");
        }
        ExitCode::SUCCESS
    } else {
        if !json {
            let reason = end.get("reason").and_then(|v| v.as_str()).unwrap_or("");
            eprintln!("\ntask {id} {state}: {reason}");
        }
        ExitCode::from(1)
    }
}

async fn interrupted(client: &Client, id: i64) -> Result<ExitCode> {
    if !std::io::stdin().is_terminal() {
        eprintln!(
            "\ninterrupted; task {id} keeps running on the server. Follow it with: cloudbuild logs {id} --follow"
        );
        return Ok(ExitCode::from(130));
    }
    eprint!("\nCancel task {id} on the server? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    if answer.trim().eq_ignore_ascii_case("y") || answer.trim().eq_ignore_ascii_case("yes") {
        let task: Task = client.post(&format!("/api/v1/tasks/{id}/cancel"), None).await?;
        eprintln!("cancel requested; task {id} is {}", task.state);
    } else {
        eprintln!("task {id} keeps running. Follow it with: cloudbuild logs {id} --follow");
    }
    Ok(ExitCode::from(130))
}
