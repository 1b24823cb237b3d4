//! Per-task limits of sandboxed builds: processes and memory by a cgroup of the task (v1 or
//! v2, where the worker may make one), CPU time by the cgroup's accounting, the work
//! directory's disk usage by measuring it while commands run, and per-process `rlimit`s
//! (`prlimit`) as a backstop where there is no cgroup.
//!
//! The cgroup files read and written are the kernel's documented interface
//! (Documentation/admin-guide/cgroup-v1/{memory,pids}.rst and cgroup-v2.rst): a handful of
//! files, so no cgroup crate is used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudbuild_proto::sandbox::LimitsConfig;
use cloudbuild_proto::text::size;

use super::spawner::Spawner;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The limits of one task, and its cgroup when the machine gives one.
#[derive(Debug)]
pub struct TaskLimits {
    pub config: LimitsConfig,
    pub(crate) cgroup: Option<TaskCgroup>,
}

/// Which limit a command reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    Memory,
    Processes,
    CpuTime,
    Disk,
}

impl TaskLimits {
    /// Limits for the task whose work directory is named `name` (`<task>-<attempt>`), with a
    /// cgroup when one can be made (the worker runs as root, cgroup v1 with the memory, pids
    /// and cpuacct controllers, or v2 with memory, pids and cpu enabled).
    pub fn new(config: &LimitsConfig, name: &str) -> TaskLimits {
        let group = format!("{}/{name}", worker_group());
        let cgroup = TaskCgroup::create(&group, config)
            .map_err(|e| {
                tracing::warn!(
                    "no cgroup for task {name} ({e}): its memory is not limited, and processes only per user (RLIMIT_NPROC)"
                )
            })
            .ok();
        TaskLimits { config: config.clone(), cgroup }
    }

    /// How the limit reads in a build's log: "memory limit of 4 GiB".
    pub fn describe(&self, what: Reached) -> String {
        let c = &self.config;
        match what {
            Reached::Memory => format!("memory limit of {}", size(c.memory_mib << 20)),
            Reached::Processes => format!("process limit of {}", c.processes),
            Reached::CpuTime => format!("CPU time limit of {} s", c.cpu_secs),
            Reached::Disk => format!("disk limit of {}", size(c.disk_mib << 20)),
        }
    }

    /// `prlimit` options for each command: the CPU time and file size backstops, and (only
    /// without a cgroup, since `RLIMIT_NPROC` counts every process of the user) processes.
    pub(crate) fn rlimits(&self) -> Vec<String> {
        let c = &self.config;
        // Soft below hard: the soft limit sends SIGXCPU, which tells what happened; at the
        // hard one the kernel sends SIGKILL, which does not.
        let mut args =
            vec![format!("--cpu={}:{}", c.cpu_secs, c.cpu_secs + 5), format!("--fsize={}", c.disk_mib << 20)];
        if self.cgroup.is_none() {
            args.push(format!("--nproc={}", c.processes));
        }
        args
    }

    /// What a command that failed reached, if anything: the cgroup's counters since `before`,
    /// the task's CPU time, or an rlimit's signal in its exit status.
    pub(crate) fn reached(&self, before: &Events, status: std::process::ExitStatus) -> Option<Reached> {
        self.events().reached_since(before).or_else(|| self.cpu_over()).or_else(|| limit_signal(status))
    }

    /// The limit a running command is past, measured: the work directory's disk usage (from
    /// [`disk_usage`], a walk the caller makes off the async threads) or the task's CPU time.
    /// The kernel enforces the others.
    pub(crate) fn overrun(&self, disk_used: u64) -> Option<Reached> {
        if disk_used > self.disk_cap() {
            return Some(Reached::Disk);
        }
        self.cpu_over()
    }

    /// The disk limit in bytes.
    pub(crate) fn disk_cap(&self) -> u64 {
        self.config.disk_mib << 20
    }

    /// Whether the task's processes together have used up their CPU time.
    fn cpu_over(&self) -> Option<Reached> {
        let used = self.cgroup.as_ref().and_then(TaskCgroup::cpu_used)?;
        (used.as_secs() >= self.config.cpu_secs).then_some(Reached::CpuTime)
    }

    /// Counters of limit hits so far, to tell what a command reached.
    pub(crate) fn events(&self) -> Events {
        self.cgroup.as_ref().map(TaskCgroup::events).unwrap_or_default()
    }
}

/// The limit a process was killed for by its `rlimit`: SIGXCPU (CPU time), SIGXFSZ (file size).
fn limit_signal(status: std::process::ExitStatus) -> Option<Reached> {
    use nix::sys::signal::Signal;
    use std::os::unix::process::ExitStatusExt;
    // A shell reports a child killed by signal N as exit code 128 + N.
    let signal = status.signal().or_else(|| status.code().filter(|c| *c > 128).map(|c| c - 128))?;
    match Signal::try_from(signal).ok()? {
        Signal::SIGXCPU => Some(Reached::CpuTime),
        Signal::SIGXFSZ => Some(Reached::Disk),
        _ => None,
    }
}

/// How often each limit has been hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Events {
    pub oom_kills: u64,
    pub process_max: u64,
}

impl Events {
    /// What was reached between `before` and `self`.
    pub(crate) fn reached_since(&self, before: &Events) -> Option<Reached> {
        if self.oom_kills > before.oom_kills {
            Some(Reached::Memory)
        } else if self.process_max > before.process_max {
            Some(Reached::Processes)
        } else {
            None
        }
    }
}

/// A task's cgroup: one directory (v2) or one per controller (v1).
#[derive(Debug)]
pub(crate) struct TaskCgroup {
    v2: bool,
    memory: PathBuf,
    pids: PathBuf,
    cpu: PathBuf,
    /// v1: the thread in the cgroup that starts the task's commands (see [`Spawner`]).
    pub(crate) spawner: Option<Spawner>,
}

impl TaskCgroup {
    fn create(group: &str, c: &LimitsConfig) -> std::io::Result<TaskCgroup> {
        let root = Path::new(CGROUP_ROOT);
        let cg = if root.join("cgroup.controllers").is_file() {
            // v2: the controllers must be enabled down the path.
            let mut at = root.to_path_buf();
            for part in group.split('/') {
                // One by one: `cpu` may be missing where `memory` and `pids` are there; those two
                // are required (checked by writing their limits below).
                for controller in ["+memory", "+pids", "+cpu"] {
                    let _ = std::fs::write(at.join("cgroup.subtree_control"), controller);
                }
                at = at.join(part);
                std::fs::create_dir_all(&at)?;
            }
            TaskCgroup { v2: true, memory: at.clone(), pids: at.clone(), cpu: at, spawner: None }
        } else {
            let make = |controller: &str| -> std::io::Result<PathBuf> {
                let dir = root.join(controller).join(group);
                std::fs::create_dir_all(&dir)?;
                Ok(dir)
            };
            TaskCgroup { v2: false, memory: make("memory")?, pids: make("pids")?, cpu: make("cpuacct")?, spawner: None }
        };
        let memory = (c.memory_mib << 20).to_string();
        if cg.v2 {
            std::fs::write(cg.memory.join("memory.max"), &memory)?;
            std::fs::write(cg.memory.join("memory.swap.max"), "0").ok();
        } else {
            std::fs::write(cg.memory.join("memory.limit_in_bytes"), &memory)?;
            // Not every kernel accounts swap; where it does, no swap past the limit either.
            std::fs::write(cg.memory.join("memory.memsw.limit_in_bytes"), &memory).ok();
        }
        std::fs::write(cg.pids.join("pids.max"), c.processes.to_string())?;
        let mut cg = cg;
        if !cg.v2 {
            let tasks = [&cg.memory, &cg.pids, &cg.cpu].iter().map(|dir| dir.join("tasks")).collect();
            cg.spawner = Some(Spawner::start(tasks)?);
        }
        Ok(cg)
    }

    /// The cgroup's `cgroup.procs` files: a process that writes `0` to each moves itself in,
    /// and its later children follow it (Documentation/admin-guide/cgroup-v2.rst, "Processes").
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        let dirs: Vec<&PathBuf> = if self.v2 { vec![&self.memory] } else { vec![&self.memory, &self.pids, &self.cpu] };
        dirs.into_iter().map(|dir| dir.join("cgroup.procs")).collect()
    }

    fn events(&self) -> Events {
        let oom = if self.v2 { "memory.events" } else { "memory.oom_control" };
        Events {
            oom_kills: counter(&self.memory.join(oom), "oom_kill"),
            process_max: counter(&self.pids.join("pids.events"), "max"),
        }
    }

    fn cpu_used(&self) -> Option<Duration> {
        if self.v2 {
            let micros = counter(&self.cpu.join("cpu.stat"), "usage_usec");
            Some(Duration::from_micros(micros))
        } else {
            let nanos = std::fs::read_to_string(self.cpu.join("cpuacct.usage")).ok()?.trim().parse().ok()?;
            Some(Duration::from_nanos(nanos))
        }
    }

    /// Kills every process still in the cgroup.
    fn kill_all(&self) {
        if self.v2 && std::fs::write(self.memory.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        let procs = std::fs::read_to_string(self.memory.join("cgroup.procs")).unwrap_or_default();
        // v1 lists the worker itself while its spawner thread is still in the cgroup.
        let worker = std::process::id() as i32;
        // v1 lists processes of other PID namespaces as 0, which `kill` would read as our group.
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|p| *p > 0 && *p != worker) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for TaskCgroup {
    fn drop(&mut self) {
        // The spawner's thread ends and leaves the cgroup, which can then be removed.
        self.spawner = None;
        self.kill_all();
        // The directories go once empty (the kernel takes a moment to release killed
        // processes), then the worker's own level if this was its last task.
        let mut dirs = vec![self.memory.clone(), self.pids.clone(), self.cpu.clone()];
        dirs.dedup();
        let parents: Vec<PathBuf> = dirs.iter().filter_map(|d| d.parent().map(Path::to_path_buf)).collect();
        std::thread::spawn(move || {
            remove_when_empty(&dirs);
            for parent in parents {
                let _ = std::fs::remove_dir(parent);
            }
        });
    }
}

/// The cgroup (below each hierarchy's root) holding this worker's task cgroups.
pub(crate) fn worker_group() -> String {
    format!("cloudbuild/{}", std::process::id())
}

/// Kills what is left in the task cgroups of `group` (the [`worker_group`] of this worker's
/// previous life, gone in a crash or a `kill -9`) and removes them. Only a group whose worker
/// is no longer running, so that nothing of a live worker is touched.
pub(crate) fn reap_cgroups_of(group: &str) {
    let Some(pid) = group.strip_prefix("cloudbuild/").and_then(|p| p.parse::<u32>().ok()) else { return };
    if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
        return;
    }
    let root = Path::new(CGROUP_ROOT);
    let tops: Vec<PathBuf> = if root.join("cgroup.controllers").is_file() {
        vec![root.join(group)]
    } else {
        ["memory", "pids", "cpuacct"].iter().map(|c| root.join(c).join(group)).collect()
    };
    let mut stale = Vec::new();
    for top in tops.into_iter().filter(|t| t.is_dir()) {
        for task in std::fs::read_dir(&top).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            let procs = std::fs::read_to_string(task.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|p| *p > 0) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            stale.push(task);
        }
        stale.push(top);
    }
    if !stale.is_empty() {
        tracing::info!("removing the cgroups of this worker's previous run ({group})");
        std::thread::spawn(move || remove_when_empty(&stale));
    }
}

/// Removes `dirs` (cgroups, children before parents) as their killed processes are released:
/// retried for up to 5 s.
fn remove_when_empty(dirs: &[PathBuf]) {
    for _ in 0..50 {
        let left = dirs.iter().filter(|d| d.exists() && std::fs::remove_dir(d).is_err()).count();
        if left == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line); 0 when absent.
fn counter(file: &Path, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Bytes the files under `dir` take on disk (allocated blocks; hard links once), without
/// following symlinks; stops counting past `stop_after`.
pub(crate) fn disk_usage(dir: &Path, stop_after: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
            if total > stop_after {
                return total;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_counters_are_read_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n").unwrap();
        assert_eq!(counter(&f, "oom_kill"), 1);
        assert_eq!(counter(&f, "max"), 12);
        assert_eq!(counter(&f, "absent"), 0);
        let before = Events { oom_kills: 0, process_max: 3 };
        assert_eq!(Events { oom_kills: 1, process_max: 3 }.reached_since(&before), Some(Reached::Memory));
        assert_eq!(Events { oom_kills: 0, process_max: 4 }.reached_since(&before), Some(Reached::Processes));
        assert_eq!(before.reached_since(&before), None);
    }

    #[test]
    fn disk_usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let used = disk_usage(dir.path(), u64::MAX);
        assert!((1 << 20..2 << 20).contains(&used), "{used}");
    }
}
