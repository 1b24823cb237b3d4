//! The cloudbuild worker: the worker-protocol client, the pipeline stages, git, process control
//! and upload.
//!
//! # Layout
//! - [`connection`]: connect, hello, assignments, heartbeats, reconnects.
//! - [`executor`]: the `Executor` trait and the `Reporter` a task reports through.
//! - [`pipeline`]: the real executor (git + npm).
//! - [`fake`]: a double that skips git and npm, for tests and benchmarks.
//! - [`process`]: one command as a process group, with timeout, cancel and streamed output.
//! - [`sandbox`]: bubblewrap and user-mode networking around every build command.
//! - [`settings`]: build settings from `cloudbuild.toml` and `package.json`.
//! - [`package_manager`]: npm, pnpm or yarn, from `packageManager` and the lockfile.
//! - [`cache`]: git mirrors, saved `node_modules` and build outputs, the trash.
//! - [`publish`]: output collection and upload to the server.
//! - [`site_check`]: root-absolute URLs in a site that will be served under a path.
//!
//! A worker talks to the server only over the network; it never touches the store.

mod build_env;
pub mod cache;
pub mod cancel;
pub mod checks;
pub mod connection;
pub mod executor;
pub mod fake;
pub mod package_manager;
pub mod pipeline;
pub mod process;
pub mod publish;
pub mod retry;
pub mod sandbox;
pub mod settings;
pub mod site_check;

pub use cache::CacheConfig;
pub use connection::{run, WorkerConfig, WorkerError};
pub use executor::{Executor, Reporter, TaskContext};
pub use fake::FakeExecutor;
pub use pipeline::Pipeline;
pub use sandbox::{Sandbox, SandboxConfig, SandboxMode};
