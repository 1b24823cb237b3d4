//! Dev-only helpers for end-to-end tests: a spawned `cloudbuild server`, fixture git
//! repositories holding npm projects, and readers for the REST API and event streams.
//!
//! Everything runs on loopback with real git, real npm and the real binary; nothing is mocked.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cloudbuild_proto::task::Task;
use tempfile::TempDir;

/// A `cloudbuild server` child process with its own data directory and port.
pub struct Server {
    child: Child,
    pub url: String,
    pub data: TempDir,
    pub bin: PathBuf,
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
        // `extra_toml` first: its top-level keys must precede any table.
        std::fs::write(&config, format!("{extra_toml}\n{git}"))?;
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let data_dir = opts.data_dir.map(Path::to_path_buf);
        let (child, url) = spawn(bin, data.path(), data_dir.as_deref(), &env)?;
        let expect_worker = !opts.no_worker;
        let server = Server { child, url, data, bin: bin.to_path_buf(), env, data_dir, expect_worker };
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
        Command::new(&self.bin)
            .args(args)
            .current_dir(cwd)
            .env("CLOUDBUILD_SERVER", &self.url)
            .env("NO_COLOR", "1")
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
        serde_json::from_value(get_json(&format!("{}/api/v1/tasks/{id}", self.url)).expect("get task"))
            .expect("task json")
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
        reqwest::blocking_get_text(&url).expect("sse")
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

/// Tiny blocking HTTP helpers over reqwest's async client (tests call them from sync code).
mod reqwest {
    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    pub(crate) fn blocking_get_text(url: &str) -> anyhow::Result<String> {
        runtime().block_on(async { Ok(::reqwest::get(url).await?.text().await?) })
    }
}

/// GET a URL and parse JSON (sending `Accept: application/json`).
pub fn get_json(url: &str) -> Result<serde_json::Value> {
    reqwest::runtime().block_on(async {
        let resp = ::reqwest::Client::new().get(url).header("accept", "application/json").send().await?;
        Ok(resp.json().await?)
    })
}

/// Any request with an optional JSON body; returns status and parsed body (Null if not JSON).
pub fn request(method: &str, url: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
    reqwest::runtime().block_on(async {
        let client = ::reqwest::Client::new();
        let mut req = client.request(method.parse().expect("method"), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    })
}

/// GET a URL; returns status, the value of one header, and the body text.
pub fn get_with_header(url: &str, header: &str) -> (u16, Option<String>, String) {
    reqwest::runtime().block_on(async {
        let resp = ::reqwest::get(url).await.expect("get");
        let value = resp.headers().get(header).and_then(|v| v.to_str().ok()).map(str::to_owned);
        (resp.status().as_u16(), value, resp.text().await.unwrap_or_default())
    })
}

/// GET a URL; returns status and body text.
pub fn get_text(url: &str) -> (u16, String) {
    reqwest::runtime().block_on(async {
        let resp = ::reqwest::get(url).await.expect("get");
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    })
}

/// A bare git repository (the "origin") and a clone of it holding a project.
pub struct Repo {
    pub dir: TempDir,
    /// `file://` URL of the bare repository.
    pub url: String,
    /// The working checkout, whose `origin` is `url`.
    pub work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.email=test@example.com", "-c", "user.name=test", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Repo {
    /// Creates the origin and a checkout with `files` committed on `main` and pushed.
    pub fn new(files: &[(&str, &str)]) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("origin.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&bare).expect("mkdir");
        git(&bare, &["init", "--bare", "-q"]);
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q"]);
        let url = format!("file://{}", bare.display());
        git(&work, &["remote", "add", "origin", &url]);
        let repo = Repo { dir, url, work };
        repo.commit(files, "initial");
        repo
    }

    /// Writes files, commits and pushes to `origin main`.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) {
        for (path, content) in files {
            let p = self.work.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&p, content).expect("write");
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "-u", "origin", "HEAD:main"]);
    }

    /// Sets `version` in the checkout's package.json, commits and pushes: a release's version is
    /// the built commit's.
    pub fn set_version(&self, version: &str) {
        let path = self.work.join("package.json");
        let mut pkg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("package.json")).expect("package.json is JSON");
        pkg["version"] = serde_json::Value::String(version.to_owned());
        self.commit(&[("package.json", &pkg.to_string())], &format!("version {version}"));
    }

    /// The checkout's HEAD commit.
    pub fn head(&self) -> String {
        let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&self.work).output().expect("git");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A `POST /api/v1/tasks` body for this repo.
    pub fn task_body(&self, name: &str) -> serde_json::Value {
        serde_json::json!({ "repo": self.url, "branch": "main", "name": name, "version": "1.0.0" })
    }
}

/// `package.json` with the given scripts (no dependencies, so `npm install` is offline and fast).
pub fn package_json(name: &str, scripts: &[(&str, &str)]) -> String {
    let scripts: serde_json::Map<String, serde_json::Value> =
        scripts.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
    serde_json::json!({ "name": name, "version": "1.0.0", "private": true, "scripts": scripts }).to_string()
}

/// A node script that writes `dist/index.html` with `body`.
pub fn build_script(body: &str) -> String {
    format!(
        "const fs=require('fs');fs.mkdirSync('dist/assets',{{recursive:true}});\
         fs.writeFileSync('dist/index.html',{body:?});fs.writeFileSync('dist/assets/app.js','console.log(1)');\
         console.log('built');"
    )
}

/// A node script that records its pid in `file` and then hangs.
pub fn hang_script(file: &str) -> String {
    format!("require('fs').writeFileSync({file:?}, String(process.pid)); console.log('hanging'); setInterval(()=>{{}}, 1000);")
}

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
        let status = Command::new("cargo")
            .args(["install", "s3s-fs@0.14.1", "--features", "binary", "--locked", "--root"])
            .arg(&tools)
            .status()
            .context("running cargo install s3s-fs")?;
        if !status.success() {
            bail!("cargo install s3s-fs@0.14.1 failed");
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

/// A `redis-server` of its own on a free loopback port, with AOF on (`appendfsync always`) in
/// a temporary directory, so tests can kill it with SIGKILL and restart it without losing
/// acknowledged writes. `.ci/run` installs `redis-server` (Debian package) when missing.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: TempDir,
}

impl RedisServer {
    /// Starts a fresh, empty server.
    pub fn start() -> Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = RedisServer { child: None, port, dir };
        server.restart()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id (to pause it with SIGSTOP), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory (it replays its append-only file).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt install redis-server)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Ready once it answers PING (it refuses commands while loading the AOF).
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 64];
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG")) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not start on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

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
            .args(["worker", "--server", server, "--token", token, "--name", name, "--work-dir"])
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

/// Waits for a child process to exit, up to `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A TCP proxy on a free loopback port that forwards to `target` and can cut every connection
/// it carries at once (a network drop), while still accepting new ones.
pub struct TcpProxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl TcpProxy {
    /// Starts forwarding to `target` (`host:port`).
    pub fn start(target: &str) -> Result<TcpProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
        let (target, conns) = (target.to_owned(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let pipes = (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone());
                let (Ok(mut c_read), Ok(mut s_write), Ok(mut c_write), Ok(mut s_read)) = pipes else { continue };
                conns.lock().unwrap_or_else(|p| p.into_inner()).extend([client, server]);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Ok(TcpProxy { port, open })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection carried so far, both ways.
    pub fn drop_connections(&self) {
        for s in self.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}
