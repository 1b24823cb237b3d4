//! The build sandbox: each command of a build (git, install, checks, build) runs under
//! bubblewrap, as an unprivileged user, in its own PID, IPC, UTS, mount and network namespaces.
//!
//! What a sandboxed command sees: the system's `/usr` (and the merged-`/usr` links), a few
//! files of `/etc` that programs need (never the whole of it: a server's config may live
//! there), its task's work directory at `/build` (the build may write only its checkout
//! `/build/src` and `HOME=/build/home` there, besides a private `/tmp` and its project's npm
//! cache at `/cache/npm`), its own
//! `/proc` and `/dev`. It does not see the data directory, the config, other tasks, the worker's
//! or the server's processes and environment. Its network is user-mode: `slirp4netns`, with
//! the host's loopback unreachable (`--disable-host-loopback`) and private, link-local and the
//! machine's own addresses routed nowhere (the fence), so the package registries answer and
//! the server's ports and the machine's services do not; a command may also get no network.
//!
//! Two ways in, by who the worker is:
//! - **root** (`privileged`): bwrap runs privileged, without a user namespace, and the command
//!   is started by `setpriv` as `nobody` (uid 65534) with no capabilities, so the build is a
//!   real unprivileged host user, distinct from the server's;
//! - **any other user**: `unshare --user --net` makes a user and network namespace, bwrap
//!   nests its own in it, and the command runs as uid 65534 inside, which is the worker's own
//!   uid outside (an unprivileged worker cannot switch to another user; what protects its
//!   files then is that they are not in the sandbox's view).
//!
//! A command starts in the task's cgroup (cgroup v1: spawned from a thread in it), or a fixed
//! shell prelude moves it there before bwrap starts (v2), so that everything the sandbox runs
//! is in it. A command that gets a network of its
//! own starts under a fixed shell wrapper that says "namespaces ready" on fd 3 and waits on
//! fd 4 until the network is attached and the command may run (no user string is ever part of
//! either script). A root worker's commands with network join the task's network instead,
//! which is attached and fenced once per task, and need no wrapper.

mod limits;
mod spawner;
mod start;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cloudbuild_proto::sandbox::{check_network, LimitsConfig, SandboxConfig, SandboxMode, UNREACHABLE_NETWORKS};

pub(crate) use limits::disk_usage;
pub use limits::{Reached, TaskLimits};
pub use start::TaskNetwork;
pub(crate) use start::{prepare, start};

/// The user builds run as, inside and (for a root worker) outside the sandbox: `nobody`.
pub const SANDBOX_UID: u32 = 65534;

/// Where the task's work directory appears inside the sandbox.
pub const INSIDE_WORKDIR: &str = "/build";

/// Where the project's npm cache appears inside the sandbox.
pub const INSIDE_NPM_CACHE: &str = "/cache/npm";

/// Where a repository's git mirror appears inside the sandbox (to git only).
pub const INSIDE_GIT_MIRROR: &str = "/cache/git";

/// The fixed wrapper between the sandbox's start and the command: "ready" on fd 3, then
/// wait for "go" on fd 4, then replace itself with the command (its arguments, unexpanded).
const WRAPPER: &str = "printf . >&3; exec 3>&-; read -r _ <&4; exec 4<&-; exec \"$@\"";

/// The fixed prelude that moves itself (and so what it `exec`s) into a cgroup: it writes `0` to
/// each `cgroup.procs` file given before `--`, then replaces itself with the rest.
const JOIN_CGROUP: &str = "while [ \"$1\" != -- ]; do echo 0 > \"$1\" || exit 125; shift; done; shift; exec \"$@\"";

/// Files of `/etc` a sandboxed program may need, bound read-only when they exist.
const ETC_ENTRIES: &[&str] = &[
    "passwd",
    "group",
    "nsswitch.conf",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "localtime",
    "timezone",
    "mime.types",
    "protocols",
    "services",
];

/// Why the sandbox cannot be used on this machine.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("`{program}` was not found on PATH (Debian package `{package}`)")]
    Missing { program: &'static str, package: &'static str },
    #[error("`{0}` must be an absolute path to an existing directory")]
    BadPath(PathBuf),
    #[error("cannot prepare the sandbox's files in {dir}: {source}")]
    Files { dir: PathBuf, source: std::io::Error },
    #[error("a trial sandbox failed: {0}")]
    Trial(String),
    #[error("sandbox.reachable_networks: {0}")]
    BadNetwork(String),
}

/// A worker's sandbox, or none. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Sandbox(Option<Arc<Jail>>);

#[derive(Debug)]
pub(crate) struct Jail {
    bwrap: PathBuf,
    pub(crate) slirp4netns: PathBuf,
    setpriv: PathBuf,
    pub(crate) unshare: PathBuf,
    pub(crate) nsenter: PathBuf,
    prlimit: PathBuf,
    pub(crate) ip: PathBuf,
    limits: LimitsConfig,
    /// `ip -batch` lines that fence a sandbox's network off from private networks and this
    /// machine's own addresses, then open what the admin allowed.
    pub(crate) fence: String,
    /// The worker is root: bwrap runs privileged and the command drops to [`SANDBOX_UID`].
    pub(crate) privileged: bool,
    read_only: Vec<PathBuf>,
    shared: Vec<PathBuf>,
    /// Holds the `resolv.conf` and `hosts` given to sandboxes.
    etc_dir: PathBuf,
    /// The root of the npm caches: one per project (`<root>/<project>`), so that what one
    /// project's builds leave in their cache (an `npx` package, registry metadata) never
    /// reaches another project's builds.
    npm_cache: PathBuf,
}

/// A command line that runs a command in the sandbox, and what the caller must do around it.
#[derive(Debug)]
pub(crate) struct Wrapped {
    pub argv: Vec<String>,
    /// Whether bwrap writes its JSON info (with the sandbox's host pid) to fd 5.
    pub info_fd: bool,
    /// Attach user-mode networking before the command runs (through the handshake).
    pub network: bool,
    /// `slirp4netns` must join the user namespace of the process too (unprivileged way).
    pub join_userns: bool,
}

/// The network a sandboxed command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Its own namespace with only a loopback.
    None,
    /// User-mode networking: the internet (registries, git hosts), not the host's loopback.
    User,
    /// The host's network, loopback included: only for git, and only where the server allows
    /// repositories on local hosts (`git.allow_local_hosts`). Git runs no hooks there.
    Host,
}

/// What one sandboxed command gets.
#[derive(Debug, Clone, Copy)]
pub struct Confinement<'a> {
    pub sandbox: &'a Sandbox,
    /// The task's work directory on the host (seen as [`INSIDE_WORKDIR`]).
    pub workdir: &'a Path,
    /// What network the command gets.
    pub network: Network,
    /// A directory the command may read besides the usual ones: the repository of a
    /// `file://` URL (which only a server's `git.allowed_protocols` allows), for git.
    pub repository: Option<&'a Path>,
    /// The repository's git mirror (see `cache::Caches::git_mirror`), seen at
    /// [`INSIDE_GIT_MIRROR`], writable when the flag says so: for git, never for a build.
    pub mirror: Option<(&'a Path, bool)>,
    /// The task's limits (processes, memory, CPU time, disk).
    pub limits: Option<&'a TaskLimits>,
    /// The project's npm cache (see [`Sandbox::npm_cache`]), seen at `/cache/npm`.
    pub npm_cache: Option<&'a Path>,
    /// The task's network (see [`Sandbox::task_network`]), joined instead of making one.
    pub task_network: Option<&'a TaskNetwork>,
}

/// The routes that keep builds off private networks and this machine's own addresses
/// (`ip -batch` lines), with the admin's exceptions through slirp4netns's gateway.
fn fence(reachable: &[String]) -> Result<String, SandboxError> {
    let mut lines: Vec<String> = UNREACHABLE_NETWORKS
        .iter()
        .filter(|n| !reachable.iter().any(|r| r == *n))
        .map(|n| format!("route add blackhole {n}"))
        .collect();
    // A namespace made by `unshare` has its loopback down.
    lines.push("link set lo up".to_owned());
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ip in addrs.filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip())) {
            if !ip.is_loopback() {
                lines.push(format!("route add blackhole {ip}/32"));
            }
        }
    }
    for net in reachable {
        check_network(net).map_err(SandboxError::BadNetwork)?;
        lines.push(format!("route add {net} via 10.0.2.2"));
    }
    lines.sort();
    lines.dedup();
    Ok(lines.join("\n") + "\n")
}

fn find(program: &'static str, package: &'static str) -> Result<PathBuf, SandboxError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    // `ip` lives in an sbin directory, which an unprivileged PATH may lack.
    let sbin = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    std::env::split_paths(&path)
        .chain(sbin)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or(SandboxError::Missing { program, package })
}

impl Sandbox {
    /// No sandbox.
    pub fn off() -> Sandbox {
        Sandbox(None)
    }

    /// Finds the programs and writes the sandbox's `/etc` files under `work_root/.sandbox`;
    /// [`Sandbox::trial`] then proves it works. `Off` gives [`Sandbox::off`].
    pub fn prepare(config: &SandboxConfig, work_root: &Path) -> Result<Sandbox, SandboxError> {
        if config.mode == SandboxMode::Off {
            return Ok(Sandbox::off());
        }
        for dir in config.shared.iter().chain(&config.read_only) {
            if !dir.is_absolute() || !dir.is_dir() {
                return Err(SandboxError::BadPath(dir.clone()));
            }
        }
        let privileged = nix::unistd::geteuid().is_root();
        let etc_dir = work_root.join(".sandbox");
        let npm_cache = work_root.join(".cache").join("npm");
        let files = |source| SandboxError::Files { dir: etc_dir.clone(), source };
        std::fs::create_dir_all(&etc_dir).map_err(files)?;
        // DNS through slirp4netns's forwarder; `localhost` is the sandbox's own.
        std::fs::write(etc_dir.join("resolv.conf"), "nameserver 10.0.2.3\n").map_err(files)?;
        std::fs::write(etc_dir.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n").map_err(files)?;
        std::fs::create_dir_all(&npm_cache).map_err(files)?;
        if privileged {
            // The task cgroups of this worker's previous run (same work directory), if it died
            // with builds running; then this run's, for the next.
            let record = etc_dir.join("cgroup");
            if let Ok(previous) = std::fs::read_to_string(&record) {
                limits::reap_cgroups_of(previous.trim());
            }
            std::fs::write(&record, limits::worker_group()).map_err(files)?;
        }
        Ok(Sandbox(Some(Arc::new(Jail {
            bwrap: find("bwrap", "bubblewrap")?,
            slirp4netns: find("slirp4netns", "slirp4netns")?,
            setpriv: find("setpriv", "util-linux")?,
            unshare: find("unshare", "util-linux")?,
            nsenter: find("nsenter", "util-linux")?,
            prlimit: find("prlimit", "util-linux")?,
            ip: find("ip", "iproute2")?,
            fence: fence(&config.reachable_networks)?,
            limits: config.limits.clone(),
            privileged,
            // Only what the admin lists (not PATH: an entry may be relative or a home directory).
            read_only: config.read_only.clone(),
            shared: config.shared.clone(),
            etc_dir,
            npm_cache,
        }))))
    }

    /// Whether builds are sandboxed.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn jail(&self) -> Option<&Jail> {
        self.0.as_deref()
    }

    /// One line for the startup log: the mode and what it means.
    pub fn describe(&self) -> String {
        match &self.0 {
            None if nix::unistd::geteuid().is_root() => {
                "sandbox: off (builds run as root: package scripts can read and change anything on this machine)"
                    .to_owned()
            }
            None => "sandbox: off (builds run as this worker's user and can read what it can read)".to_owned(),
            Some(j) => format!(
                "sandbox: bubblewrap (PID, IPC, UTS, mount and network namespaces; builds run as uid {SANDBOX_UID}{}; \
                 network through slirp4netns, host loopback unreachable)",
                if j.privileged { ", a separate host user" } else { " inside a user namespace" }
            ),
        }
    }

    /// The limits of a task whose work directory is named `name`, with its cgroup; none
    /// without the sandbox.
    pub fn task_limits(&self, name: &str) -> Option<TaskLimits> {
        self.0.as_ref().map(|j| TaskLimits::new(&j.limits, name))
    }

    /// The user-mode network a task's commands share (made once per task: slirp4netns and the
    /// fence cost tens of milliseconds). Only where the worker is root, which can enter it;
    /// elsewhere each command makes its own.
    pub async fn task_network(&self) -> Result<Option<TaskNetwork>, String> {
        match &self.0 {
            Some(j) if j.privileged => TaskNetwork::new(j).await.map(Some),
            _ => Ok(None),
        }
    }

    /// The npm cache of `project` (a validated name), made and owned by the sandbox's user:
    /// kept between its builds so that installs are warm, never shared with another project.
    pub fn npm_cache(&self, project: &str) -> std::io::Result<Option<PathBuf>> {
        let Some(j) = &self.0 else { return Ok(None) };
        // `@scope/name` → `@scope+name`: one directory level per project.
        let dir = j.npm_cache.join(project.replace('/', "+"));
        std::fs::create_dir_all(&dir)?;
        self.own(&dir)?;
        Ok(Some(dir))
    }

    /// Whether saved trees can be made read-only to builds: the worker is root and builds run
    /// as another user (hard links into a checkout would otherwise let a build change them).
    pub fn seals_caches(&self) -> bool {
        self.0.as_ref().is_some_and(|j| j.privileged)
    }

    /// The user builds run as, when it is not the worker's own.
    pub fn build_uid(&self) -> Option<u32> {
        self.seals_caches().then_some(SANDBOX_UID)
    }

    /// Makes `dir` (a checkout, a HOME, a cache, just created) the sandbox user's, when the
    /// worker is root (otherwise the build's user is the worker's own).
    pub fn own(&self, dir: &Path) -> std::io::Result<()> {
        match &self.0 {
            Some(j) if j.privileged => chown_to_sandbox_user(dir),
            _ => Ok(()),
        }
    }

    /// Runs `true` in a sandbox with network, as a build command would: the proof, at
    /// startup, that this machine can sandbox builds.
    pub async fn trial(&self, work_root: &Path) -> Result<(), SandboxError> {
        if !self.is_on() {
            return Ok(());
        }
        let dir = work_root.join(".sandbox").join("trial");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home"))
            .and_then(|()| self.own(&dir))
            .and_then(|()| self.own(&dir.join("home")))
            .map_err(|source| SandboxError::Files { dir: dir.clone(), source })?;
        let argv = vec!["true".to_owned()];
        let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        let (_tx, mut cancel) = crate::cancel::CancelToken::new();
        let mut said = String::new();
        let spec = crate::process::RunSpec {
            argv: &argv,
            cwd: &dir,
            env: &env,
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(20),
            kill_grace: std::time::Duration::from_secs(1),
            pgid_file: None,
            confinement: Some(Confinement {
                sandbox: self,
                workdir: &dir,
                network: Network::User,
                repository: None,
                mirror: None,
                limits: None,
                npm_cache: None,
                task_network: None,
            }),
        };
        let result = crate::process::run(spec, &mut cancel, &mut |_, t| said.push_str(&t)).await;
        let _ = std::fs::remove_dir_all(&dir);
        result.map_err(|e| {
            SandboxError::Trial(format!(
                "{e}{}",
                if said.is_empty() { String::new() } else { format!(": {}", said.trim()) }
            ))
        })
    }
}

impl Jail {
    /// The command line that runs `argv` in the sandbox with its working directory at `cwd`
    /// (inside `c.workdir`, else the work directory itself).
    pub(crate) fn wrap(&self, c: &Confinement<'_>, cwd: &Path, argv: &[String]) -> Wrapped {
        let inside_cwd = match cwd.strip_prefix(c.workdir) {
            Ok(rel) => Path::new(INSIDE_WORKDIR).join(rel),
            Err(_) => PathBuf::from(INSIDE_WORKDIR),
        };
        let mut a = Args::default();
        // A command of a task with its own network joins it, ready and fenced.
        let joined = c.task_network.filter(|_| self.privileged && c.network == Network::User);
        // Otherwise a command with user-mode networking gets a network of its own, attached
        // from outside while a wrapper waits (the handshake).
        let attach = c.network == Network::User && joined.is_none();
        if let Some(net) = joined {
            a.push(&[&path(&self.nsenter), &format!("--net={}", net.namespace()), "--"]);
        }
        if let Some(cgroup) = c.limits.and_then(|l| l.cgroup.as_ref()).filter(|cg| cg.spawner.is_none()) {
            // Into the task's cgroup before bwrap starts: everything it starts inherits it
            // (with cgroup v1, the command starts there already: see `spawner`).
            a.push(&["/bin/sh", "-c", JOIN_CGROUP, "sh"]);
            a.0.extend(cgroup.procs_files().iter().map(|f| path(f)));
            a.push(&["--"]);
        }
        if !self.privileged {
            a.push(&[&path(&self.unshare), "--user", "--map-root-user"]);
            if c.network != Network::Host {
                a.push(&["--net"]);
            }
            a.push(&["--"]);
            if attach {
                a.push(&["/bin/sh", "-c", WRAPPER, "sh"]);
            }
        }
        a.push(&[&path(&self.bwrap)]);
        if self.privileged {
            // No user namespace: real root sets the sandbox up, the command drops to nobody.
            a.push(&["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]);
            if c.network != Network::Host && joined.is_none() {
                // bwrap brings its loopback up.
                a.push(&["--unshare-net"]);
            }
            a.push(&["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]);
            if attach {
                a.push(&["--info-fd", "5"]);
            }
        } else {
            a.push(&["--unshare-all", "--share-net", "--uid", "65534", "--gid", "65534"]);
        }
        if c.network == Network::None && !self.privileged {
            // A network namespace of its own with only a loopback (bwrap brings it up).
            a.push(&["--unshare-net"]);
        }
        a.push(&["--die-with-parent", "--new-session", "--hostname", "cloudbuild"]);
        a.bind("--ro-bind", Path::new("/usr"), Path::new("/usr"));
        for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            match std::fs::read_link(top) {
                Ok(target) => a.push(&["--symlink", &path(&target), top]),
                Err(_) if Path::new(top).is_dir() => a.bind("--ro-bind", Path::new(top), Path::new(top)),
                Err(_) => {}
            }
        }
        for entry in ETC_ENTRIES {
            let host = Path::new("/etc").join(entry);
            if host.exists() {
                a.bind("--ro-bind", &host, &host);
            }
        }
        a.bind("--ro-bind", &self.etc_dir.join("resolv.conf"), Path::new("/etc/resolv.conf"));
        a.bind("--ro-bind", &self.etc_dir.join("hosts"), Path::new("/etc/hosts"));
        a.push(&["--proc", "/proc", "--dev", "/dev"]);
        if let Some(limits) = c.limits {
            // What a build writes to /tmp counts against the disk limit too.
            a.push(&["--size", &(limits.config.disk_mib << 20).to_string()]);
        }
        // Sticky and world-writable, as /tmp is: bwrap would make it root's 0755.
        a.push(&["--perms", "1777", "--tmpfs", "/tmp"]);
        a.bind("--bind", c.workdir, Path::new(INSIDE_WORKDIR));
        if let Some(cache) = c.npm_cache {
            a.bind("--bind", cache, Path::new(INSIDE_NPM_CACHE));
            a.push(&["--setenv", "npm_config_cache", INSIDE_NPM_CACHE]);
            // pnpm's store and yarn's caches there too, so that they outlive the task's HOME
            // (pnpm's under XDG_DATA_HOME: `npm_config_store_dir` would make npm warn about an
            // unknown setting in every build).
            for (key, dir) in [
                ("XDG_DATA_HOME", "xdg-data"),
                ("XDG_CACHE_HOME", "xdg-cache"),
                ("YARN_CACHE_FOLDER", "yarn"),
                ("YARN_GLOBAL_FOLDER", "yarn-berry"),
            ] {
                a.push(&["--setenv", key, &format!("{INSIDE_NPM_CACHE}/{dir}")]);
            }
        }
        // After `/tmp`, so that a directory below it is not hidden by the tmpfs.
        for dir in self.read_only.iter().map(PathBuf::as_path).chain(c.repository.filter(|p| p.is_dir())) {
            a.bind("--ro-bind", dir, dir);
        }
        for dir in &self.shared {
            a.bind("--bind", dir, dir);
        }
        if let Some((mirror, writable)) = c.mirror {
            a.bind(if writable { "--bind" } else { "--ro-bind" }, mirror, Path::new(INSIDE_GIT_MIRROR));
        }
        let home = format!("{INSIDE_WORKDIR}/home");
        a.push(&["--setenv", "HOME", &home, "--unsetenv", "TMPDIR"]);
        if c.npm_cache.is_none() {
            // Not the worker's: npm's default, in HOME.
            a.push(&["--unsetenv", "npm_config_cache"]);
        }
        a.push(&["--chdir", &path(&inside_cwd), "--"]);
        if self.privileged {
            if attach {
                a.push(&["/bin/sh", "-c", WRAPPER, "sh"]);
            }
            let id = SANDBOX_UID.to_string();
            a.push(&[&path(&self.setpriv), "--reuid", &id, "--regid", &id, "--clear-groups"]);
            a.push(&["--inh-caps=-all", "--bounding-set=-all", "--"]);
        }
        if let Some(limits) = c.limits {
            a.push(&[&path(&self.prlimit)]);
            a.0.extend(limits.rlimits());
            a.push(&["--"]);
        }
        a.0.extend(argv.iter().cloned());
        Wrapped { argv: a.0, info_fd: self.privileged && attach, network: attach, join_userns: !self.privileged }
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A bwrap command line being built.
#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push(&mut self, items: &[&str]) {
        self.0.extend(items.iter().map(|s| s.to_string()));
    }

    /// Binds `src` at `dest`. The parents of `dest` are made first, traversable: bwrap would
    /// make them `0700`, which hides what is below from the build's user.
    fn bind(&mut self, how: &str, src: &Path, dest: &Path) {
        let mut parents: Vec<&Path> = dest.ancestors().skip(1).filter(|p| p.parent().is_some()).collect();
        parents.reverse();
        for parent in parents {
            self.push(&["--perms", "0755", "--dir", &path(parent)]);
        }
        self.push(&[how, &path(src), &path(dest)]);
    }
}

fn chown_to_sandbox_user(dir: &Path) -> std::io::Result<()> {
    std::os::unix::fs::chown(dir, Some(SANDBOX_UID), Some(SANDBOX_UID))
}
