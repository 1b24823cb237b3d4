//! Runs one command without a shell, as its own process group, streaming its output.
//!
//! The group is killed whole: on timeout or cancel with SIGTERM then, after the grace, SIGKILL;
//! and after a normal exit with SIGKILL, so that background children a build left behind do not
//! outlive it (P4). Output is decoded as UTF-8 without ever splitting a character across chunks
//! (invalid bytes become U+FFFD) and coalesced for up to 25 ms or 64 KiB per chunk, in the order
//! it was read across stdout and stderr, so a chatty build costs few events while the log still
//! feels live.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cloudbuild_proto::event::OutputStream;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cancel::CancelToken;
use crate::sandbox::{self, Confinement};

/// How a command ended, when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not start `{program}`: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` exited with {status}")]
    Exit { command: String, status: String },
    #[error("`{command}` did not finish within {secs} s")]
    TimedOut { command: String, secs: u64 },
    #[error("cancelled")]
    Cancelled,
    #[error("the build sandbox could not start `{command}`: {reason}")]
    Sandbox { command: String, reason: String },
    /// A task limit stopped the command; `limit` reads "memory limit of 4 GiB".
    #[error("`{command}` was stopped: {limit} reached")]
    LimitReached { command: String, limit: String },
}

/// One command to run.
#[derive(Debug)]
pub struct RunSpec<'a> {
    pub argv: &'a [String],
    pub cwd: &'a Path,
    /// The complete environment: the child inherits nothing else.
    pub env: &'a [(String, String)],
    /// When the command must have finished.
    pub deadline: Instant,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Where to record the process group while it runs, so a worker restarted after a crash
    /// can find and kill it (see [`reap_orphans`]).
    pub pgid_file: Option<&'a Path>,
    /// Run in the build sandbox (when the sandbox is on).
    pub confinement: Option<Confinement<'a>>,
}

const FLUSH_BYTES: usize = 64 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(25);
/// How often the disk and CPU time of a limited task are measured.
const LIMITS_EVERY: Duration = Duration::from_secs(2);

/// Runs the command, passing output chunks to `sink`.
pub async fn run(
    spec: RunSpec<'_>,
    cancel: &mut CancelToken,
    sink: &mut (dyn FnMut(OutputStream, String) + Send),
) -> Result<(), RunError> {
    let command = spec.argv.join(" ");
    let jail = spec.confinement.as_ref().and_then(|c| c.sandbox.jail().map(|j| (j, j.wrap(c, spec.cwd, spec.argv))));
    let argv = jail.as_ref().map_or(spec.argv, |(_, wrapped)| &wrapped.argv);
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1..])
        .current_dir(spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let handshake = match &jail {
        Some((_, wrapped)) => sandbox::prepare(&mut cmd, wrapped)
            .map_err(|source| RunError::Spawn { program: program.clone(), source })?,
        None => None,
    };
    // A sandboxed command of a task with a cgroup v1 starts from the thread in its cgroup.
    let spawner = spec.confinement.as_ref().and_then(|c| c.limits?.cgroup.as_ref()?.spawner.as_ref());
    // The child's ends of the handshake pipes close with the command, so that a sandbox that
    // fails to start reads as EOF.
    let spawned = match spawner.filter(|_| jail.is_some()) {
        Some(spawner) => spawner.spawn(cmd).await,
        None => {
            let spawned = cmd.spawn();
            drop(cmd);
            spawned
        }
    };
    let mut child = spawned.map_err(|source| RunError::Spawn { program: program.clone(), source })?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    if let (Some(file), Some(pgid)) = (spec.pgid_file, pgid) {
        let _ = std::fs::write(file, pgid.to_string());
    }

    let (tx, mut rx) = mpsc::channel::<(OutputStream, Vec<u8>)>(64);
    if let Some(out) = child.stdout.take() {
        enlarge_pipe(&out);
        tokio::spawn(read_pipe(out, OutputStream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        enlarge_pipe(&err);
        tokio::spawn(read_pipe(err, OutputStream::Stderr, tx.clone()));
    }
    drop(tx);

    let mut out = Coalescer::default();
    // Limits apply in the sandbox only (they need its cgroup and rlimit wrapper).
    let limits = spec.confinement.as_ref().and_then(|c| c.limits).filter(|_| jail.is_some());
    let events_before = limits.map(|l| l.events()).unwrap_or_default();
    let workdir = spec.confinement.as_ref().map(|c| c.workdir.to_path_buf());
    // A sandbox with a network of its own: wait for it to come up, attach the network, then
    // let the command run.
    let mut _network = None;
    if let (Some((jail, wrapped)), Some(hs), Some(pid)) = (&jail, handshake, child.id()) {
        match sandbox::start(jail, wrapped, hs, pid).await {
            Ok(net) => _network = Some(net),
            Err(reason) => {
                stop_group(pgid, &mut child, Duration::ZERO).await;
                while let Ok(Some((stream, bytes))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                    out.push(stream, &bytes, sink);
                }
                out.finish(sink);
                return Err(RunError::Sandbox { command, reason });
            }
        }
    }
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    // Not at once: a walk of a large node_modules would delay every short command.
    let mut watch = tokio::time::interval_at(Instant::now() + LIMITS_EVERY, LIMITS_EVERY);
    let secs = spec.deadline.saturating_duration_since(Instant::now()).as_secs_f64().round() as u64;
    let outcome = loop {
        tokio::select! {
            status = child.wait() => {
                break match status {
                    Ok(s) if s.success() => Ok(()),
                    Ok(s) => match (limits.and_then(|l| l.reached(&events_before, s)), limits) {
                        (Some(what), Some(l)) => Err(RunError::LimitReached { command: command.clone(), limit: l.describe(what) }),
                        _ => Err(RunError::Exit { command: command.clone(), status: describe(s) }),
                    },
                    Err(e) => Err(RunError::Spawn { program: program.clone(), source: e }),
                };
            }
            _ = watch.tick(), if limits.is_some() => {
                let (Some(l), Some(dir)) = (limits, workdir.clone()) else { continue };
                let cap = l.disk_cap();
                let used = tokio::task::spawn_blocking(move || sandbox::disk_usage(&dir, cap)).await.unwrap_or(0);
                if let Some(what) = l.overrun(used) {
                    stop_group(pgid, &mut child, Duration::ZERO).await;
                    break Err(RunError::LimitReached { command: command.clone(), limit: l.describe(what) });
                }
            }
            Some((stream, bytes)) = rx.recv() => out.push(stream, &bytes, sink),
            _ = flush.tick() => out.flush(sink),
            _ = tokio::time::sleep_until(spec.deadline) => {
                stop_group(pgid, &mut child, spec.kill_grace).await;
                break Err(RunError::TimedOut { command: command.clone(), secs });
            }
            _ = cancel.cancelled() => {
                stop_group(pgid, &mut child, spec.kill_grace).await;
                break Err(RunError::Cancelled);
            }
        }
    };
    // Whatever the outcome, nothing of this command's group survives it, nor what it left
    // running in its directory after leaving the group (`setsid`, a double fork).
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    // Unsandboxed only: a sandboxed command's PID namespace has ended with it, and its
    // processes' working directories (`/build/...`) name nothing on the host.
    let left = if jail.is_some() { Vec::new() } else { kill_processes_in(spec.cwd, pgid.map(Pid::as_raw)) };
    if !left.is_empty() {
        let shown: Vec<String> = left.iter().map(|(pid, name)| format!("{pid} ({name})")).collect();
        let note = format!("[cloudbuild] killed what `{command}` left running: {}\n", shown.join(", "));
        sink(OutputStream::Stderr, note);
    }
    // Drain what the pipes still hold; a grandchild that escaped the group could keep a pipe
    // open forever, so the drain is bounded.
    let drain_until = Instant::now() + Duration::from_secs(2);
    while let Ok(Some((stream, bytes))) = tokio::time::timeout_at(drain_until, rx.recv()).await {
        out.push(stream, &bytes, sink);
    }
    out.finish(sink);
    if let Some(file) = spec.pgid_file {
        let _ = std::fs::remove_file(file);
    }
    outcome
}

/// The file, in a task's work directory, that holds the process group of its running command.
pub const PGID_FILE: &str = ".cloudbuild-pgid";

/// Kills the process groups that a previous run of this worker left behind (it was killed
/// with SIGKILL, or its machine lost power mid-build) and removes their work directories.
/// A group is killed only if one of its members still works inside that directory, so a
/// recycled process id is never hit. Returns how many groups, and processes outside them, were killed.
pub fn reap_orphans(work_root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        // Task directories only: `.sandbox` and `.cache` are the worker's own.
        if !dir.is_dir() || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Not following a symlink, nor blocking on a FIFO, should a build have left one there.
        let recorded = crate::publish::read_checkout_file(&dir.join(PGID_FILE), 32)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let mut group = None;
        if let Some(pgid) = recorded.filter(|pgid| group_works_in(*pgid, &dir)) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            killed += 1;
            group = Some(pgid);
        }
        // And each process that left the group but stayed in the directory.
        killed += kill_processes_in(&dir, group).len();
        let _ = std::fs::remove_dir_all(&dir);
    }
    killed
}

/// Kills (SIGKILL) every process but this one whose working directory is inside `dir`: what a
/// command left running however it detached, as long as it stayed in its directory. Members of
/// `killed_group` (already killed, maybe not yet gone) are not counted again. Returns each
/// one's pid and name. A process that also left the directory escapes this; only the build
/// sandbox's own PID namespace bounds that.
pub fn kill_processes_in(dir: &Path, killed_group: Option<i32>) -> Vec<(i32, String)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    // Only ever a task's own directory: never `/` (every process works somewhere below it).
    if dir.parent().is_none() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == me || !std::fs::read_link(p.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)) {
            continue;
        }
        if killed_group.is_some() && process_group_of(&p.path()) == killed_group {
            continue;
        }
        if nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            let name = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default().trim().to_owned();
            killed.push((pid, name));
        }
    }
    killed
}

/// The process group of the process at `/proc/<pid>` (`proc_path`).
fn process_group_of(proc_path: &Path) -> Option<i32> {
    let stat = std::fs::read_to_string(proc_path.join("stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    stat.rsplit(')').next()?.split_whitespace().nth(2)?.parse().ok()
}

/// Whether a process of group `pgid` has its working directory inside `dir`.
fn group_works_in(pgid: i32, dir: &Path) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    procs.flatten().any(|p| {
        let path = p.path();
        process_group_of(&path) == Some(pgid)
            && std::fs::read_link(path.join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
    })
}

/// How much of a command's output is read at a time.
const PIPE_READ_BYTES: usize = 64 * 1024;

/// The pipe capacity asked for a command's stdout and stderr: a build that prints a lot
/// (20 MB in one write) then writes 1 MiB per system call instead of 64 KiB, with as many fewer
/// wake-ups on both sides. Best effort: the kernel caps it at `/proc/sys/fs/pipe-max-size`.
const PIPE_BYTES: i32 = 1 << 20;

fn enlarge_pipe(pipe: &impl std::os::fd::AsRawFd) {
    let _ = nix::fcntl::fcntl(pipe.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
}

async fn read_pipe(
    mut pipe: impl AsyncReadExt + Unpin,
    stream: OutputStream,
    tx: mpsc::Sender<(OutputStream, Vec<u8>)>,
) {
    let mut buf = vec![0u8; PIPE_READ_BYTES];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((stream, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// SIGTERM to the group, SIGKILL after the grace.
async fn stop_group(pgid: Option<Pid>, child: &mut tokio::process::Child, grace: Duration) {
    let Some(pgid) = pgid else { return };
    let _ = killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// Per-stream buffers: decoded text waiting to be flushed, and bytes of an incomplete UTF-8
/// character waiting for the rest.
#[derive(Default)]
struct Coalescer {
    text: [String; 2],
    partial: [Vec<u8>; 2],
}

fn idx(s: OutputStream) -> usize {
    match s {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

const STREAMS: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

impl Coalescer {
    fn push(&mut self, stream: OutputStream, bytes: &[u8], sink: &mut (dyn FnMut(OutputStream, String) + Send)) {
        let i = idx(stream);
        // What the other stream printed before this goes first: the log keeps the order in
        // which the command's output was read, across stdout and stderr.
        let other = STREAMS[1 - i];
        if !self.text[1 - i].is_empty() {
            sink(other, std::mem::take(&mut self.text[1 - i]));
        }
        let mut buf = std::mem::take(&mut self.partial[i]);
        buf.extend_from_slice(bytes);
        let (text, rest) = decode_utf8(&buf);
        self.text[i].push_str(&text);
        self.partial[i] = rest.to_vec();
        if self.text[i].len() >= FLUSH_BYTES {
            sink(stream, std::mem::take(&mut self.text[i]));
        }
    }

    fn flush(&mut self, sink: &mut (dyn FnMut(OutputStream, String) + Send)) {
        for s in STREAMS {
            let t = std::mem::take(&mut self.text[idx(s)]);
            if !t.is_empty() {
                sink(s, t);
            }
        }
    }

    fn finish(&mut self, sink: &mut (dyn FnMut(OutputStream, String) + Send)) {
        for s in STREAMS {
            let rest = std::mem::take(&mut self.partial[idx(s)]);
            self.text[idx(s)].push_str(&String::from_utf8_lossy(&rest));
        }
        self.flush(sink);
    }
}

/// Decodes as much of `buf` as possible; returns the text and the trailing bytes of a character
/// that may be completed by the next read. Invalid sequences become U+FFFD.
pub fn decode_utf8(buf: &[u8]) -> (String, &[u8]) {
    let mut text = String::new();
    let mut rest = buf;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                return (text, &[]);
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    None => return (text, after),
                    Some(n) => {
                        text.push('\u{FFFD}');
                        rest = &after[n..];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn multibyte_characters_split_across_reads_survive() {
        let bytes = "héllo 世界".as_bytes();
        let mut c = Coalescer::default();
        let mut got = String::new();
        let mut sink = |_: OutputStream, t: String| got.push_str(&t);
        for b in bytes {
            c.push(OutputStream::Stdout, std::slice::from_ref(b), &mut sink);
        }
        c.finish(&mut sink);
        assert_eq!(got, "héllo 世界");
    }

    #[test]
    fn output_keeps_its_order_across_stdout_and_stderr() {
        let mut c = Coalescer::default();
        let mut got = Vec::new();
        let mut sink = |s: OutputStream, t: String| got.push((s, t));
        c.push(OutputStream::Stdout, b"one\n", &mut sink);
        c.push(OutputStream::Stderr, b"two\n", &mut sink);
        c.push(OutputStream::Stdout, b"three\n", &mut sink);
        c.flush(&mut sink);
        let expected =
            [(OutputStream::Stdout, "one\n"), (OutputStream::Stderr, "two\n"), (OutputStream::Stdout, "three\n")];
        assert_eq!(got, expected.map(|(s, t)| (s, t.to_owned())));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (t, rest) = decode_utf8(b"a\xffb\xe4");
        assert_eq!(t, "a\u{FFFD}b");
        assert_eq!(rest, b"\xe4");
    }

    /// Runs `sh -c script` in `dir` with a time limit.
    async fn sh(
        script: &str,
        dir: &Path,
        limit: Duration,
        sink: &mut (dyn FnMut(OutputStream, String) + Send),
    ) -> Result<(), RunError> {
        let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        let env = vec![("PATH".to_string(), std::env::var("PATH").unwrap())];
        let (_tx, mut cancel) = CancelToken::new();
        let spec = RunSpec {
            argv: &argv,
            cwd: dir,
            env: &env,
            deadline: Instant::now() + limit,
            kill_grace: Duration::from_millis(200),
            pgid_file: None,
            confinement: None,
        };
        run(spec, &mut cancel, sink).await
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        // A background grandchild in the same group, and a foreground sleep.
        let script = format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display());
        let err = sh(&script, dir.path(), Duration::from_millis(500), &mut |_, _| {}).await.unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // The grandchild is gone (or a zombie about to be reaped by init).
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
            .unwrap_or(false);
        assert!(!alive, "background child {pid} survived the timeout");
    }

    #[test]
    fn orphans_of_a_crashed_worker_are_killed_and_cleaned() {
        let root = tempfile::tempdir().unwrap();
        let task_dir = root.path().join("7-1");
        std::fs::create_dir_all(&task_dir).unwrap();
        // A stand-in for a build left behind: its own group, working in the task directory.
        let mut child =
            std::process::Command::new("sleep").arg("300").current_dir(&task_dir).process_group(0).spawn().unwrap();
        std::fs::write(task_dir.join(PGID_FILE), child.id().to_string()).unwrap();
        // A group working elsewhere is never touched, even if a pgid file names it.
        let mut bystander = std::process::Command::new("sleep").arg("300").process_group(0).spawn().unwrap();
        let other_dir = root.path().join("8-1");
        std::fs::create_dir_all(&other_dir).unwrap();
        std::fs::write(other_dir.join(PGID_FILE), bystander.id().to_string()).unwrap();

        assert_eq!(reap_orphans(root.path()), 1);
        assert!(child.wait().is_ok_and(|s| !s.success()), "the orphan was killed");
        assert!(bystander.try_wait().unwrap().is_none(), "the bystander still runs");
        assert!(!task_dir.exists() && !other_dir.exists(), "stale work directories are removed");
        let _ = bystander.kill();
        let _ = bystander.wait();
    }

    #[tokio::test]
    async fn exit_codes_fail_and_output_streams() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let script = "echo out; echo err >&2; exit 3";
        let err = sh(script, dir.path(), Duration::from_secs(10), &mut |s, t| seen.push((s, t))).await.unwrap_err();
        assert_eq!(err.to_string(), "`sh -c echo out; echo err >&2; exit 3` exited with exit code 3");
        assert!(seen.contains(&(OutputStream::Stdout, "out\n".to_string())), "{seen:?}");
        assert!(seen.contains(&(OutputStream::Stderr, "err\n".to_string())), "{seen:?}");
    }
}
