//! `cloudbuild server` and `cloudbuild worker`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use cloudbuild_server::ServerConfig;
use cloudbuild_worker::{CacheConfig, Pipeline, Sandbox, SandboxConfig, SandboxMode, WorkerConfig};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:7001; config key `listen`].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the database, work directories and sites [default: ./cloudbuild-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where state lives: `sqlite` [default] or `redis://host:port[/db]`, which several servers
    /// can share [config key `store`]. See docs/operations.md for the Redis settings to use.
    #[arg(long)]
    store: Option<String>,
    /// TOML configuration file; every key can also be set as CLOUDBUILD_<KEY> (nested keys
    /// with `__`, e.g. CLOUDBUILD_GIT__ALLOWED_PROTOCOLS='[https,file]'). See docs/config.md.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// URL of the server to take tasks from.
    #[arg(long, env = "CLOUDBUILD_SERVER", hide_env_values = true)]
    server: String,
    /// Worker token: one made with `cloudbuild worker-tokens create`, or one of the server's
    /// `workers.tokens`.
    /// (Named apart from the client commands' `--token`, an API token.)
    #[arg(long, env = "CLOUDBUILD_WORKER_TOKEN", hide_env_values = true)]
    worker_token: String,
    /// Tasks to run at once (1 to 256).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    slots: u32,
    /// Labels this worker offers, comma-separated.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Unique worker name: lower-case letters, digits, `-`, `_`, `.` [default: <hostname>-<pid>].
    #[arg(long)]
    name: Option<String>,
    /// Where work directories go.
    #[arg(long, default_value = "./cloudbuild-worker")]
    work_dir: PathBuf,
    /// How builds are isolated: `bwrap` (bubblewrap, user-mode network; needs the Debian
    /// packages bubblewrap and slirp4netns) or `off` (builds run as this user and see what it
    /// sees). See docs/config.md "Build sandbox".
    #[arg(long, value_enum, default_value = "bwrap")]
    sandbox: SandboxArg,
    /// A directory builds may read and write (same path inside the sandbox); repeatable.
    #[arg(long, value_name = "DIR")]
    sandbox_shared: Vec<PathBuf>,
    /// A directory builds may read (same path inside the sandbox); repeatable.
    #[arg(long, value_name = "DIR")]
    sandbox_read_only: Vec<PathBuf>,
    /// A private IPv4 network builds may reach (e.g. a registry mirror: 10.8.0.0/16);
    /// repeatable. Private, link-local and this machine's own addresses are otherwise closed.
    #[arg(long, value_name = "CIDR")]
    sandbox_reachable: Vec<String>,
    /// Processes (and threads) one task may run at once [default: 4096].
    #[arg(long, value_name = "N")]
    limit_processes: Option<u64>,
    /// Memory of one task's processes together, in MiB [default: 4096].
    #[arg(long, value_name = "MIB")]
    limit_memory_mib: Option<u64>,
    /// CPU time of one task's processes together, in seconds [default: 7200].
    #[arg(long, value_name = "SECS")]
    limit_cpu_secs: Option<u64>,
    /// Disk space of one task's work directory, in MiB [default: 20480].
    #[arg(long, value_name = "MIB")]
    limit_disk_mib: Option<u64>,
    /// Build without git mirrors and saved node_modules / build outputs (the package
    /// managers' download caches are still kept).
    #[arg(long)]
    no_cache: bool,
    /// The most the saved node_modules and build outputs may take, in MiB; the least recently
    /// used go first [default: 10240].
    #[arg(long, value_name = "MIB")]
    cache_max_mib: Option<u64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SandboxArg {
    Bwrap,
    Off,
}

/// Prepares the sandbox of a worker whose work directories are under `work_root`, and proves
/// it with a trial run. A machine that cannot sandbox refuses to run builds, saying why and
/// how to choose `off` explicitly.
async fn sandbox(config: &SandboxConfig, work_root: &std::path::Path, how_off: &str) -> Result<Sandbox> {
    let refuse = |why: String| {
        anyhow::anyhow!(
            "this machine cannot sandbox builds: {why}.\n\
             Builds run untrusted code (package scripts), so they do not run unsandboxed unless you say so: \
             install bubblewrap, slirp4netns and iproute2 (apt install bubblewrap slirp4netns iproute2), or set {how_off} \
             to run builds as this user with its access (see docs/config.md, \"Build sandbox\")"
        )
    };
    std::fs::create_dir_all(work_root)
        .with_context(|| format!("cannot create the work directory {}", work_root.display()))?;
    let sandbox = Sandbox::prepare(config, work_root).map_err(|e| refuse(e.to_string()))?;
    sandbox.trial(work_root).await.map_err(|e| refuse(e.to_string()))?;
    Ok(sandbox)
}

/// Layers defaults, the file, the environment and the flags.
/// The `CLOUDBUILD_*` variables that are not server settings, without their prefix: the
/// client commands' server, tokens, config directory and language, and logging. A shell that
/// sets them for the CLI must not stop `cloudbuild server` with an unknown key.
const CLIENT_VARIABLES: [&str; 6] = ["server", "token", "worker_token", "log", "config_dir", "lang"];

fn load_config(args: &ServerArgs) -> Result<ServerConfig> {
    let mut fig = Figment::from(Serialized::defaults(ServerConfig::default()));
    if let Some(path) = &args.config {
        if !path.is_file() {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(Env::prefixed("CLOUDBUILD_").split("__").ignore(&CLIENT_VARIABLES));
    if let Some(listen) = args.listen {
        fig = fig.merge(Serialized::default("listen", listen));
    }
    if let Some(dir) = &args.data_dir {
        fig = fig.merge(Serialized::default("data_dir", dir));
    }
    if let Some(store) = &args.store {
        fig = fig.merge(Serialized::default("store", store));
    }
    fig.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {}", describe_config_errors(e)))
}

/// figment's errors in our words: the key as written in the file (`sandbox.mode`, without
/// figment's profile name), where it came from, and the allowed values in plain backticks.
fn describe_config_errors(e: figment::Error) -> String {
    use figment::error::Kind;
    let one = |e: figment::Error| {
        let what = match &e.kind {
            Kind::UnknownVariant(found, expected) => {
                format!("unknown value `{found}`; expected {}", quoted(expected))
            }
            Kind::UnknownField(found, expected) => format!("unknown key `{found}`; expected {}", quoted(expected)),
            other => other.to_string(),
        };
        let key = e.path.join(".");
        let from = match &e.metadata {
            Some(m) => match &m.source {
                Some(source) => format!(" in {source}"),
                None => format!(" (from {})", m.name),
            },
            None => String::new(),
        };
        if key.is_empty() {
            format!("{what}{from}")
        } else {
            format!("key `{key}`{from}: {what}")
        }
    };
    e.into_iter().map(one).collect::<Vec<_>>().join("; ")
}

fn quoted(names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match names.len() {
        0 => "nothing".to_owned(),
        1 => names[0].clone(),
        2 => format!("{} or {}", names[0], names[1]),
        n => format!("one of {} or {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the system's random source failed: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Completes on SIGINT or SIGTERM.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The validated settings of a server started with `args` (also read by `admin create`).
pub(crate) fn settings(args: &ServerArgs) -> Result<cloudbuild_server::config::Settings> {
    load_config(args)?.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

pub(crate) async fn server(args: ServerArgs) -> Result<ExitCode> {
    let config = load_config(&args)?;
    let mut settings = config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let embedded_token = random_token()?;
    if config.workers.embedded {
        settings
            .worker_tokens
            .push(("embedded".into(), cloudbuild_server::config::Secret::new(embedded_token.clone())));
    }
    let sandbox = if config.workers.embedded {
        let how_off = "[sandbox] mode = \"off\" in the config (or CLOUDBUILD_SANDBOX__MODE=off)";
        Some(sandbox(&config.sandbox, &settings.data_dir.join("work"), how_off).await?)
    } else {
        None
    };
    let store = cloudbuild_server::open_store(&settings).await?;
    // A fresh server has no admin: a one-time token lets the first one be made remotely.
    let needs_setup = cloudbuild_server::domain::users::needs_setup(store.as_ref()).await?;
    if needs_setup {
        settings.setup_token = Some(cloudbuild_server::config::Secret::new(random_token()?));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let mut server = tokio::spawn(cloudbuild_server::run(listener, settings.clone(), store, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    let worker = if config.workers.embedded {
        let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
        let host = if addr.is_ipv6() && !addr.ip().is_unspecified() { format!("[{host}]") } else { host };
        let cfg = WorkerConfig {
            server: format!("http://{host}:{}", addr.port()),
            token: embedded_token,
            // Unique per server, so several servers on one Redis do not share a worker name.
            name: format!("embedded-{}-{}", sanitize_name(&hostname()), addr.port()),
            slots: config.workers.embedded_slots.max(1),
            labels: Vec::new(),
            work_root: settings.data_dir.join("work"),
        };
        let work_root = settings.data_dir.join("work");
        let pipeline = Pipeline::new(sandbox.clone().unwrap_or_else(Sandbox::off), &work_root, config.cache.clone());
        Some(tokio::spawn(cloudbuild_worker::run(cfg, Arc::new(pipeline), stop_rx.clone())))
    } else {
        None
    };
    eprintln!("cloudbuild server listening on http://{addr} (data in {})", settings.data_dir.display());
    if settings.allow_anonymous {
        eprintln!(
            "callers without a token act as admin (anonymous mode, for development; the default on loopback; \
             `[auth] allow_anonymous = false` requires sign-in)"
        );
    }
    if let Some(token) = &settings.setup_token {
        eprintln!(
            "no admin yet: make the first one with\n  cloudbuild setup --server http://{addr} --setup-token {} --user NAME\n\
             (this token works once, until the server restarts; or, on this machine: cloudbuild admin create NAME)",
            token.expose()
        );
    }
    match &sandbox {
        Some(s) => eprintln!("embedded worker {}", s.describe()),
        None => eprintln!("no embedded worker ([workers] embedded = false): builds run on remote workers"),
    }
    tokio::select! {
        _ = terminated() => eprintln!("shutting down"),
        res = &mut server => {
            res??;
            return Ok(ExitCode::SUCCESS);
        }
    }
    let _ = stop_tx.send(true);
    if let Some(w) = worker {
        let _ = w.await;
    }
    server.await??;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "worker".into())
}

/// A host name as a worker-name part: lower case, other characters as `-`.
pub(crate) fn sanitize_name(s: &str) -> String {
    let out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "worker".into()
    } else {
        out
    }
}

pub(crate) async fn worker(args: WorkerArgs) -> Result<ExitCode> {
    let name = args.name.unwrap_or_else(|| {
        let host = hostname();
        format!("{}-{}", sanitize_name(&host), std::process::id())
    });
    let name = cloudbuild_proto::validate::identifier("worker name", &name)?;
    let labels = cloudbuild_proto::validate::labels(&args.labels)?;
    let config = SandboxConfig {
        mode: match args.sandbox {
            SandboxArg::Bwrap => SandboxMode::Bwrap,
            SandboxArg::Off => SandboxMode::Off,
        },
        shared: args.sandbox_shared,
        read_only: args.sandbox_read_only,
        reachable_networks: args.sandbox_reachable,
        limits: {
            let d = cloudbuild_worker::sandbox::LimitsConfig::default();
            cloudbuild_worker::sandbox::LimitsConfig {
                processes: args.limit_processes.unwrap_or(d.processes),
                memory_mib: args.limit_memory_mib.unwrap_or(d.memory_mib),
                cpu_secs: args.limit_cpu_secs.unwrap_or(d.cpu_secs),
                disk_mib: args.limit_disk_mib.unwrap_or(d.disk_mib),
            }
        },
    };
    let sandbox = sandbox(&config, &args.work_dir, "--sandbox off").await?;
    eprintln!("worker {name}: {}", sandbox.describe());
    let cfg = WorkerConfig {
        server: args.server,
        token: args.worker_token,
        name,
        slots: args.slots.max(1),
        labels,
        work_root: args.work_dir,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let cache = CacheConfig {
        enabled: !args.no_cache,
        max_size_mib: args.cache_max_mib.unwrap_or(CacheConfig::default().max_size_mib),
    };
    let pipeline = Pipeline::new(sandbox, &cfg.work_root, cache);
    let mut handle = tokio::spawn(cloudbuild_worker::run(cfg, Arc::new(pipeline), stop_rx));
    tokio::select! {
        _ = terminated() => {}
        // It stops by itself only for good reasons to: its token was refused or revoked.
        res = &mut handle => {
            res??;
            return Ok(ExitCode::SUCCESS);
        }
    }
    let _ = stop_tx.send(true);
    handle.await??;
    Ok(ExitCode::SUCCESS)
}
