//! `cloudbuild publish`: submit the current checkout and stream its build.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use cloudbuild_proto::task::{Environment, Task};
use cloudbuild_proto::text::count;

use super::ServerArg;
use crate::client::Client;
use crate::display::Display;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Build command, overriding cloudbuild.toml and package.json (e.g. "npm run build:prod").
    #[arg(long)]
    build_cmd: Option<String>,
    /// Branch or tag to build [default: the current branch]. The commit `origin` has for it
    /// is built, and its package.json names the release.
    #[arg(long)]
    branch: Option<String>,
    /// Publish even with uncommitted or unpushed changes: the server builds the commit that
    /// `origin` has, without them.
    #[arg(long)]
    allow_dirty: bool,
    /// Environment to publish to.
    #[arg(long, default_value = "test", value_parser = ["test", "prod"])]
    env: String,
    /// Publish even if this version is already released to prod (a new build of the same version).
    #[arg(long)]
    force: bool,
    /// Only workers with all these labels may build it (comma-separated, e.g. linux,node20).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Build from scratch: no saved node_modules, no saved build output, and save nothing to
    /// the worker's caches (the package manager's download cache is still used).
    #[arg(long)]
    no_cache: bool,
    /// Submit and exit; print how to follow the build.
    #[arg(long)]
    detach: bool,
    /// Print events as JSON lines (and the task as JSON with --detach).
    #[arg(long)]
    pub(crate) json: bool,
    /// Open the published site in the browser when the build succeeds.
    #[arg(long, conflicts_with = "detach")]
    open: bool,
}

/// The name in the `package.json` of the checkout (or directory) `cwd` is in: the project that
/// `logs` and `open` mean when no task is named.
/// `what` says what to pass instead (`a task id`, `a project name`).
pub(crate) fn current_project(what: &str) -> Result<String> {
    let cwd = std::env::current_dir()?;
    let root = git(&cwd, &["rev-parse", "--show-toplevel"]).map(PathBuf::from).unwrap_or(cwd);
    let path = root.join("package.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| anyhow!("no package.json in {}, so no project here: pass {what}", root.display()))?;
    let pkg: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    pkg.get("name")
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} has no \"name\"; pass {what}", path.display()))
}

/// Opens `url` in the user's browser (`open` crate: xdg-open, open, start…).
pub(crate) fn open_in_browser(url: &str) -> Result<()> {
    eprintln!("opening {url}");
    open::that_detached(url).map_err(|e| {
        tracing::debug!("opening a browser: {e}");
        anyhow!("no browser could be opened here (xdg-open, open, …); the site is at {url}")
    })
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .context("cannot run git; is it installed?")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What `publish` builds: the commit `origin` has for the branch, and the name and version
/// that commit's package.json carries (the server checks them again on the built commit).
struct Checkout {
    repo: String,
    branch: String,
    commit: String,
    name: String,
    version: String,
}

/// The commit `origin` has for a branch or tag (an annotated tag's commit, not the tag object).
fn remote_commit(root: &Path, branch: &str) -> Result<Option<String>> {
    let heads = format!("refs/heads/{branch}");
    let tags = format!("refs/tags/{branch}");
    let listing = git(root, &["ls-remote", "--", "origin", &heads, &tags])
        .with_context(|| "cannot ask `origin` for its commits (git ls-remote origin)")?;
    let refs: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once('\t')).collect();
    let find = |name: &str| refs.iter().find(|(_, r)| *r == name).map(|(sha, _)| sha.to_string());
    Ok(find(&heads).or_else(|| find(&format!("{tags}^{{}}"))).or_else(|| find(&tags)))
}

/// Finds what to publish, refusing local work the server would not see (unless
/// `allow_dirty`): uncommitted changes to tracked files, commits not pushed to `origin`.
fn inspect(cwd: &Path, branch: Option<String>, allow_dirty: bool) -> Result<Checkout> {
    let root = PathBuf::from(
        git(cwd, &["rev-parse", "--show-toplevel"])
            .map_err(|_| anyhow!("not inside a git checkout: run publish in your project's repository"))?,
    );
    let repo = git(&root, &["remote", "get-url", "origin"]).map_err(|_| {
        anyhow!("the checkout has no remote `origin`; the server clones from it (git remote add origin <url>)")
    })?;
    if git(&root, &["rev-parse", "--verify", "--quiet", "HEAD"]).is_err() {
        bail!(
            "the repository has no commits yet: commit your project and push it, then publish \
             (git add -A && git commit -m \"first commit\" && git push -u origin HEAD)"
        );
    }
    let current = git(&root, &["rev-parse", "--abbrev-ref", "HEAD"]).ok().filter(|b| b != "HEAD");
    let branch = match branch.or_else(|| current.clone()) {
        Some(b) => b,
        None => bail!("HEAD is detached; pass --branch <branch or tag>"),
    };
    let Some(commit) = remote_commit(&root, &branch)? else {
        bail!("`origin` ({repo}) has no branch or tag `{branch}`: push it first (git push -u origin {branch})");
    };
    // Local work only matters when publishing the branch checked out here.
    if current.as_deref() == Some(branch.as_str()) {
        let mut problems = Vec::new();
        let status = git(&root, &["status", "--porcelain", "--untracked-files=no"])?;
        if !status.is_empty() {
            let n = status.lines().count();
            let files = count(n as u64, "file has", "files have");
            problems.push(format!("{files} uncommitted changes"));
        }
        let head = git(&root, &["rev-parse", "HEAD"])?;
        if head != commit {
            let ahead = git(&root, &["rev-list", "--count", &format!("{commit}..HEAD")]).ok();
            problems.push(match ahead {
                Some(n) if n != "0" => format!(
                    "{} not pushed to origin/{branch}",
                    count(n.parse::<u64>().unwrap_or(0), "commit is", "commits are")
                ),
                _ => format!("HEAD ({}) is not origin/{branch} ({})", &head[..12.min(head.len())], &commit[..12]),
            });
        }
        if !problems.is_empty() {
            let what = problems.join(", and ");
            if !allow_dirty {
                bail!(
                    "{what}; the server builds what `origin` has (commit {}), without them.\n\
                     Commit and push (git push), then publish again; or pass --allow-dirty to publish origin/{branch} as it is.",
                    &commit[..12]
                );
            }
            eprintln!("warning: {what}; publishing origin/{branch} (commit {}) without them", &commit[..12]);
        }
    }
    // Name and version come from the commit that is built, when this checkout has it.
    let has_commit = git(&root, &["cat-file", "-e", &format!("{commit}^{{commit}}")]).is_ok();
    let (text, from) = if has_commit {
        (
            git(&root, &["show", &format!("{commit}:package.json")]).ok(),
            format!("package.json at commit {}", &commit[..12]),
        )
    } else {
        let path = root.join("package.json");
        (std::fs::read_to_string(&path).ok(), path.display().to_string())
    };
    let text = text.ok_or_else(|| anyhow!("cannot read {from}; the project's name and version come from it"))?;
    let pkg: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{from} is not valid JSON"))?;
    let field = |k: &str| {
        pkg.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{from} has no \"{k}\" field; the project's name and version come from it"))
    };
    Ok(Checkout { name: field("name")?, version: field("version")?, repo, branch, commit })
}

pub(crate) async fn publish(args: PublishArgs) -> Result<ExitCode> {
    let cwd = std::env::current_dir()?;
    let checkout = inspect(&cwd, args.branch, args.allow_dirty)?;
    let client = args.server.client()?;
    let env = Environment::parse(&args.env).unwrap_or_default();
    if !args.json {
        eprintln!(
            "publishing {}@{} to {}: {} branch {} at commit {}",
            checkout.name,
            checkout.version,
            env.as_str(),
            checkout.repo,
            checkout.branch,
            &checkout.commit[..12]
        );
    }
    let body = serde_json::json!({
        "repo": checkout.repo,
        "branch": checkout.branch,
        "commit": checkout.commit,
        "name": checkout.name,
        "version": checkout.version,
        "build_cmd": args.build_cmd,
        "env": env,
        "trigger": "cli",
        "force": args.force,
        "labels": args.labels,
        "no_cache": args.no_cache,
    });
    let task: Task = client.post("/api/v1/tasks", Some(&body)).await?;
    if args.detach {
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&task)?);
        } else {
            outln!("task {} queued: {}@{} ({} {})", task.id, task.name, task.version, task.repo, task.branch);
            outln!("follow it with: cloudbuild logs {} --follow", task.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let code = follow_task(&client, task.id, args.json).await?;
    if args.open && code == ExitCode::SUCCESS {
        let task: Task = client.get(&format!("/api/v1/tasks/{}", task.id)).await?;
        if let Some(url) = task.url {
            open_in_browser(&url)?;
        }
    }
    Ok(code)
}

/// Follows a task to its end; Ctrl-C asks whether to cancel it (or, without a terminal, leaves
/// it running and says how to follow it).
pub(crate) async fn follow_task(client: &Client, id: i64, json: bool) -> Result<ExitCode> {
    // Shared by the event stream and the clock that notices quiet stages (one task, no threads).
    let display = std::sync::Mutex::new(Display::new(json));
    let lock = || display.lock().unwrap_or_else(|p| p.into_inner());
    let mut show = |ev: &cloudbuild_proto::event::WireEvent| lock().show(ev);
    let quiet_clock = async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            every.tick().await;
            lock().tick(std::time::Instant::now());
        }
    };
    tokio::select! {
        res = client.follow(id, 0, true, &mut show) => res?,
        () = quiet_clock => {}
        _ = tokio::signal::ctrl_c() => {
            lock().finish();
            return interrupted(client, id).await;
        }
    }
    let mut display = display.into_inner().unwrap_or_else(|p| p.into_inner());
    display.finish();
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
            // The end event carries no environment; the URL names it (`/sites/<env>/…`).
            outln!("\npublished: {url}");
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
        if task.state.is_terminal() {
            eprintln!("task {id} is {}", task.state);
        } else {
            eprintln!("cancel requested: the worker is stopping task {id} (see `cloudbuild logs {id}`)");
        }
    } else {
        eprintln!("task {id} keeps running. Follow it with: cloudbuild logs {id} --follow");
    }
    Ok(ExitCode::from(130))
}
