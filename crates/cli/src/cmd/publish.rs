//! `cloudbuild publish`: submit the current checkout and stream its build.

use crate::i18n::tr;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use cloudbuild_proto::task::{Environment, Task};

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
    /// When a freeze window holds the environment, wait (the task is `gated`) and start by
    /// itself when the window opens, instead of being refused. Cancel it like any task.
    #[arg(long)]
    queue_until_open: bool,
    /// Publish through an active freeze window, for this task only, with this reason (admins,
    /// or the role the window names; recorded in the audit log and the build's log).
    #[arg(long, value_name = "REASON")]
    override_freeze: Option<String>,
}

/// The name in the `package.json` of the checkout (or directory) `cwd` is in: the project that
/// `logs` and `open` mean when no task is named.
/// `what` says what to pass instead (`a task id`, `a project name`).
pub(crate) fn current_project(what: &str) -> Result<String> {
    let cwd = std::env::current_dir()?;
    let root = git(&cwd, &["rev-parse", "--show-toplevel"]).map(PathBuf::from).unwrap_or(cwd);
    let path = root.join("package.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| anyhow!(tr!("no-package-json", dir = root.display(), what = what)))?;
    let pkg: serde_json::Value = serde_json::from_str(&text).with_context(|| tr!("not-json", what = path.display()))?;
    pkg.get("name")
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!(tr!("no-name", path = path.display(), what = what)))
}

/// Opens `url` in the user's browser (`open` crate: xdg-open, open, start…).
pub(crate) fn open_in_browser(url: &str) -> Result<()> {
    eprintln!("{}", tr!("opening", url = url));
    open::that_detached(url).map_err(|e| {
        tracing::debug!("opening a browser: {e}");
        anyhow!(tr!("no-browser", url = url))
    })
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .with_context(|| tr!("no-git"))?;
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
    let listing = git(root, &["ls-remote", "--", "origin", &heads, &tags]).with_context(|| tr!("no-ls-remote"))?;
    let refs: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once('\t')).collect();
    let find = |name: &str| refs.iter().find(|(_, r)| *r == name).map(|(sha, _)| sha.to_string());
    Ok(find(&heads).or_else(|| find(&format!("{tags}^{{}}"))).or_else(|| find(&tags)))
}

/// Finds what to publish, refusing local work the server would not see (unless
/// `allow_dirty`): uncommitted changes to tracked files, commits not pushed to `origin`.
fn inspect(cwd: &Path, branch: Option<String>, allow_dirty: bool) -> Result<Checkout> {
    let root = PathBuf::from(git(cwd, &["rev-parse", "--show-toplevel"]).map_err(|_| anyhow!(tr!("not-a-checkout")))?);
    let repo = git(&root, &["remote", "get-url", "origin"]).map_err(|_| anyhow!(tr!("no-origin")))?;
    if git(&root, &["rev-parse", "--verify", "--quiet", "HEAD"]).is_err() {
        bail!(tr!("no-commits"));
    }
    let current = git(&root, &["rev-parse", "--abbrev-ref", "HEAD"]).ok().filter(|b| b != "HEAD");
    let branch = match branch.or_else(|| current.clone()) {
        Some(b) => b,
        None => bail!(tr!("detached")),
    };
    let Some(commit) = remote_commit(&root, &branch)? else {
        bail!(tr!("not-pushed-branch", repo = repo, branch = branch));
    };
    // Local work only matters when publishing the branch checked out here.
    if current.as_deref() == Some(branch.as_str()) {
        let mut problems = Vec::new();
        let status = git(&root, &["status", "--porcelain", "--untracked-files=no"])?;
        if !status.is_empty() {
            problems.push(tr!("uncommitted", count = status.lines().count()));
        }
        let head = git(&root, &["rev-parse", "HEAD"])?;
        if head != commit {
            let ahead = git(&root, &["rev-list", "--count", &format!("{commit}..HEAD")]).ok();
            problems.push(match ahead {
                Some(n) if n != "0" => tr!("ahead", count = n, branch = branch),
                _ => tr!("head-differs", head = &head[..12.min(head.len())], branch = branch, commit = &commit[..12]),
            });
        }
        if !problems.is_empty() {
            let what = problems.join(&format!("{} ", tr!("problems-joiner")));
            if !allow_dirty {
                bail!(tr!("dirty-refused", what = what, commit = &commit[..12], branch = branch));
            }
            let warning = tr!("dirty-warning", what = what, branch = branch, commit = &commit[..12]);
            eprintln!("{}", tr!("warning", message = warning));
        }
    }
    // Name and version come from the commit that is built, when this checkout has it.
    let has_commit = git(&root, &["cat-file", "-e", &format!("{commit}^{{commit}}")]).is_ok();
    let (text, from) = if has_commit {
        (
            git(&root, &["show", &format!("{commit}:package.json")]).ok(),
            tr!("package-at-commit", commit = &commit[..12]),
        )
    } else {
        let path = root.join("package.json");
        (std::fs::read_to_string(&path).ok(), path.display().to_string())
    };
    let text = text.ok_or_else(|| anyhow!(tr!("no-package", from = from)))?;
    let pkg: serde_json::Value = serde_json::from_str(&text).with_context(|| tr!("not-json", what = from))?;
    let field = |k: &str| {
        pkg.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!(tr!("no-field", from = from, field = k)))
    };
    Ok(Checkout { name: field("name")?, version: field("version")?, repo, branch, commit })
}

pub(crate) async fn publish(args: PublishArgs) -> Result<ExitCode> {
    let cwd = std::env::current_dir()?;
    let checkout = inspect(&cwd, args.branch, args.allow_dirty)?;
    let client = args.server.client()?;
    let env = Environment::parse(&args.env).unwrap_or_default();
    if !args.json {
        let c = &checkout;
        let (name, version, repo, branch, commit) = (&c.name, &c.version, &c.repo, &c.branch, &c.commit[..12]);
        eprintln!(
            "{}",
            tr!(
                "publishing",
                name = name,
                version = version,
                env = env.as_str(),
                repo = repo,
                branch = branch,
                commit = commit
            )
        );
    }
    let mut body = serde_json::json!({
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
    // Only when given: a server from before the gates refuses fields it does not know.
    if args.queue_until_open {
        body["gate"] = "queue".into();
    }
    if let Some(reason) = &args.override_freeze {
        body["override"] = reason.as_str().into();
    }
    let task: Task = client.post("/api/v1/tasks", Some(&body)).await?;
    if args.detach {
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&task)?);
        } else {
            let t = &task;
            outln!(
                "{}",
                tr!("queued", id = t.id, name = t.name, version = t.version, repo = t.repo, branch = t.branch)
            );
            outln!("{}", tr!("follow-hint", id = t.id));
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
            outln!("\n{}", tr!("published", url = url));
        }
        ExitCode::SUCCESS
    } else if state == "skipped" {
        // Nothing failed: the push changed nothing the project builds for.
        if !json {
            let reason = end.get("reason").and_then(|v| v.as_str()).unwrap_or("");
            outln!("\n{}", tr!("task-skipped", id = id, reason = reason));
        }
        ExitCode::SUCCESS
    } else {
        if !json {
            let reason = end.get("reason").and_then(|v| v.as_str()).unwrap_or("");
            let state = crate::i18n::state(state);
            eprintln!("\n{}", tr!("task-ended", id = id, state = state, reason = reason));
        }
        ExitCode::from(1)
    }
}

async fn interrupted(client: &Client, id: i64) -> Result<ExitCode> {
    if !std::io::stdin().is_terminal() {
        eprintln!("\n{}", tr!("interrupted", id = id));
        return Ok(ExitCode::from(130));
    }
    eprint!("\n{} ", tr!("ask-cancel", id = id));
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    if answer.trim().eq_ignore_ascii_case("y") || answer.trim().eq_ignore_ascii_case("yes") {
        let task: Task = client.post(&format!("/api/v1/tasks/{id}/cancel"), None).await?;
        if task.state.is_terminal() {
            eprintln!("{}", tr!("task-is", id = id, state = crate::i18n::state(task.state.as_str())));
        } else {
            eprintln!("{}", tr!("cancel-requested", id = id));
        }
    } else {
        eprintln!("{}", tr!("keeps-running", id = id));
    }
    Ok(ExitCode::from(130))
}
