//! The server's configuration: the TOML / environment form, and the validated settings.
//!
//! `ServerConfig` mirrors the file one to one and does no I/O; `ServerConfig::validate` turns it
//! into `Settings`, the form the rest of the server uses, refusing bad values at start-up.

mod forges;
mod publishing;
mod secret;
pub use forges::{ForgeApi, ForgesConfig};
pub use publishing::*;

pub use secret::{redact_url, Secret};

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use cloudbuild_proto::validate::{CommandPolicy, GitProtocol, RepoPolicy, ValidationError};
use cloudbuild_proto::worker::Timeouts;
use serde::{Deserialize, Serialize};

/// Everything `cloudbuild server` can be configured with. Every key has a default, so an empty
/// file (or none) gives a working single-machine service. See `docs/config.md`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Where the database, work directories and published sites live.
    pub data_dir: PathBuf,
    /// Base URL printed for published sites; defaults to `http://<listen address>`.
    pub public_url: Option<String>,
    /// Where state lives: `sqlite` (a file in the data directory; one server) or a Redis URL
    /// `redis://[:password@]host:port[/db]` (several servers share it).
    pub store: String,
    pub git: GitConfig,
    pub commands: CommandsConfig,
    pub timeouts: Timeouts,
    pub limits: LimitsConfig,
    pub workers: WorkersConfig,
    pub auth: AuthConfig,
    pub targets: TargetsConfig,
    pub releases: ReleasesConfig,
    pub sites: SitesConfig,
    /// `[sandbox]`: how the embedded worker isolates builds (docs/config.md "Build sandbox").
    pub sandbox: cloudbuild_proto::sandbox::SandboxConfig,
    /// `[cache]`: the embedded worker's build caches (docs/caching.md).
    pub cache: cloudbuild_proto::worker::CacheConfig,
    pub projects: ProjectsConfig,
    /// Where commit statuses go (`[forges.github] api_url`, ...).
    pub forges: ForgesConfig,
    /// `[[checks]]`: mandatory pre-release checks, for every project (or those `projects`
    /// names) and environment (or those `environments` names); docs/gates.md.
    pub checks: Vec<cloudbuild_proto::checks::CheckRule>,
}

/// `[auth]`: who may create and follow tasks.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API tokens clients present (`Authorization: Bearer`, the socket.io `auth.token` or the
    /// `token` query field); the name is recorded as who asked.
    pub tokens: Vec<ApiToken>,
    /// Accept requests without a token. Default: only while the server listens on loopback.
    pub allow_anonymous: Option<bool>,
}

/// One `[[auth.tokens]]` entry: a service token (a CI system, a script), not a person's.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    pub name: String,
    pub token: String,
    /// What it may do: `admin` (the default, as before users existed) or `user` (only what
    /// the projects' `internal` visibility gives every signed-in caller: reading).
    #[serde(default = "admin_role")]
    pub role: cloudbuild_proto::user::GlobalRole,
}

fn admin_role() -> cloudbuild_proto::user::GlobalRole {
    cloudbuild_proto::user::GlobalRole::Admin
}

/// A validated service token of [`Settings::api_tokens`].
#[derive(Debug, Clone)]
pub struct ServiceToken {
    pub name: String,
    pub token: Secret,
    pub role: cloudbuild_proto::user::GlobalRole,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|t| t.name.as_str()).collect();
        f.debug_struct("AuthConfig")
            .field("tokens", &format_args!("{names:?} (secrets redacted)"))
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

/// `[git]`: what repositories may be cloned.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitConfig {
    /// Protocols accepted in repo URLs: any of `https`, `ssh`, `git`, `http`, `file`.
    pub allowed_protocols: Vec<String>,
    /// Accept repo hosts on loopback and private networks (off: a guard against SSRF).
    pub allow_local_hosts: bool,
}

/// `[commands]`: what commands may run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// Programs a command may start with.
    pub runners: Vec<String>,
    /// Run every install with the dependencies' install scripts off, whatever the project
    /// says (see docs/config.md: the 2025 npm worm spread through them).
    pub ignore_install_scripts: bool,
    /// Packages whose install scripts still run when they are off (npm package names).
    pub allow_install_scripts: Vec<String>,
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Output kept per task, in bytes; past it one `truncated` event is written.
    pub output_bytes: u64,
    /// Runs of a task whose worker is lost before it fails with `worker lost`.
    pub max_attempts: u32,
    /// Largest single file a worker may upload to the local site store, in bytes.
    pub max_file_bytes: u64,
    /// Open HTTP connections at most; more wait in the listen queue until one closes.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers; slower ones are disconnected
    /// (slowloris).
    pub header_read_timeout_secs: u64,
    /// Publish uploads (files and bundles) the server takes at once, from all workers; more
    /// wait their turn. Each streams to disk, so memory stays bounded by this many buffers.
    pub max_concurrent_uploads: usize,
}

/// `[workers]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Run one worker inside the server process (it connects over the worker protocol).
    pub embedded: bool,
    /// Tasks the embedded worker runs at once.
    pub embedded_slots: u32,
    /// Tokens remote workers authenticate with (the embedded worker gets its own).
    pub tokens: Vec<String>,
    /// A task whose worker sends no heartbeat for this long is requeued.
    pub lease_secs: u64,
    /// How often workers send heartbeats.
    pub heartbeat_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            data_dir: PathBuf::from("./cloudbuild-data"),
            public_url: None,
            store: "sqlite".into(),
            git: GitConfig::default(),
            commands: CommandsConfig::default(),
            timeouts: Timeouts::default(),
            limits: LimitsConfig::default(),
            workers: WorkersConfig::default(),
            auth: AuthConfig::default(),
            targets: TargetsConfig::default(),
            releases: ReleasesConfig::default(),
            sites: SitesConfig::default(),
            sandbox: Default::default(),
            cache: Default::default(),
            projects: Default::default(),
            forges: Default::default(),
            checks: Vec::new(),
        }
    }
}

impl Default for GitConfig {
    fn default() -> Self {
        GitConfig { allowed_protocols: vec!["https".into(), "ssh".into()], allow_local_hosts: false }
    }
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            runners: CommandPolicy::default().runners.into_iter().collect(),
            ignore_install_scripts: false,
            allow_install_scripts: Vec::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            output_bytes: 4 * 1024 * 1024,
            max_attempts: 3,
            max_file_bytes: 512 * 1024 * 1024,
            max_connections: 20_000,
            header_read_timeout_secs: 10,
            max_concurrent_uploads: 8,
        }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig { embedded: true, embedded_slots: 2, tokens: Vec::new(), lease_secs: 15, heartbeat_secs: 3 }
    }
}

impl fmt::Debug for WorkersConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkersConfig")
            .field("embedded", &self.embedded)
            .field("embedded_slots", &self.embedded_slots)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("lease_secs", &self.lease_secs)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .finish()
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("public_url", &self.public_url)
            .field("store", &redact_url(&self.store))
            .field("git", &self.git)
            .field("commands", &self.commands)
            .field("timeouts", &self.timeouts)
            .field("limits", &self.limits)
            .field("workers", &self.workers)
            .field("auth", &self.auth)
            .field("targets", &self.targets)
            .field("releases", &self.releases)
            .finish()
    }
}

/// Where the server keeps its state.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// `<data_dir>/cloudbuild.sqlite`.
    Sqlite,
    /// A Redis URL.
    Redis(String),
}

impl fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Sqlite => f.write_str("Sqlite"),
            StoreChoice::Redis(url) => write!(f, "Redis({})", redact_url(url)),
        }
    }
}

/// A sites domain: lower-case DNS labels (letters, digits, inner dashes), leaving room for the
/// `<site>.<env>.` in front within DNS's 253 characters.
fn check_domain(d: &str) -> Result<String, String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.len() > 180 || !d.split('.').all(label_ok) {
        return Err(format!(
            "`{}` is not a lower-case DNS name such as sites.example.com (at most 180 characters)",
            d.escape_debug()
        ));
    }
    Ok(d.to_owned())
}

/// The host of an http(s) URL, lower-cased.
fn url_host(url: &str) -> Option<String> {
    url.parse::<axum::http::Uri>().ok()?.host().map(|h| h.trim_end_matches('.').to_ascii_lowercase())
}

/// Whether a URL's host is a loopback name or address.
fn is_loopback_url(url: &str) -> bool {
    url_host(url).is_some_and(|h| {
        h == "localhost"
            || h.ends_with(".localhost")
            || h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// The validated configuration the server runs with. Its `Debug` form shows no secret (tokens
/// are [`Secret`]s, the Redis URL's password is redacted).
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Without a trailing slash.
    pub public_url: Option<String>,
    pub store: StoreChoice,
    pub repo_policy: RepoPolicy,
    pub command_policy: CommandPolicy,
    pub timeouts: Timeouts,
    pub output_bytes: u64,
    pub max_attempts: u32,
    pub max_file_bytes: u64,
    /// The server's rule for install scripts, sent with every assignment.
    pub install_scripts: cloudbuild_proto::worker::InstallScripts,
    /// See [`LimitsConfig::max_connections`].
    pub max_connections: usize,
    /// See [`LimitsConfig::header_read_timeout_secs`].
    pub header_read_timeout: std::time::Duration,
    /// See [`LimitsConfig::max_concurrent_uploads`].
    pub max_concurrent_uploads: usize,
    /// `(name, token)` pairs workers may authenticate with besides the revocable tokens in the
    /// store: the configured `workers.tokens` and the embedded worker's own.
    pub worker_tokens: Vec<(String, Secret)>,
    pub lease_secs: u64,
    pub heartbeat_secs: u64,
    /// The service tokens of `[[auth.tokens]]`.
    pub api_tokens: Vec<ServiceToken>,
    pub allow_anonymous: bool,
    pub targets: TargetsConfig,
    pub keep_releases: u32,
    /// The sites domain, resolved (`localhost` by default on loopback); `None`: by path only.
    pub sites_domain: Option<String>,
    pub sites_scheme: Option<String>,
    pub sites_port: Option<u16>,
    /// `(domain, project)`: custom domains of `prod` sites (a project may have several; the
    /// first is the one printed).
    pub custom_domains: Vec<(String, cloudbuild_proto::validate::ProjectName)>,
    /// `[projects] auto_create`.
    pub auto_create_projects: bool,
    /// Each forge's API base, checked.
    pub forges: ForgesConfig,
    /// `[[checks]]`, checked.
    pub checks: Vec<cloudbuild_proto::checks::CheckRule>,
    /// The one-time token that makes the first admin (`POST /api/v1/setup`), set by
    /// `cloudbuild server` when the store has no admin; `None`: setup is closed.
    pub setup_token: Option<Secret>,
}

impl ServerConfig {
    /// Checks every value and derives the settings.
    pub fn validate(&self) -> Result<Settings, ValidationError> {
        let bad = |field: &'static str, reason: String| ValidationError { field, reason };
        let allowed_protocols =
            self.git.allowed_protocols.iter().map(|p| GitProtocol::parse(p)).collect::<Result<BTreeSet<_>, _>>()?;
        if allowed_protocols.is_empty() {
            return Err(bad("git.allowed_protocols", "at least one protocol is needed".into()));
        }
        let runners: BTreeSet<String> = self.commands.runners.iter().cloned().collect();
        if let Some(r) =
            runners.iter().find(|r| r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(bad("commands.runners", format!("`{r}` is not a program name")));
        }
        let t = &self.timeouts;
        let all = [
            t.prepare_secs,
            t.download_secs,
            t.install_secs,
            t.check_secs,
            t.build_secs,
            t.pre_publish_secs,
            t.publish_secs,
            t.task_secs,
            t.kill_grace_secs,
        ];
        if all.contains(&0) {
            return Err(bad("timeouts", "every timeout must be at least 1 second".into()));
        }
        for name in &self.commands.allow_install_scripts {
            cloudbuild_proto::validate::ProjectName::parse(name).map_err(|e| {
                bad(
                    "commands.allow_install_scripts",
                    format!("`{}` is not an npm package name: {e}", name.escape_debug()),
                )
            })?;
        }
        if self.limits.max_concurrent_uploads == 0 {
            return Err(bad("limits.max_concurrent_uploads", "must be at least 1".into()));
        }
        if self.limits.max_connections == 0 {
            return Err(bad("limits.max_connections", "must be at least 1".into()));
        }
        if self.limits.header_read_timeout_secs == 0 {
            return Err(bad("limits.header_read_timeout_secs", "must be at least 1".into()));
        }
        if self.limits.max_attempts == 0 {
            return Err(bad("limits.max_attempts", "must be at least 1".into()));
        }
        if self.workers.heartbeat_secs == 0 || self.workers.lease_secs <= self.workers.heartbeat_secs {
            return Err(bad(
                "workers.lease_secs",
                "must be longer than workers.heartbeat_secs (and that above 0)".into(),
            ));
        }
        if self.workers.tokens.iter().any(|t| t.len() < 16) {
            return Err(bad("workers.tokens", "worker tokens must be at least 16 characters".into()));
        }
        for t in &self.auth.tokens {
            if t.token.len() < 16 {
                return Err(bad("auth.tokens", format!("the token of `{}` must be at least 16 characters", t.name)));
            }
            if t.name.trim().is_empty() {
                return Err(bad("auth.tokens", "every token needs a name".into()));
            }
        }
        if self.releases.keep == 0 {
            return Err(bad("releases.keep", "must be at least 1".into()));
        }
        let targets = &self.targets;
        for (env, t) in
            [("targets.test", &targets.test), ("targets.prod", &targets.prod), ("targets.preview", &targets.preview)]
        {
            if let TargetConfig::S3 { bucket, public_url, .. } = t {
                if bucket.len() < 3 {
                    return Err(bad(env, "an S3 bucket name has at least 3 characters".into()));
                }
                if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
                    return Err(bad(env, "public_url must start with http:// or https://".into()));
                }
            }
        }
        // Removing a preview deletes every key under `<prefix>/pr-<N>/<name>/`: in a place
        // another environment also uses, that could be one of its sites.
        if let TargetConfig::S3 { endpoint, bucket, prefix, .. } = &targets.preview {
            for (env, other) in [("test", &targets.test), ("prod", &targets.prod)] {
                if let TargetConfig::S3 { endpoint: e, bucket: b, prefix: p, .. } = other {
                    let (mine, theirs) =
                        (format!("{}/", prefix.trim_matches('/')), format!("{}/", p.trim_matches('/')));
                    let nested = mine == "/" || theirs == "/" || mine.starts_with(&theirs) || theirs.starts_with(&mine);
                    if e == endpoint && b == bucket && nested {
                        return Err(bad(
                            "targets.preview",
                            format!(
                                "its bucket and prefix overlap the {env} target's: give previews a prefix of their own"
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad("public_url", "must start with http:// or https://".into()));
            }
        }
        let sites_domain = match self.sites.domain.as_deref().map(|d| d.trim_end_matches('.')) {
            Some("") => None,
            Some(d) => Some(check_domain(d).map_err(|reason| bad("sites.domain", reason))?),
            // `localhost` only for a server nobody reaches from elsewhere: on loopback, and
            // not announced at a public URL (whose visitors' `*.localhost` is their own machine).
            None => (self.listen.ip().is_loopback() && self.public_url.as_deref().is_none_or(is_loopback_url))
                .then(|| "localhost".to_owned()),
        };
        // The server's own host must not look like a site's, or its API would answer as one.
        let api_host = self.public_url.as_deref().and_then(url_host);
        if let (Some(domain), Some(host)) = (&sites_domain, &api_host) {
            if host.ends_with(&format!(".{domain}")) {
                return Err(bad(
                    "sites.domain",
                    format!(
                        "public_url's host {host} is under the sites domain {domain}; give sites a domain of their own"
                    ),
                ));
            }
        }
        let mut custom_domains = Vec::new();
        for c in &self.sites.custom_domains {
            let domain = check_domain(c.domain.trim_end_matches('.')).map_err(|r| bad("sites.custom_domains", r))?;
            let project = cloudbuild_proto::validate::ProjectName::parse(&c.project)?;
            if sites_domain.as_deref().is_some_and(|d| domain == d || domain.ends_with(&format!(".{d}"))) {
                return Err(bad(
                    "sites.custom_domains",
                    format!("{domain} is under the sites domain; pick a domain of its own"),
                ));
            }
            if api_host.as_deref() == Some(domain.as_str()) {
                return Err(bad("sites.custom_domains", format!("{domain} is the server's own host (public_url)")));
            }
            if !matches!(self.targets.prod, TargetConfig::Local) {
                return Err(bad(
                    "sites.custom_domains",
                    "custom domains route to sites the server serves; prod publishes to object storage (point the domain at its CDN instead)".into(),
                ));
            }
            if custom_domains.iter().any(|(d, _): &(String, cloudbuild_proto::validate::ProjectName)| *d == domain) {
                return Err(bad("sites.custom_domains", format!("{domain} is listed twice")));
            }
            custom_domains.push((domain, project));
        }
        if let Some(s) = self.sites.scheme.as_deref().filter(|s| !matches!(*s, "http" | "https")) {
            return Err(bad("sites.scheme", format!("`{}` is neither http nor https", s.escape_debug())));
        }
        let store = match self.store.trim() {
            "" | "sqlite" => StoreChoice::Sqlite,
            url if url.starts_with("redis://") => StoreChoice::Redis(url.to_owned()),
            other => {
                return Err(bad(
                    "store",
                    format!("`{}` is neither `sqlite` nor a redis:// URL", redact_url(other).escape_debug()),
                ))
            }
        };
        Ok(Settings {
            data_dir: self.data_dir.clone(),
            store,
            public_url: self.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned()),
            repo_policy: RepoPolicy { allowed_protocols, allow_local_hosts: self.git.allow_local_hosts },
            command_policy: CommandPolicy { runners },
            timeouts: self.timeouts.clone(),
            output_bytes: self.limits.output_bytes,
            max_attempts: self.limits.max_attempts,
            max_file_bytes: self.limits.max_file_bytes,
            install_scripts: cloudbuild_proto::worker::InstallScripts {
                ignore: self.commands.ignore_install_scripts,
                allow: self.commands.allow_install_scripts.clone(),
            },
            max_connections: self.limits.max_connections,
            max_concurrent_uploads: self.limits.max_concurrent_uploads,
            header_read_timeout: std::time::Duration::from_secs(self.limits.header_read_timeout_secs),
            worker_tokens: self
                .workers
                .tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("config-{i}"), Secret::new(t.clone())))
                .collect(),
            lease_secs: self.workers.lease_secs,
            heartbeat_secs: self.workers.heartbeat_secs,
            api_tokens: self
                .auth
                .tokens
                .iter()
                .map(|t| ServiceToken { name: t.name.clone(), token: Secret::new(t.token.clone()), role: t.role })
                .collect(),
            allow_anonymous: self.auth.allow_anonymous.unwrap_or_else(|| self.listen.ip().is_loopback()),
            targets: self.targets.clone(),
            keep_releases: self.releases.keep,
            sites_domain,
            sites_scheme: self.sites.scheme.clone(),
            sites_port: self.sites.port,
            custom_domains,
            auto_create_projects: self.projects.auto_create,
            forges: {
                self.forges.validate()?;
                self.forges.clone()
            },
            checks: {
                self.checks.iter().try_for_each(|c| c.validate())?;
                self.checks.clone()
            },
            setup_token: None,
        })
    }
}

#[cfg(test)]
mod tests;
