//! A spawned `cloudbuild server` with its own data directory and port, and its REST readers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cloudbuild_proto::task::Task;
use tempfile::TempDir;

use crate::http::{get_json, request};
use crate::process::wait_child;

/// A `cloudbuild server` child process with its own data directory and port.
pub struct Server {
    child: Child,
    pub url: String,
    pub data: TempDir,
    /// A directory the server's builds may read and write (`[sandbox] shared`): where build
    /// scripts of tests leave pid files and wait for gates. Nothing else of the test's is in
    /// their view.
    pub probe: TempDir,
    pub bin: PathBuf,
    /// The API token [`Server::task`] (and so the waits) read tasks with, on a server that
    /// requires sign-in.
    pub token: Option<String>,
    env: Vec<(String, String)>,
    /// `--data-dir` when several servers share one (sites on a shared file system).
    data_dir: Option<PathBuf>,
    /// Whether to wait for a connected worker at start (the embedded one).
    expect_worker: bool,
}

/// How [`Server::start_with`] starts a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions<'a> {
    /// Appended to the config file.
    pub extra_toml: &'a str,
    pub env: &'a [(&'a str, &'a str)],
    /// Shared `--data-dir`; a private one when `None`.
    pub data_dir: Option<&'a Path>,
    /// Start without waiting for a worker (no embedded worker; remote ones join later).
    pub no_worker: bool,
}

impl Server {
    /// The URL of a site by host on this server's default sites domain (`localhost`):
    /// `http://<label>.<env>.localhost:<port>/`.
    pub fn site_url(&self, env: &str, label: &str) -> String {
        let port = self.url.rsplit(':').next().unwrap_or_default();
        format!("http://{label}.{env}.localhost:{port}/")
    }

    /// Starts the server binary at `bin` on a free loopback port. Local git (`file`, `http`) and
    /// loopback hosts are allowed, since fixtures live on this machine, unless `extra_toml` has
    /// its own `[git]` table; `extra_toml` is appended to the config file.
    pub fn start(bin: &Path, extra_toml: &str) -> Result<Server> {
        Server::start_with_env(bin, extra_toml, &[])
    }

    /// Like [`Server::start`], with extra environment variables for the server process.
    pub fn start_with_env(bin: &Path, extra_toml: &str, env: &[(&str, &str)]) -> Result<Server> {
        Server::start_with(bin, ServerOptions { extra_toml, env, ..Default::default() })
    }

    /// Starts a server with all the options.
    pub fn start_with(bin: &Path, opts: ServerOptions<'_>) -> Result<Server> {
        let (extra_toml, env) = (opts.extra_toml, opts.env);
        let data = tempfile::tempdir()?;
        let config = data.path().join("config.toml");
        let git = if extra_toml.contains("[git]") {
            ""
        } else {
            "[git]\nallowed_protocols = [\"https\", \"file\", \"http\"]\nallow_local_hosts = true\n"
        };
        let probe = tempfile::tempdir()?;
        // Writable by the sandbox's user (`nobody`), whoever runs the tests.
        std::fs::set_permissions(probe.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let sandbox = if extra_toml.contains("[sandbox]") {
            String::new()
        } else {
            format!("[sandbox]\nshared = [{:?}]\n", probe.path())
        };
        // `extra_toml` first: its top-level keys must precede any table.
        std::fs::write(&config, format!("{extra_toml}\n{git}{sandbox}"))?;
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let data_dir = opts.data_dir.map(Path::to_path_buf);
        let (child, url) = spawn(bin, data.path(), data_dir.as_deref(), &env)?;
        let expect_worker = !opts.no_worker;
        let server =
            Server { child, url, data, probe, bin: bin.to_path_buf(), token: None, env, data_dir, expect_worker };
        server.wait_for_worker()?;
        Ok(server)
    }

    /// Kills the server with SIGKILL (no clean shutdown: its embedded worker dies with it).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same data directory and configuration (a new port).
    pub fn restart(&mut self) -> Result<()> {
        let (child, url) = spawn(&self.bin, self.data.path(), self.data_dir.as_deref(), &self.env)?;
        self.child = child;
        self.url = url;
        self.wait_for_worker()
    }

    /// Starts it again on the same address, so workers configured with its URL reconnect.
    pub fn restart_same_port(&mut self) -> Result<()> {
        let listen = self.url.trim_start_matches("http://").to_owned();
        let (child, url) = spawn_on(&self.bin, &listen, self.data.path(), self.data_dir.as_deref(), &self.env)?;
        self.child = child;
        self.url = url;
        self.wait_for_worker()
    }

    /// Waits until the embedded worker is connected, so timing-sensitive tests start clean.
    fn wait_for_worker(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(v) = get_json(&format!("{}/healthz", self.url)) {
                if !self.expect_worker || v["workers"].as_u64().unwrap_or(0) > 0 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("no worker connected")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default()
    }

    /// The process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    /// Runs the CLI against this server from `cwd`.
    pub fn cli(&self, cwd: &Path, args: &[&str]) -> std::process::Output {
        self.cli_with(cwd, args, &[])
    }

    /// [`Server::cli`] with more environment variables (`TZ`, `CLOUDBUILD_TOKEN`).
    pub fn cli_with(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        Command::new(&self.bin)
            .envs(env.iter().copied())
            .args(args)
            .current_dir(cwd)
            .env("CLOUDBUILD_SERVER", &self.url)
            .env("NO_COLOR", "1")
            // The CLI's messages in English, whatever the machine's locale.
            .env("CLOUDBUILD_LANG", "en-US")
            .stdin(Stdio::null())
            .output()
            .expect("running the cli")
    }

    /// `POST /api/v1/tasks` with a JSON body; returns status and body.
    pub fn create(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        request("POST", &format!("{}/api/v1/tasks", self.url), Some(body))
    }

    /// A task by id.
    pub fn task(&self, id: i64) -> Task {
        let (status, task) =
            crate::http::request_as("GET", &format!("{}/api/v1/tasks/{id}", self.url), self.token.as_deref(), None);
        serde_json::from_value(task.clone()).unwrap_or_else(|e| panic!("task {id}: {status} {task}: {e}"))
    }

    /// Waits until the task reaches a terminal state (up to 120 s).
    pub fn wait_done(&self, id: i64) -> Task {
        self.wait_until(id, |t| t.state.is_terminal(), "a terminal state")
    }

    /// Waits until `pred` holds for the task (up to 120 s).
    pub fn wait_until(&self, id: i64, pred: impl Fn(&Task) -> bool, what: &str) -> Task {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let t = self.task(id);
            if pred(&t) {
                return t;
            }
            if Instant::now() > deadline {
                panic!("task {id} did not reach {what}: {t:?}\n--- server log ---\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// The raw SSE bytes of a task's log from `after`, without following.
    pub fn sse(&self, id: i64, after: u64) -> String {
        let url = format!("{}/api/v1/tasks/{id}/events?after={after}&follow=false", self.url);
        crate::http::reqwest::blocking_get_text(&url).expect("sse")
    }

    /// `(action, message)` of every stage event, in order.
    pub fn actions(&self, id: i64) -> Vec<(String, String)> {
        let v = get_json(&format!("{}/api/v1/tasks/{id}/events", self.url)).expect("events");
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["event"] == "build")
            .map(|e| {
                (
                    e["data"]["data"]["action"].as_str().unwrap_or_default().to_owned(),
                    e["data"]["data"]["payload"]["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// All output text of a task, concatenated.
    pub fn output(&self, id: i64) -> String {
        let v = get_json(&format!("{}/api/v1/tasks/{id}/events", self.url)).expect("events");
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["event"] == "building")
            .map(|e| e["data"]["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cloudbuild server` with the data and config under `dir`; returns it and its URL.
fn spawn(bin: &Path, dir: &Path, data_dir: Option<&Path>, env: &[(String, String)]) -> Result<(Child, String)> {
    spawn_on(bin, "127.0.0.1:0", dir, data_dir, env)
}

fn spawn_on(
    bin: &Path,
    listen: &str,
    dir: &Path,
    data_dir: Option<&Path>,
    env: &[(String, String)],
) -> Result<(Child, String)> {
    let mut child = Command::new(bin)
        .args(["server", "--listen", listen, "--data-dir"])
        .arg(data_dir.map(Path::to_path_buf).unwrap_or_else(|| dir.join("data")))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("CLOUDBUILD_LOG", "info,sqlx=warn")
        // Whether the log is coloured must follow from stderr not being a terminal alone.
        .env_remove("NO_COLOR")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the server")?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let log_path = dir.join("server.log");
    std::thread::spawn(move || {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).ok();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if !sent {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    let _ = tx.send(url);
                    sent = true;
                }
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).context("the server did not start")?;
    Ok((child, url))
}
