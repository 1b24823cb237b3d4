//! Subcommands and their flags. Exit codes: 0 success, 1 the build failed (or was cancelled or
//! timed out), 2 bad input or an unreachable server, 130 interrupted.

mod audit;
mod cache;
mod freeze;
mod previews;
mod projects;
mod publish;
mod releases;
mod schedules;
mod secrets;
mod server;
mod tasks;
mod users;
mod workers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build front-end projects on a server and publish them.
#[derive(Debug, Parser)]
#[command(
    name = "cloudbuild",
    version,
    about = "Build front-end projects on a server and publish them, streaming the build live.",
    after_help = "Start a server with `cloudbuild server`, then run `cloudbuild publish` in a git checkout.\n\
                  Client commands find the server with --server or CLOUDBUILD_SERVER (default http://127.0.0.1:7001).\n\
                  Exit codes: 0 success, 1 the build failed, 2 bad input or server unreachable, 130 interrupted."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Show error codes and HTTP statuses with error messages.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
}

/// Where the client commands find the server.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerArg {
    /// URL of the cloudbuild server (what `cloudbuild server` prints when it starts).
    #[arg(
        long,
        env = "CLOUDBUILD_SERVER",
        hide_env_values = true,
        default_value = "http://127.0.0.1:7001",
        global = true
    )]
    pub(crate) server: String,
    /// API token (a personal or service token) [default: the one `cloudbuild login` kept for
    /// this server]; the server requires one unless it listens on loopback.
    #[arg(long, env = "CLOUDBUILD_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
}

impl ServerArg {
    /// A client for this server with `--token`, `CLOUDBUILD_TOKEN`, or the kept sign-in.
    pub(crate) fn client(&self) -> anyhow::Result<crate::client::Client> {
        let token = match &self.token {
            Some(t) => Some(t.clone()),
            None => crate::credentials::Credentials::token_for(&self.server)?,
        };
        crate::client::Client::new(&self.server, token.as_deref())
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server: REST API, event streams, scheduler, sites, and one embedded worker.
    Server(server::ServerArgs),
    /// Run a worker that takes tasks from a server.
    Worker(server::WorkerArgs),
    /// Build and publish the project in the current git checkout, streaming the build live.
    Publish(publish::PublishArgs),
    /// Show (or follow) the log of a task.
    Logs(tasks::LogsArgs),
    /// List tasks, newest first.
    Tasks(tasks::TasksArgs),
    /// Cancel a task (a queued task never runs; a running one is stopped).
    Cancel(tasks::IdArgs),
    /// Run a finished task again as a new task.
    Retry(tasks::IdArgs),
    /// Approve a `prod` publish awaiting approval (a maintainer other than its requester, or
    /// an admin): it starts, or waits while a freeze window holds prod.
    Approve(tasks::DecisionArgs),
    /// Reject a `prod` publish awaiting approval, with --reason: it ends and never runs.
    Reject(tasks::DecisionArgs),
    /// List a project's releases: version, build, who, when, commit, which is current.
    Releases(releases::ReleasesArgs),
    /// Switch an environment back to an earlier release, instantly (no rebuild).
    Rollback(releases::RollbackArgs),
    /// Set, list and delete a project's secrets (environment variables of its builds, masked
    /// in every log).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// List workers: state, slots, labels, running tasks, last heartbeat.
    Workers(workers::WorkersArgs),
    /// Open the project's published site in the browser (the latest successful build's URL).
    Open(tasks::OpenArgs),
    /// Create, list and revoke the tokens remote workers connect with.
    #[command(subcommand)]
    WorkerTokens(workers::TokenCommand),
    /// The audit log: who changed what (tasks, releases, projects, worker tokens), from where,
    /// and how it ended; newest first.
    Audit(audit::AuditArgs),
    /// Registered projects and the repository each builds from: list, show, create, edit,
    /// delete.
    #[command(subcommand)]
    Projects(projects::ProjectsCommand),
    /// A project's schedules (cron builds in a time zone): list with the next run, add,
    /// remove, run-now.
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Freeze windows (封网) that hold releases: list, add, remove, status, and the override
    /// that starts one gated task.
    #[command(subcommand)]
    Freeze(freeze::FreezeCommand),
    /// A project's pull-request previews (each at its own URL, removed when the pull request
    /// closes or expires): list, remove.
    #[command(subcommand)]
    Previews(previews::PreviewsCommand),
    /// Sign in to a server: your password for a personal token, kept for the client commands
    /// (mode 0600 in your config directory).
    Login(users::LoginArgs),
    /// Sign out: revoke the kept token and forget it.
    Logout(ServerArg),
    /// Who the server takes you for (user, role, token).
    Whoami(users::WhoamiArgs),
    /// Make the first admin of a new server with the setup token it printed, and sign in.
    Setup(users::SetupArgs),
    /// Users (admins): list, create, disable, enable, set-role.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Your API tokens for scripts and CI: list, create, revoke.
    #[command(subcommand)]
    Tokens(users::TokensCommand),
    /// A project's members and their roles (reporter, developer, maintainer): list, add,
    /// remove, set-role.
    #[command(subcommand)]
    Members(projects::MembersCommand),
    /// On the server's machine: create an admin directly in its store.
    #[command(subcommand)]
    Admin(users::AdminCommand),
    /// List or clear a worker's build caches (saved node_modules, build outputs, git mirrors);
    /// run on the worker's machine.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

impl Cli {
    /// Whether the command prints JSON (`--json`): its errors are JSON too.
    pub(crate) fn json(&self) -> bool {
        match &self.command {
            Command::Publish(a) => a.json,
            Command::Logs(a) => a.json,
            Command::Tasks(a) => a.json,
            Command::Cancel(a) | Command::Retry(a) => a.json,
            Command::Approve(a) | Command::Reject(a) => a.json,
            Command::Releases(a) => a.json,
            Command::Rollback(a) => a.json,
            Command::Workers(a) => a.json,
            Command::WorkerTokens(_) => false,
            Command::Secrets(c) => c.json(),
            Command::Cache(c) => c.json(),
            Command::Projects(c) => c.json(),
            Command::Schedules(c) => c.json(),
            Command::Previews(c) => c.json(),
            Command::Freeze(c) => c.json(),
            Command::Audit(a) => a.json,
            Command::Whoami(a) => users::whoami_json(a),
            Command::Users(c) => c.json(),
            Command::Tokens(c) => c.json(),
            Command::Members(c) => c.json(),
            Command::Login(_) | Command::Logout(_) | Command::Setup(_) | Command::Admin(_) => false,
            Command::Server(_) | Command::Worker(_) | Command::Open(_) => false,
        }
    }

    /// Servers and workers log at info; client commands only warn, to keep their output clean.
    pub(crate) fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Server(_) | Command::Worker(_) => "info,sqlx=warn,tower_http=warn",
            _ => "warn",
        }
    }
}

/// Runs the chosen subcommand.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Server(a) => server::server(a).await,
        Command::Worker(a) => server::worker(a).await,
        Command::Publish(a) => publish::publish(a).await,
        Command::Logs(a) => tasks::logs(a).await,
        Command::Tasks(a) => tasks::tasks(a).await,
        Command::Cancel(a) => tasks::cancel(a).await,
        Command::Retry(a) => tasks::retry(a).await,
        Command::Approve(a) => tasks::decide(a, true).await,
        Command::Reject(a) => tasks::decide(a, false).await,
        Command::Releases(a) => releases::releases(a).await,
        Command::Rollback(a) => releases::rollback(a).await,
        Command::Workers(a) => workers::workers(a).await,
        Command::WorkerTokens(c) => workers::tokens(c).await,
        Command::Secrets(c) => secrets::run(c).await,
        Command::Open(a) => tasks::open(a).await,
        Command::Cache(c) => cache::run(c).await,
        Command::Projects(c) => projects::run(c).await,
        Command::Schedules(c) => schedules::run(c).await,
        Command::Previews(c) => previews::run(c).await,
        Command::Freeze(c) => freeze::run(c).await,
        Command::Login(a) => users::login(a).await,
        Command::Logout(a) => users::logout(a).await,
        Command::Whoami(a) => users::whoami(a).await,
        Command::Setup(a) => users::setup(a).await,
        Command::Users(c) => users::users(c).await,
        Command::Tokens(c) => users::tokens(c).await,
        Command::Members(c) => projects::members(c).await,
        Command::Admin(c) => users::admin(c).await,
        Command::Audit(a) => audit::audit(a).await,
    }
}
