//! Processes: signals, liveness, waiting for files and exits.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Sends a signal (`"TERM"`, `"KILL"`, `"STOP"`, …) to a process with kill(1); panics if it fails.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().expect("running kill");
    assert!(ok.success(), "kill -{sig} {pid} failed");
}

/// Whether a process is alive (not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}

/// Waits up to `timeout` for a file to appear and returns its contents.
pub fn wait_file(path: &Path, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return Some(s);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits for a build script to write its pid to `file` and returns that process's pid on this
/// machine. In the build sandbox a script sees its own PID namespace's number; the host pid is
/// that of the process below `ancestor` (the server or worker running the build) whose
/// namespaced pids (`NSpid` in `/proc/<pid>/status`) end with it. Unsandboxed, they are equal.
pub fn wait_build_pid(file: &Path, ancestor: u32, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    let inner: i32 = wait_file(file, timeout)?.trim().parse().ok()?;
    while Instant::now() < deadline {
        if let Some(pid) = host_pid(ancestor as i32, inner) {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The host pid of the descendant of `ancestor` known as `inner` in its own PID namespace.
fn host_pid(ancestor: i32, inner: i32) -> Option<i32> {
    let mut parents = std::collections::HashMap::new();
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        if let Some(ppid) = field("PPid:").and_then(|v| v.parse::<i32>().ok()) {
            parents.insert(pid, ppid);
        }
        if field("NSpid:").and_then(|v| v.split_whitespace().last()).and_then(|v| v.parse::<i32>().ok()) == Some(inner)
        {
            candidates.push(pid);
        }
    }
    candidates.into_iter().find(|&pid| {
        let mut at = pid;
        for _ in 0..64 {
            match parents.get(&at) {
                Some(&p) if p == ancestor => return true,
                Some(&p) if p > 1 => at = p,
                _ => return false,
            }
        }
        false
    })
}

/// The live processes (not zombies) of this machine whose command line is exactly `args`.
pub fn processes_with_args(args: &[&str]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let parts: Vec<&[u8]> = cmdline.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
            parts.len() == args.len() && parts.iter().zip(args).all(|(p, a)| *p == a.as_bytes()) && alive(pid)
        })
        .collect()
}

/// Waits for a child process to exit, up to `timeout`.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
