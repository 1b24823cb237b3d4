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
    /// installed outside `/usr`. Directories on the worker's `PATH` outside `/usr` are added.
    pub read_only: Vec<PathBuf>,
}
