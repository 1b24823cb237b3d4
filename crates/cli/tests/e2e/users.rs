//! Users with the real binary: the first admin's setup on a fresh data directory, `login`,
//! `whoami` and `logout` with the kept 0600 token, wrong passwords refused and audited, the
//! first publish registering its project with the publisher as maintainer; and a revoked token
//! or a disabled user ending open SSE, WebSocket and socket.io streams within seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{hang_script, package_json, request_as, Repo, Server, ServerOptions};
use serde_json::{json, Value};

use crate::server;
use crate::socketio::{ensure_clients, node_dir};

const PASSWORD: &str = "correct horse battery";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs the CLI with its own config directory (where `login` keeps its token) and `stdin`.
fn cli(srv: &Server, config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(&srv.bin)
        .env("CLOUDBUILD_LANG", "en-US")
        .args(args)
        .env("CLOUDBUILD_SERVER", &srv.url)
        .env("CLOUDBUILD_CONFIG_DIR", config)
        .env_remove("CLOUDBUILD_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The setup token the server printed at its start.
fn setup_token(srv: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = srv.log();
        if let Some(rest) = log.split("--setup-token ").nth(1) {
            return rest.split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no setup token in the server's log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The token `login` kept for the server, read from the credentials file.
fn kept_token(srv: &Server, config: &Path) -> String {
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(config.join("credentials.json")).unwrap()).unwrap();
    creds["servers"][&srv.url]["token"].as_str().unwrap().to_owned()
}

fn api(srv: &Server, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    request_as(method, &format!("{}{path}", srv.url), Some(token), body.as_ref())
}

#[test]
fn the_first_admin_signs_up_with_the_setup_token_and_users_sign_in_and_out() {
    let mut srv = server("[auth]\nallow_anonymous = false\n");
    let setup = setup_token(&srv);
    assert!(!srv.log().contains("act as admin"), "anonymous mode is off and not announced");
    let (root_dir, alice_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (root, alice) = (root_dir.path(), alice_dir.path());
    let stdin = format!("{PASSWORD}\n");

    let wrong = cli(&srv, root, &["setup", "--setup-token", "nope", "--user", "root", "--password-stdin"], &stdin);
    assert!(!wrong.status.success() && text(&wrong).contains("wrong setup token"), "{}", text(&wrong));
    let args = ["setup", "--setup-token", &setup, "--user", "root", "--password-stdin"];
    let made = cli(&srv, root, &args, &stdin);
    assert!(made.status.success() && text(&made).contains("as root"), "{}", text(&made));
    let mode = std::fs::metadata(root.join("credentials.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the kept token is the user's alone");
    let who = cli(&srv, root, &["whoami"], "");
    assert!(text(&who).contains("root (user, admin, token login)"), "{}", text(&who));
    let again = cli(&srv, alice, &args, &stdin);
    assert!(!again.status.success() && text(&again).contains("setup token was used"), "{}", text(&again));

    let create = cli(&srv, root, &["users", "create", "alice", "--password-stdin"], &stdin);
    assert!(create.status.success(), "{}", text(&create));
    let bad = cli(&srv, alice, &["login", "--user", "alice", "--password-stdin"], "not her password\n");
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("wrong user name or password"), "{}", text(&bad));
    let nobody = cli(&srv, alice, &["login", "--user", "nobody", "--password-stdin"], &stdin);
    assert!(text(&nobody).contains("wrong user name or password"), "unknown users get the same answer");
    let login = cli(&srv, alice, &["login", "--user", "alice", "--password-stdin"], &stdin);
    assert!(login.status.success(), "{}", text(&login));
    let who = cli(&srv, alice, &["whoami", "--json"], "");
    let me: Value = serde_json::from_slice(&who.stdout).unwrap();
    assert_eq!(
        (me["name"].as_str(), me["kind"].as_str(), me["role"].as_str()),
        (Some("alice"), Some("user"), Some("user"))
    );
    assert!(me["token"].as_str().unwrap().starts_with("cli."), "{me}");

    // Her first publish registers the project with her as its maintainer; root sees it, a
    // stranger's list does not.
    let repo = Repo::site("alices-site", "<h1>alice</h1>");
    let token = kept_token(&srv, alice);
    srv.token = Some(token.clone());
    let (status, task) = api(&srv, "POST", "/api/v1/tasks", &token, Some(repo.task_body("alices-site")));
    assert_eq!(status, 201, "{task}");
    let show = cli(&srv, alice, &["projects", "show", "alices-site", "--json"], "");
    let project: Value = serde_json::from_slice(&show.stdout).unwrap_or(Value::Null);
    assert_eq!(project["members"], json!([{"user": "alice", "role": "maintainer"}]), "{}", text(&show));
    let members = cli(&srv, root, &["members", "list", "alices-site"], "");
    assert!(text(&members).contains("alice") && text(&members).contains("maintainer"), "{}", text(&members));

    // Failed sign-ins are audited with their address, never with the password tried.
    let audit = cli(&srv, root, &["audit", "--json"], "");
    let page: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let entries = page["entries"].as_array().unwrap();
    let logins: Vec<&Value> = entries.iter().filter(|e| e["action"] == "user.login").collect();
    let outcomes: Vec<&str> = logins.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.len(), 3, "{entries:?}");
    assert_eq!(outcomes.iter().filter(|o| o.starts_with("refused: wrong user name or password")).count(), 2);
    assert!(logins.iter().all(|e| e["address"] == "127.0.0.1"), "{logins:?}");
    let all = audit.stdout.clone();
    assert!(!String::from_utf8_lossy(&all).contains("not her password"), "no password in the audit log");
    assert!(!String::from_utf8_lossy(&all).contains(&token), "no token in the audit log");
    assert!(!srv.log().contains(&token) && !srv.log().contains(PASSWORD), "nor in the server's log");

    let out = cli(&srv, alice, &["logout"], "");
    assert!(out.status.success() && text(&out).contains("token revoked"), "{}", text(&out));
    let who = cli(&srv, alice, &["whoami"], "");
    assert!(!who.status.success() && text(&who).contains("sign in first"), "{}", text(&who));
    assert_eq!(api(&srv, "GET", "/api/v1/user", &token, None).0, 401, "the signed-out token is revoked");
    srv.token = Some(kept_token(&srv, root));
    srv.wait_done(task["id"].as_i64().unwrap());
    // Its site by path shares the server's origin with the dashboard's sessions: it runs
    // sandboxed (an opaque origin), and its files may be fetched from there.
    let url = format!("{}/sites/test/alices-site/", srv.url);
    let (status, csp, _) = cloudbuild_testkit::get_with_header(&url, "content-security-policy");
    assert_eq!(status, 200);
    let csp = csp.unwrap_or_default();
    assert!(csp.starts_with("sandbox allow-scripts") && !csp.contains("allow-same-origin"), "{csp}");
}

/// Reads an SSE stream with `token` until it ends; returns how many bytes came.
fn sse_until_end(url: String, token: String, started: std::sync::mpsc::Sender<()>) -> usize {
    let resp = reqwest_blocking(&url, &token);
    let mut reader = BufReader::new(resp);
    let (mut total, mut told) = (0, false);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        total += line.len();
        line.clear();
        if !told {
            let _ = started.send(());
            told = true;
        }
    }
    total
}

/// A blocking reader of a streamed GET (std only: the response body as `Read`).
fn reqwest_blocking(url: &str, token: &str) -> impl Read {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (url, token) = (url.to_owned(), token.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut resp = cloudbuild_testkit::client()
                .get(url)
                .bearer_auth(token)
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            while let Ok(Some(chunk)) = resp.chunk().await {
                if tx.send(chunk.to_vec()).is_err() {
                    break;
                }
            }
        });
    });
    ChannelReader { rx, buf: Vec::new() }
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.buf = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        Ok(n)
    }
}

/// Follows a task over WebSocket with `token` until the server closes; signals the first message.
fn ws_until_end(url: String, token: String, started: std::sync::mpsc::Sender<()>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut told = false;
        while let Some(Ok(_)) = ws.next().await {
            if !told {
                let _ = started.send(());
                told = true;
            }
        }
    });
}

#[test]
fn a_revoked_token_or_a_disabled_user_ends_open_streams_within_seconds() {
    ensure_clients();
    let mut srv = server("[auth]\nallow_anonymous = false\n");
    let setup = json!({"setup_token": setup_token(&srv), "user": "root", "password": PASSWORD});
    let (status, made) = request_as("POST", &format!("{}/api/v1/setup", srv.url), None, Some(&setup));
    assert_eq!(status, 201, "{made}");
    let root = made["secret"].as_str().unwrap().to_owned();
    srv.token = Some(root.clone());
    for name in ["bob", "carol"] {
        let (status, e) = api(&srv, "POST", "/api/v1/users", &root, Some(json!({"name": name, "password": PASSWORD})));
        assert_eq!(status, 201, "{e}");
    }
    let login = |user: &str| {
        let body = json!({"user": user, "password": PASSWORD, "token_name": "streams"});
        let (status, made) = request_as("POST", &format!("{}/api/v1/login", srv.url), None, Some(&body));
        assert_eq!(status, 201, "{made}");
        made["secret"].as_str().unwrap().to_owned()
    };
    let bob = login("bob");
    let pid_file = srv.probe.path().join("pid");
    let repo = Repo::new(&[
        ("package.json", &package_json("bobs-site", &[("build", "node hang.js")])),
        ("hang.js", &hang_script(pid_file.to_str().unwrap())),
    ]);
    let (status, task) = api(&srv, "POST", "/api/v1/tasks", &bob, Some(repo.task_body("bobs-site")));
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();
    srv.wait_until(id, |t| t.state == TaskState::Running, "running");

    // A stranger cannot follow it over any stream, nor publish under its name.
    let carol = login("carol");
    let hidden = format!("task {id} does not exist");
    let (status, e) = api(&srv, "GET", &format!("/api/v1/tasks/{id}/events?follow=false"), &carol, None);
    assert_eq!((status, e["message"].as_str()), (404, Some(hidden.as_str())));
    let ws = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/api/v1/tasks/{id}/events", srv.url.replace("http://", "ws://"));
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {carol}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.err().map(|e| e.to_string())
    });
    assert!(ws.as_deref().is_some_and(|e| e.contains("404")), "no WebSocket upgrade for a stranger: {ws:?}");
    let sio = |query: Value| {
        let out = Command::new("node")
            .arg("client.js")
            .args(["4", "websocket", &srv.url, &query.to_string(), &json!({"token": carol}).to_string()])
            .current_dir(node_dir())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let follow = sio(json!({"task": id.to_string()}));
    assert!(follow.contains(&hidden) && !follow.contains("\"build\""), "{follow}");
    let publish = sio(json!({"repo": repo.url, "name": "bobs-site", "version": "1.0.0", "branch": "main"}));
    assert!(publish.contains("project bobs-site does not exist"), "{publish}");

    // Bob follows it three ways; his token is revoked; every stream ends while the build runs.
    let (tx, started) = std::sync::mpsc::channel();
    let events = format!("{}/api/v1/tasks/{id}/events?after=0", srv.url);
    let sse = {
        let (url, token, tx) = (events.clone(), bob.clone(), tx.clone());
        std::thread::spawn(move || {
            sse_until_end(url, token, tx);
        })
    };
    let ws = {
        let (url, token, tx) = (events.replace("http://", "ws://"), bob.clone(), tx.clone());
        std::thread::spawn(move || ws_until_end(url, token, tx))
    };
    let mut sio = Command::new("node")
        .arg("client.js")
        .args([
            "4",
            "websocket",
            &srv.url,
            &json!({"task": id.to_string()}).to_string(),
            &json!({"token": bob}).to_string(),
        ])
        .current_dir(node_dir())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sio_out = sio.stdout.take().unwrap();
    let sio_lines = std::thread::spawn(move || {
        let (mut lines, mut told) = (Vec::new(), false);
        for line in BufReader::new(sio_out).lines().map_while(Result::ok) {
            if !told && line.contains("\"build\"") {
                let _ = tx.send(());
                told = true;
            }
            lines.push(line);
        }
        lines
    });
    for _ in 0..3 {
        if started.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = sio.kill();
            panic!("a follower received nothing; socket.io: {:?}\n{}", sio_lines.join().unwrap(), srv.log());
        }
    }
    let revoked = Instant::now();
    assert_eq!(api(&srv, "DELETE", "/api/v1/user/tokens/streams", &bob, None).0, 204);
    let (ended_tx, ended) = std::sync::mpsc::channel();
    for (what, follower) in [("SSE", sse), ("WebSocket", ws)] {
        let tx = ended_tx.clone();
        std::thread::spawn(move || {
            let _ = follower.join();
            let _ = tx.send(what);
        });
    }
    std::thread::spawn(move || {
        let _ = sio.wait();
        let _ = ended_tx.send("socket.io");
    });
    for _ in 0..3 {
        let what = ended.recv_timeout(Duration::from_secs(15)).expect("every stream ends after the revocation");
        let took = revoked.elapsed();
        assert!(took < Duration::from_secs(10), "the {what} stream ended {took:?} after the revocation");
    }
    let lines = sio_lines.join().unwrap();
    assert!(lines.last().is_some_and(|l| l.contains("disconnect")), "the server disconnected the client: {lines:?}");
    assert_eq!(srv.task(id).state, TaskState::Running, "the build goes on");

    // A disabled user's stream ends the same way.
    let bob = login("bob");
    let (tx, started) = std::sync::mpsc::channel();
    let sse = {
        let (url, token) = (events.clone(), bob.clone());
        std::thread::spawn(move || sse_until_end(url, token, tx))
    };
    started.recv_timeout(Duration::from_secs(20)).expect("the follower receives the log");
    let disabled = Instant::now();
    let (status, e) = api(&srv, "PATCH", "/api/v1/users/bob", &root, Some(json!({"disabled": true})));
    assert_eq!(status, 200, "{e}");
    let (tx, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(sse.join().is_ok()));
    assert_eq!(ended.recv_timeout(Duration::from_secs(15)), Ok(true), "the stream ends after the user is disabled");
    assert!(disabled.elapsed() < Duration::from_secs(10), "{:?}", disabled.elapsed());
    assert_eq!(api(&srv, "POST", &format!("/api/v1/tasks/{id}/cancel"), &root, None).0, 202);
    srv.wait_done(id);
}

#[test]
fn an_admin_made_on_the_servers_machine_signs_in_and_no_setup_token_is_offered() {
    let data = tempfile::tempdir().unwrap();
    let (config, data_dir) = (tempfile::tempdir().unwrap(), data.path().join("data"));
    let mut create = Command::new(crate::bin())
        .args(["admin", "create", "ops", "--password-stdin", "--data-dir"])
        .arg(&data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    create.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    let out = create.wait_with_output().unwrap();
    assert!(out.status.success() && text(&out).contains("created admin ops"), "{}", text(&out));
    let opts = ServerOptions {
        extra_toml: "[auth]\nallow_anonymous = false\n",
        data_dir: Some(&data_dir),
        ..Default::default()
    };
    let srv = Server::start_with(crate::bin(), opts).unwrap();
    assert!(!srv.log().contains("setup-token"), "an admin exists: no setup is offered\n{}", srv.log());
    let login = cli(&srv, config.path(), &["login", "--user", "ops", "--password-stdin"], &format!("{PASSWORD}\n"));
    assert!(login.status.success(), "{}", text(&login));
    let who = cli(&srv, config.path(), &["whoami"], "");
    assert!(text(&who).contains("ops (user, admin"), "{}", text(&who));
}
