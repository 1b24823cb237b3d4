//! The build sandbox's settings, shared by the server's configuration (for its embedded worker)
//! and `cloudbuild worker`; the sandbox itself is the worker's (`cloudbuild_worker::sandbox`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How builds are isolated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// bubblewrap with user-mode networking (the default).
    #[default]
    Bwrap,
    /// No sandbox: builds run as the worker's user and see what it sees. Only by explicit
    /// choice, e.g. on a machine without user namespaces and for a single trusted team.
    Off,
}

/// The sandbox settings of a worker (`[sandbox]` in the server's config, flags of
/// `cloudbuild worker`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// Directories every build may read and write, at the same path inside (absolute).
    pub shared: Vec<PathBuf>,
    /// More directories builds may read, at the same path inside (absolute), e.g. a Node.js
    /// installed outside `/usr` (a toolchain outside `/usr` must be listed here).
    pub read_only: Vec<PathBuf>,
    /// IPv4 networks (`10.8.0.0/16`) builds may reach although they are private: a registry
    /// mirror on the LAN. Private, link-local (cloud metadata) and shared address space, and
    /// the machine's own addresses, are otherwise unreachable from builds.
    pub reachable_networks: Vec<String>,
    /// `[sandbox.limits]`: what one task may use.
    pub limits: LimitsConfig,
}

/// What builds cannot reach by default: private networks (RFC 1918), link-local (cloud
/// metadata at 169.254.169.254), carrier-grade NAT space and "this network".
pub const UNREACHABLE_NETWORKS: [&str; 6] =
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8"];

/// Checks an IPv4 network written `a.b.c.d/len`.
pub fn check_network(cidr: &str) -> Result<(), String> {
    let (addr, len) = cidr.split_once('/').ok_or_else(|| format!("`{cidr}` is not a.b.c.d/len"))?;
    addr.parse::<std::net::Ipv4Addr>().map_err(|_| format!("`{cidr}`: `{addr}` is not an IPv4 address"))?;
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(()),
        _ => Err(format!("`{cidr}`: the prefix length must be 0 to 32")),
    }
}

/// What one sandboxed task may use. The defaults are far above what a front-end build needs
/// (vite-admin, 131 packages: about 1 GiB of memory, 60 processes, 30 s of CPU, 400 MiB of
/// disk), so that only a runaway or hostile build meets them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Processes and threads at once (the cgroup's `pids.max`).
    pub processes: u64,
    /// Memory of all its processes, in MiB; a process past it is killed by the kernel.
    pub memory_mib: u64,
    /// CPU time of all its processes together, in seconds.
    pub cpu_secs: u64,
    /// Disk space of its work directory, in MiB (also the largest file one may write).
    pub disk_mib: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { processes: 4096, memory_mib: 4096, cpu_secs: 7200, disk_mib: 20480 }
    }
}
