//! `cloudbuild workers` and `cloudbuild worker-tokens`.

use std::process::ExitCode;

use anyhow::Result;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::worker::{CreatedWorkerToken, WorkerList, WorkerState, WorkerTokenList};

use super::ServerArg;
use crate::output::outln;

#[derive(Debug, clap::Args)]
pub(crate) struct WorkersArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token; the secret is printed once. Start a worker with
    /// `cloudbuild worker --server URL --worker-token <secret>`.
    Create {
        #[command(flatten)]
        server: ServerArg,
        /// A name for the token (lower-case letters, digits, `-`, `_`, `.`), e.g. the machine pool.
        name: String,
    },
    /// List tokens (names and dates; secrets are never shown again).
    List {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Revoke a token: workers using it are disconnected at once and cannot reconnect; their
    /// running tasks are requeued when their leases expire.
    Revoke {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
}

/// "12 s ago" style age of a timestamp.
fn ago(t: Timestamp) -> String {
    let secs = (Timestamp::now().0 - t.0).max(0) / 1_000_000;
    match secs {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

pub(crate) async fn workers(args: WorkersArgs) -> Result<ExitCode> {
    let list: WorkerList = args.server.client()?.get("/api/v1/workers").await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.workers.is_empty() {
        outln!("no workers have connected yet");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<28} {:<12} {:>5}  {:<16} {:<18} {:<14} {:<12} SERVER",
        "NAME",
        "STATE",
        "SLOTS",
        "LABELS",
        "RUNNING",
        "HEARTBEAT",
        "TOKEN"
    );
    for w in &list.workers {
        let state = match w.state {
            WorkerState::Connected => "connected",
            WorkerState::Lost => "lost",
            WorkerState::Disconnected => "disconnected",
        };
        let running: Vec<String> = w.running.iter().map(|t| format!("{}#{}", t.task_id, t.attempt)).collect();
        let labels = if w.labels.is_empty() { "-".to_owned() } else { w.labels.join(",") };
        let running = if running.is_empty() { "-".to_owned() } else { running.join(",") };
        outln!(
            "{:<28} {:<12} {:>2}/{:<2}  {:<16} {:<18} {:<14} {:<12} {}",
            w.name,
            state,
            w.running.len(),
            w.slots,
            labels,
            running,
            ago(w.last_heartbeat),
            w.token,
            w.server
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn tokens(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Create { server, name } => {
            let body = serde_json::json!({ "name": name });
            let created: CreatedWorkerToken = server.client()?.post("/api/v1/worker-tokens", Some(&body)).await?;
            outln!("{}", created.token);
            eprintln!(
                "worker token `{}` created; it is shown only now. Start a worker with:\n  \
                 cloudbuild worker --server {} --worker-token {}",
                created.name, server.server, created.token
            );
        }
        TokenCommand::List { server } => {
            let list: WorkerTokenList = server.client()?.get("/api/v1/worker-tokens").await?;
            if list.tokens.is_empty() {
                outln!("no worker tokens (create one with `cloudbuild worker-tokens create NAME`)");
            }
            for t in list.tokens {
                let state = match t.revoked_at {
                    Some(at) => format!("revoked {}", crate::display::utc(at)),
                    None => "live".to_owned(),
                };
                outln!("{:<24} created {}  {state}", t.name, crate::display::utc(t.created_at));
            }
        }
        TokenCommand::Revoke { server, name } => {
            let path = format!("/api/v1/worker-tokens/{}", crate::client::query_encode(&name));
            server.client()?.delete(&path).await?;
            outln!("worker token `{name}` revoked; workers using it were disconnected");
        }
    }
    Ok(ExitCode::SUCCESS)
}
