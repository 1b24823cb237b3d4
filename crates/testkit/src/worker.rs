//! A spawned `cloudbuild worker`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::http::get_json;
use crate::process::wait_child;

/// A `cloudbuild worker` child process with its own work directory and log.
pub struct Worker {
    child: Child,
    pub name: String,
    /// Holds the work and log directory when this worker made it.
    _dir: Option<TempDir>,
    dir: PathBuf,
    log: PathBuf,
}

impl Worker {
    /// Starts `cloudbuild worker` against `server` with `token`; `extra` args are appended
    /// (e.g. `--slots 2`, `--labels gpu`).
    pub fn start(bin: &Path, server: &str, token: &str, name: &str, extra: &[&str]) -> Result<Worker> {
        let tmp = tempfile::tempdir()?;
        let mut w = Worker::start_in(bin, server, token, name, extra, tmp.path())?;
        w._dir = Some(tmp);
        Ok(w)
    }

    /// Like [`Worker::start`] in a given directory (a restart of the same machine's worker).
    pub fn start_in(bin: &Path, server: &str, token: &str, name: &str, extra: &[&str], dir: &Path) -> Result<Worker> {
        let log = dir.join(format!(
            "worker-{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        let child = Command::new(bin)
            .args(["worker", "--server", server, "--worker-token", token, "--name", name, "--work-dir"])
            .arg(dir.join("work"))
            .args(extra)
            .env("CLOUDBUILD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning a worker")?;
        Ok(Worker { child, name: name.to_owned(), _dir: None, dir: dir.to_path_buf(), log })
    }

    /// The directory holding its work directory and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the worker with SIGKILL (its build processes stay behind, like a crashed machine).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    /// The process id (to signal it, e.g. SIGSTOP for a network cut).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `server` lists `n` connected workers (`GET /api/v1/workers`).
pub fn wait_workers(server_url: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get_json(&format!("{server_url}/api/v1/workers"))?;
        let connected = v["workers"].as_array().into_iter().flatten().filter(|w| w["state"] == "connected").count();
        if connected >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{connected} of {n} workers connected: {v}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
