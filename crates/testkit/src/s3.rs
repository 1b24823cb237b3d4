//! A real S3 protocol server (`s3s-fs`) for the object-storage tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// A real S3 protocol server (`s3s-fs`) over a temporary directory, on a free loopback port.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub root: TempDir,
    pub access_key: String,
    pub secret_key: String,
}

/// The `s3s-fs` binary: on `PATH`, in `~/.cargo/bin`, or in `target/tools/bin`, where it is
/// installed with cargo on first use (`.ci/run` installs it there beforehand).
pub fn s3s_fs_binary() -> Result<PathBuf> {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools");
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("s3s-fs")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/s3s-fs"));
    }
    candidates.push(tools.join("bin/s3s-fs"));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let bin = tools.join("bin/s3s-fs");
    if !bin.is_file() {
        // One line, not hundreds of `Compiling …`: cargo's output is shown only if it fails.
        // Written to stderr directly: the test harness captures `eprintln!` of passing tests.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!(
                "installing s3s-fs 0.14.1 into {} (cargo install, once; about two minutes)\n",
                tools.display()
            ),
        );
        let out = Command::new("cargo")
            .args(["install", "--quiet", "s3s-fs@0.14.1", "--features", "binary", "--locked", "--root"])
            .arg(&tools)
            .output()
            .context("running cargo install s3s-fs")?;
        if !out.status.success() {
            bail!("cargo install s3s-fs@0.14.1 failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(bin)
}

impl S3Server {
    /// Starts `s3s-fs` with one bucket.
    pub fn start(bucket: &str) -> Result<S3Server> {
        let bin = s3s_fs_binary()?;
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join(bucket))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let (access_key, secret_key) =
            ("cloudbuild-test-key".to_string(), "cloudbuild-test-secret-0123456789".to_string());
        let child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                &access_key,
                "--secret-key",
                &secret_key,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting s3s-fs")?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("s3s-fs did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(S3Server { child, endpoint, root, access_key, secret_key })
    }

    /// Stops the server (to make uploads fail).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
