//! Starting a sandboxed command that gets a network of its own: the handshake with its
//! wrapper while the user-mode network (`slirp4netns`) is attached; and a task's network,
//! which the other commands of a root worker's task join.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::fcntl::OFlag;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::{Jail, Wrapped};

/// How long a sandbox may take to come up (namespaces, mounts, network).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The parent's ends of the pipes of one sandboxed command, made before it is spawned.
pub(crate) struct Handshake {
    /// Readable once the sandbox's namespaces exist (the wrapper writes one byte).
    up: OwnedFd,
    /// Written to let the command run.
    go: OwnedFd,
    /// bwrap's JSON info, with the host pid of the sandbox (privileged way only).
    info: Option<OwnedFd>,
}

/// What keeps a sandboxed command's network alive: dropped, `slirp4netns` ends.
#[derive(Debug)]
pub(crate) struct Network {
    _slirp: tokio::process::Child,
    _exit: OwnedFd,
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Prepares `cmd` (the command line of `w`) for the handshake when its network is attached
/// from outside: the wrapper gets its pipes as fds 3 (ready), 4 (go) and 5 (bwrap info).
/// Other sandboxed commands start without one.
pub(crate) fn prepare(cmd: &mut tokio::process::Command, w: &Wrapped) -> std::io::Result<Option<Handshake>> {
    if w.network {
        handshake(cmd, w).map(Some)
    } else {
        Ok(None)
    }
}

/// Makes the handshake's pipes and gives the child its ends as fds 3, 4 and 5.
fn handshake(cmd: &mut tokio::process::Command, w: &Wrapped) -> std::io::Result<Handshake> {
    let (up_r, up_w) = pipe_pair()?;
    let (go_r, go_w) = pipe_pair()?;
    let mut maps = vec![FdMapping { parent_fd: up_w, child_fd: 3 }, FdMapping { parent_fd: go_r, child_fd: 4 }];
    let info = if w.info_fd {
        let (info_r, info_w) = pipe_pair()?;
        maps.push(FdMapping { parent_fd: info_w, child_fd: 5 });
        Some(info_r)
    } else {
        None
    };
    cmd.fd_mappings(maps).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Handshake { up: up_r, go: go_w, info })
}

/// Waits for the sandbox of the spawned `pid` to come up, attaches its network, and lets the
/// command run. Errors say what failed, for the build's log.
pub(crate) async fn start(jail: &Jail, w: &Wrapped, hs: Handshake, pid: u32) -> Result<Network, String> {
    let started = tokio::time::timeout(START_TIMEOUT, async {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let target = match hs.info {
            Some(info) => sandbox_pid(info).await?,
            None => pid,
        };
        let mut up = pipe::Receiver::from_owned_fd(hs.up).map_err(|e| io("sandbox pipe", e))?;
        let mut byte = [0u8; 1];
        if up.read(&mut byte).await.map_err(|e| io("sandbox pipe", e))? == 0 {
            return Err("bubblewrap could not set the sandbox up (its message is above)".to_owned());
        }
        let network = attach_network(jail, w.join_userns, target).await?;
        let mut go = pipe::Sender::from_owned_fd(hs.go).map_err(|e| io("sandbox pipe", e))?;
        go.write_all(b"\n").await.map_err(|e| io("sandbox pipe", e))?;
        Ok(network)
    })
    .await;
    started.unwrap_or_else(|_| Err(format!("the sandbox did not come up within {} s", START_TIMEOUT.as_secs())))
}

/// Routes private networks and this machine's own addresses to nowhere in the sandbox's
/// network namespace (as root there; the build cannot change them back), before the command runs.
async fn fence(jail: &Jail, join_userns: bool, pid: u32) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&jail.nsenter);
    cmd.arg(format!("--target={pid}")).arg("--net");
    if join_userns {
        // Joining the namespace gives its capabilities; changing ids would fail (`setgroups`
        // is denied in a namespace that `unshare --map-root-user` made).
        cmd.args(["--user", "--preserve-credentials"]);
    }
    cmd.arg("--").arg(&jail.ip).args(["-4", "-batch", "-"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("nsenter: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(jail.fence.as_bytes()).await.map_err(|e| format!("ip: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("cannot fence the sandbox's network: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// A task's user-mode network, made once and joined by each of its commands (the privileged
/// way: real root can enter it): a holder process in a network namespace of its own, with
/// slirp4netns attached and the fence in place. Dropped, the holder and slirp4netns end; if
/// the worker dies, the holder reads EOF on its stdin and slirp4netns on its exit fd.
#[derive(Debug)]
pub struct TaskNetwork {
    /// Kept unreaped while the task runs, so its pid cannot name another process.
    _holder: tokio::process::Child,
    _stdin: tokio::process::ChildStdin,
    _net: Network,
    pid: u32,
}

impl TaskNetwork {
    pub(crate) async fn new(jail: &Jail) -> Result<TaskNetwork, String> {
        let io = |e: std::io::Error| format!("the task's network holder: {e}");
        // It says when it is in its namespace (before that, its pid names the host's).
        let mut cmd = tokio::process::Command::new(&jail.unshare);
        cmd.args(["--net", "--", "/bin/sh", "-c", "echo; read _"])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut holder = cmd.spawn().map_err(io)?;
        let pid = holder.id().ok_or_else(|| "the task's network holder exited at once".to_owned())?;
        let mut line = [0u8; 1];
        let mut out = holder.stdout.take().ok_or_else(|| "no stdout".to_owned())?;
        let ready = tokio::time::timeout(START_TIMEOUT, out.read(&mut line)).await;
        if !matches!(ready, Ok(Ok(1))) {
            return Err("the task's network holder did not start".to_owned());
        }
        let stdin = holder.stdin.take().ok_or_else(|| "no stdin".to_owned())?;
        let net = tokio::time::timeout(START_TIMEOUT, attach_network(jail, false, pid))
            .await
            .map_err(|_| format!("the network did not come up within {} s", START_TIMEOUT.as_secs()))??;
        Ok(TaskNetwork { _holder: holder, _stdin: stdin, _net: net, pid })
    }

    /// Its network namespace, for `nsenter --net=`.
    pub(crate) fn namespace(&self) -> String {
        format!("/proc/{}/ns/net", self.pid)
    }
}

/// Reads bwrap's info (`{"child-pid": N, ...}`) until it parses.
async fn sandbox_pid(info: OwnedFd) -> Result<u32, String> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "child-pid")]
        child_pid: u32,
    }
    let mut rx = pipe::Receiver::from_owned_fd(info).map_err(|e| format!("sandbox info: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = rx.read(&mut chunk).await.map_err(|e| format!("sandbox info: {e}"))?;
        if n == 0 {
            return Err("bubblewrap could not set the sandbox up (its message is above)".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(info) = serde_json::from_slice::<Info>(&buf) {
            return Ok(info.child_pid);
        }
    }
}

/// Starts `slirp4netns` on the network namespace of `pid` and waits until it is ready.
async fn attach_network(jail: &Jail, join_userns: bool, pid: u32) -> Result<Network, String> {
    let io = |e: std::io::Error| format!("slirp4netns: {e}");
    let (ready_r, ready_w) = pipe_pair().map_err(io)?;
    let (exit_r, exit_w) = pipe_pair().map_err(io)?;
    let mut cmd = tokio::process::Command::new(&jail.slirp4netns);
    // --enable-sandbox: slirp4netns parses the build's packets, so it drops its own
    // capabilities and sees an empty file system (as root only: unprivileged, it fails at
    // `setegid(0)`, and has no capabilities to drop); --enable-seccomp limits its system calls.
    cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback", "--enable-seccomp"]);
    if !join_userns {
        cmd.arg("--enable-sandbox");
    }
    cmd.args(["--ready-fd=3", "--exit-fd=4"]);
    if join_userns {
        cmd.arg(format!("--userns-path=/proc/{pid}/ns/user"));
    }
    cmd.args(["--netns-type=path", &format!("/proc/{pid}/ns/net"), "tap0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.fd_mappings(vec![FdMapping { parent_fd: ready_w, child_fd: 3 }, FdMapping { parent_fd: exit_r, child_fd: 4 }])
        .map_err(|e| format!("slirp4netns: {e}"))?;
    let mut slirp = cmd.spawn().map_err(io)?;
    // The child's ends must close here, or a failed start would never read as EOF.
    drop(cmd);
    let mut ready = pipe::Receiver::from_owned_fd(ready_r).map_err(io)?;
    let mut byte = [0u8; 1];
    let n = ready.read(&mut byte).await.map_err(io)?;
    if n == 1 && byte[0] == b'1' {
        fence(jail, join_userns, pid).await?;
        // Whatever it says later is not read; drained so that it never blocks on a full pipe.
        if let Some(mut err) = slirp.stderr.take() {
            tokio::spawn(async move { tokio::io::copy(&mut err, &mut tokio::io::sink()).await });
        }
        return Ok(Network { _slirp: slirp, _exit: exit_w });
    }
    let mut said = String::new();
    if let Some(mut err) = slirp.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), err.read_to_string(&mut said)).await;
    }
    let _ = slirp.kill().await;
    Err(format!("slirp4netns could not attach the network: {}", said.trim()))
}
