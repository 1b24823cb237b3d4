//! Real Chromium (Debian's package), headless: the DOM of a page after its scripts ran.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The Chromium binary: `chromium` on `PATH` or Debian's `/usr/bin/chromium` (`.ci/run`
/// installs it).
pub fn chromium_binary() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .chain([PathBuf::from("/usr/bin/chromium")])
        .find(|p| p.is_file())
        .context("chromium is not installed (apt-get install chromium; .ci/run does)")
}

/// Loads `url` in a fresh headless Chromium profile, lets its scripts run (up to 10 s of
/// virtual time), and returns the serialised DOM. Chromium resolves `*.localhost` to loopback
/// by itself. The flags keep it off the network beyond the page (no background services).
pub fn chromium_dom(url: &str) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let mut child = Command::new(chromium_binary()?)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromium")?;
    // Read while it runs: a DOM larger than the pipe's buffer would block it otherwise.
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut dom).map(|_| dom)
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait()? {
            let dom = reader.join().map_err(|_| anyhow::anyhow!("reading chromium's output panicked"))??;
            if !status.success() {
                bail!("chromium exited with {status} for {url}");
            }
            return Ok(dom);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("chromium did not finish loading {url} in 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
