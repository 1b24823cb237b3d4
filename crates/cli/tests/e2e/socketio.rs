//! The original socket.io clients (socket.io-client 2.5.0 over websocket and polling, 4.8 over
//! websocket, and a client written like the original CLI) build and publish unchanged.
//!
//! The clients are real, installed from npm into `tests/node` (by `.ci/run`, or here on first use).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{build_script, get_json, get_text, package_json, signal, Repo, Server, TcpProxy};
use serde_json::{json, Value};

use crate::server;

pub(crate) fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// Installs the test clients (socket.io 2.x and 4.x, playwright-core) once per test run if
/// `.ci/run` has not.
pub(crate) fn ensure_clients() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let installed = ["socket.io-client-v4", "socket.io-client-v2", "playwright-core"];
        if installed.iter().all(|m| node_dir().join("node_modules").join(m).is_dir()) {
            return;
        }
        // Written to stderr directly: the test harness captures `eprintln!` of passing tests.
        let line = format!("installing the test clients (npm ci in {}, once)\n", node_dir().display());
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(node_dir())
            .output()
            .expect("running npm");
        assert!(out.status.success(), "npm ci in tests/node failed: {}", String::from_utf8_lossy(&out.stderr));
    });
}

/// Runs `node client.js` and returns its JSON lines.
pub(crate) fn run_client(
    srv: &Server,
    major: &str,
    transport: &str,
    query: &Value,
    auth: Option<&Value>,
    extra: &[&str],
) -> Vec<Value> {
    ensure_clients();
    let mut cmd = Command::new("node");
    cmd.arg("client.js").args([major, transport, &srv.url, &query.to_string()]);
    cmd.arg(auth.map(Value::to_string).unwrap_or_default()).args(extra).current_dir(node_dir());
    let out = cmd.output().expect("running node");
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(out.status.success(), "client failed: {lines:?}\n{}", String::from_utf8_lossy(&out.stderr));
    lines
}

pub(crate) fn query_for(repo: &Repo, name: &str) -> Value {
    json!({ "repo": repo.url, "name": name, "version": "1.0.0", "branch": "main", "buildCmd": "npm run build", "prod": "false" })
}

/// `(action, message)` of the `build` events a client received.
fn build_actions(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l["event"] == "build")
        .map(|l| {
            (
                l["data"]["data"]["action"].as_str().unwrap_or_default().to_owned(),
                l["data"]["data"]["payload"]["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn v2_and_v4_clients_build_publish_and_fail_like_the_original() {
    let srv = server(crate::EVERY_BUILD_RUNS);
    let ok = Repo::site("sio-ok", "<h1>socket.io</h1>");
    let bad = Repo::new(&[(
        "package.json",
        &package_json("sio-bad", &[("build", "node -e \"console.log('boom');process.exit(1)\"")]),
    )]);
    for (major, transport) in [("2", "websocket"), ("2", "polling"), ("4", "websocket"), ("4", "polling")] {
        let what = format!("socket.io-client {major} over {transport}");
        let lines = run_client(&srv, major, transport, &query_for(&ok, "sio-ok"), None, &[]);
        // The greeting arrives on the socket-id event, after the connection is established.
        assert_eq!(lines[0]["type"], "connect", "{what}: {lines:?}");
        assert_eq!(lines[1]["event"], "id", "{what}: {lines:?}");
        assert_eq!(lines[1]["data"]["data"]["action"], "connect");
        assert_eq!(lines[1]["data"]["data"]["payload"]["type"], "connect");
        assert!(lines[1]["data"]["meta"]["timestamp"].is_number());
        let actions = build_actions(&lines);
        assert_eq!(
            actions.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(),
            crate::socketio_success_actions(),
            "{what}"
        );
        let id: i64 = actions[0].1.split_whitespace().nth(1).unwrap().parse().expect("create task names the task id");
        let url = actions.last().unwrap().1.trim_start_matches("published: ").to_owned();
        assert_eq!(get_text(&url).1, "<h1>socket.io</h1>", "{what}: the site serves the build");
        let output: String = lines
            .iter()
            .filter(|l| l["event"] == "building")
            .map(|l| l["data"].as_str().expect("building carries plain strings"))
            .collect();
        assert!(output.contains("built"), "{what}: {output}");
        assert_eq!(lines.last().unwrap()["type"], "disconnect", "{what}: the server disconnects at the end");
        let t = srv.task(id);
        assert_eq!((t.state, t.trigger), (TaskState::Succeeded, cloudbuild_proto::task::Trigger::SocketIo));
        // Audited like any publish, with the client's address.
        let audit = get_json(&format!("{}/api/v1/audit?action=task.create&limit=1", srv.url)).unwrap();
        let entry = &audit["entries"][0];
        assert_eq!(
            (entry["target"].as_str(), entry["address"].as_str()),
            (Some(format!("task {id}").as_str()), Some("127.0.0.1")),
            "{what}: {audit}"
        );

        let lines = run_client(&srv, major, transport, &query_for(&bad, "sio-bad"), None, &[]);
        let actions: Vec<String> = build_actions(&lines).into_iter().map(|a| a.0).collect();
        assert_eq!(actions.last().map(String::as_str), Some("build failed"), "{what}: {actions:?}");
        assert!(!actions.iter().any(|a| a == "pre-publish"), "{what}: the pipeline stops at the failure");
        assert_eq!(lines.last().unwrap()["type"], "disconnect");
    }
}

#[test]
fn an_invalid_query_is_denied_and_creates_no_task() {
    let srv = server(crate::EVERY_BUILD_RUNS);
    let repo = Repo::new(&[("package.json", &package_json("sio-deny", &[("build", "node -e 0")]))]);
    let cases = [
        ("2", "branch", "--upload-pack=x", "invalid branch"),
        ("4", "name", "../x", "invalid name"),
        ("2", "buildCmd", "npm;id", "invalid build command"),
        ("4", "prod", "maybe", "`prod` must be"),
    ];
    for (major, field, value, reason) in cases {
        let mut q = query_for(&repo, "sio-deny");
        q[field] = value.into();
        let lines = run_client(&srv, major, "websocket", &q, None, &[]);
        let deny = lines.iter().find(|l| l["event"] == "id").unwrap_or_else(|| panic!("{major} {field}: {lines:?}"));
        assert_eq!(deny["data"]["data"]["action"], "deny");
        let message = deny["data"]["data"]["payload"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{field}={value}: {message}");
        assert_eq!(lines.last().unwrap()["type"], "disconnect");
    }
    let mut q = query_for(&repo, "sio-deny");
    q.as_object_mut().unwrap().remove("repo");
    let lines = run_client(&srv, "4", "websocket", &q, None, &[]);
    assert!(
        lines.iter().any(|l| l["data"]["data"]["payload"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`repo` is required"))),
        "{lines:?}"
    );
    let tasks = get_json(&format!("{}/api/v1/tasks", srv.url)).unwrap();
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "no task was created");
}

#[test]
fn tokens_are_required_when_anonymous_is_off() {
    let token = "sio-test-token-0123456789";
    let srv =
        server(&format!("[auth]\nallow_anonymous = false\n[[auth.tokens]]\nname = \"ci-bot\"\ntoken = \"{token}\"\n"));
    let repo = Repo::site("sio-auth", "auth");
    // 4.x: refused in the handshake with connect_error and the reason.
    let lines = run_client(&srv, "4", "websocket", &query_for(&repo, "sio-auth"), None, &[]);
    assert_eq!(lines[0]["type"], "connect_error", "{lines:?}");
    assert!(lines[0]["message"].as_str().unwrap().contains("token"), "{lines:?}");
    let lines = run_client(
        &srv,
        "4",
        "websocket",
        &query_for(&repo, "sio-auth"),
        Some(&json!({ "token": "wrong-token-0123456789" })),
        &[],
    );
    assert_eq!(lines[0]["type"], "connect_error");
    // 2.x: denied after connecting, since 2.x clients cannot receive a handshake refusal.
    let lines = run_client(&srv, "2", "websocket", &query_for(&repo, "sio-auth"), None, &[]);
    assert_eq!(lines[1]["data"]["data"]["action"], "deny", "{lines:?}");
    // With the token (auth payload for 4.x, query for 2.x) the build runs and records who asked.
    let lines =
        run_client(&srv, "4", "websocket", &query_for(&repo, "sio-auth"), Some(&json!({ "token": token })), &[]);
    assert_eq!(build_actions(&lines).last().unwrap().0, "build success", "{lines:?}");
    let mut q = query_for(&repo, "sio-auth");
    q["token"] = token.into();
    let lines = run_client(&srv, "2", "polling", &q, None, &[]);
    assert_eq!(build_actions(&lines).last().unwrap().0, "build success", "{lines:?}");
    // The REST API and the CLI follow the same rule.
    let (status, body) = srv.create(&repo.task_body("sio-auth"));
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let out = srv.cli(&repo.work, &["tasks", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let out = srv.cli(&repo.work, &["tasks", "--json", "--token", token]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(page["tasks"].as_array().unwrap().iter().all(|t| t["requested_by"] == "ci-bot"), "{page}");
}

#[test]
fn a_client_that_leaves_mid_build_does_not_stop_it() {
    let srv = server(crate::EVERY_BUILD_RUNS);
    let slow = "setTimeout(()=>{require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/index.html','stayed')},1500)";
    let repo =
        Repo::new(&[("package.json", &package_json("sio-leave", &[("build", "node slow.js")])), ("slow.js", slow)]);
    let lines =
        run_client(&srv, "4", "websocket", &query_for(&repo, "sio-leave"), None, &["--leave-after-actions", "9"]);
    assert!(lines.iter().any(|l| l["type"] == "left"), "{lines:?}");
    let id: i64 = build_actions(&lines)[0].1.split_whitespace().nth(1).unwrap().parse().unwrap();
    let t = srv.wait_done(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    assert_eq!(get_text(&t.url.unwrap()).1, "stayed");
    // Still followable from the start.
    let out = srv.cli(&repo.work, &["logs", &id.to_string()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("build success"));
}

#[test]
fn checks_are_reported_under_build_actions_and_options_are_noted() {
    let srv = server(crate::EVERY_BUILD_RUNS);
    let repo = Repo::new(&[
        ("package.json", &package_json("sio-check", &[("build", "node build.js"), ("lint", "node -e 0")])),
        ("build.js", &build_script("checked")),
        ("cloudbuild.toml", "[[checks]]\nname = \"lint\"\ncommand = \"npm run lint\"\n"),
    ]);
    let mut q = query_for(&repo, "sio-check");
    q["keepCache"] = "true".into();
    q["cnpm"] = "true".into();
    q["timeout"] = "1200".into();
    let lines = run_client(&srv, "2", "websocket", &q, None, &[]);
    let actions = build_actions(&lines);
    assert!(!actions.iter().any(|a| a.0 == "check"), "original clients know no check action: {actions:?}");
    assert!(actions.iter().any(|a| a.0 == "build" && a.1.starts_with("check:") && a.1.contains("lint")), "{actions:?}");
    assert_eq!(actions.last().unwrap().0, "build success");
    let output: String =
        lines.iter().filter(|l| l["event"] == "building").map(|l| l["data"].as_str().unwrap_or_default()).collect();
    for option in ["keepCache is ignored", "cnpm is ignored", "timeout=1200"] {
        assert!(output.contains(option), "missing note `{option}`: {output}");
    }
}

#[test]
fn a_client_written_like_the_original_cli_works() {
    let srv = server(crate::EVERY_BUILD_RUNS);
    ensure_clients();
    let ok = Repo::site("orig-ok", "<p>original</p>");
    let bad = Repo::new(&[("package.json", &package_json("orig-bad", &[("build", "node -e \"process.exit(2)\"")]))]);
    let run = |repo: &Repo, name: &str| {
        let out = Command::new("node")
            .args(["original-cli.js", &srv.url, &query_for(repo, name).to_string()])
            .current_dir(node_dir())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(&ok, "orig-ok");
    assert!(out.contains("MSG connect"), "{out}");
    assert!(out.contains("ACTION build success published: "), "{out}");
    assert!(out.trim_end().ends_with("RESULT true"), "{out}");
    let out = run(&bad, "orig-bad");
    assert!(out.contains("FAILED build failed"), "{out}");
    assert!(out.trim_end().ends_with("RESULT false"), "{out}");

    // The original CLI's HTTP calls, answered from the releases.
    let found = get_json(&format!("{}/project/oss?name=orig-ok&type=dev", srv.url)).unwrap();
    assert_eq!(found["code"], 0, "{found}");
    let names: Vec<&str> = found["data"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"orig-ok/index.html"), "{names:?}");
    assert_eq!(get_json(&format!("{}/project/oss?name=orig-ok&type=prod", srv.url)).unwrap()["code"], -1);
    assert_eq!(get_json(&format!("{}/project/oss?name=nope&type=dev", srv.url)).unwrap()["code"], -1);
    let file = get_json(&format!("{}/oss/get?name=orig-ok&type=dev&file=index.html", srv.url)).unwrap();
    assert_eq!(file["code"], 0, "{file}");
    assert_eq!(get_text(file["data"]["url"].as_str().unwrap()).1, "<p>original</p>");
    assert_eq!(get_json(&format!("{}/oss/get?name=orig-ok&type=dev&file=../x", srv.url)).unwrap()["code"], -1);
}

fn building_bytes(lines: &[Value]) -> usize {
    lines.iter().filter(|l| l["event"] == "building").map(|l| l["data"].as_str().unwrap_or_default().len()).sum()
}

#[test]
fn polling_clients_get_a_whole_burst_of_output_and_the_end() {
    let srv = server(crate::EVERY_BUILD_RUNS);
    // 3 MB in one burst: 30,000 lines of 100 bytes.
    let burst = "const l='x'.repeat(99)+'\\n';let s='';for(let i=0;i<30000;i++)s+=l;process.stdout.write(s,()=>{\
                 require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/index.html','burst');});";
    let repo =
        Repo::new(&[("package.json", &package_json("sio-burst", &[("build", "node build.js")])), ("build.js", burst)]);
    for major in ["2", "4"] {
        let lines = run_client(&srv, major, "polling", &query_for(&repo, "sio-burst"), None, &[]);
        let actions: Vec<String> = build_actions(&lines).into_iter().map(|a| a.0).collect();
        assert_eq!(actions.last().map(String::as_str), Some("build success"), "{major}: {actions:?}");
        assert_eq!(lines.last().unwrap()["type"], "disconnect", "{major}: disconnected at the end");
        let output: String =
            lines.iter().filter(|l| l["event"] == "building").map(|l| l["data"].as_str().unwrap()).collect();
        assert_eq!(output.matches(&"x".repeat(99)).count(), 30_000, "{major}: every line arrives");
        assert!(building_bytes(&lines) >= 3_000_000, "{major}");
    }
}

#[test]
fn a_client_that_comes_back_is_attached_to_its_build_and_gets_the_backlog() {
    // A backlog larger than the socket's buffer even after coalescing (12 MB / 64 KiB > 128).
    let srv = server(&format!("{}[limits]\noutput_bytes = 16777216\n", crate::EVERY_BUILD_RUNS));
    let (burst_gate, end_gate) = (srv.probe.path().join("burst"), srv.probe.path().join("end"));
    // Waits; prints 12 MB (120,000 lines of 100 bytes) and a marker; waits again; publishes.
    let build = format!(
        "const fs=require('fs');const wait=(f)=>{{while(!fs.existsSync(f)){{Atomics.wait(new Int32Array(new SharedArrayBuffer(4)),0,0,20);}}}};\
         wait({b:?});const l='x'.repeat(99)+'\\n';let s='';for(let i=0;i<120000;i++)s+=l;\
         process.stdout.write(s+'burst-end\\n',()=>{{wait({e:?});console.log('after the gate');\
         fs.mkdirSync('dist');fs.writeFileSync('dist/index.html','back');}});",
        b = burst_gate.to_str().unwrap(),
        e = end_gate.to_str().unwrap()
    );
    let repo =
        Repo::new(&[("package.json", &package_json("sio-back", &[("build", "node build.js")])), ("build.js", &build)]);
    for major in ["2", "4"] {
        let _ = std::fs::remove_file(&burst_gate);
        let _ = std::fs::remove_file(&end_gate);
        // The first connection leaves once the build stage started (the build then waits).
        let first =
            run_client(&srv, major, "polling", &query_for(&repo, "sio-back"), None, &["--leave-after-actions", "9"]);
        let seen: Vec<String> = build_actions(&first).into_iter().map(|a| a.0).collect();
        assert_eq!(seen, crate::socketio_success_actions()[..9], "{major}: {first:?}");
        let id: i64 = build_actions(&first)[0].1.split_whitespace().nth(1).unwrap().parse().unwrap();
        // While nobody follows, the build prints its burst: a backlog of ~750 output events.
        std::fs::write(&burst_gate, "").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !srv.output(id).contains("burst-end") {
            assert!(std::time::Instant::now() < deadline, "{major}: the burst was not stored");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // The same query again: no greeting, no second build, the rest of the log, backlog first.
        let attached_before = srv.log().matches("re-attached to its build").count();
        let second = LiveClient::start(&srv.url, major, &query_for(&repo, "sio-back"), &[]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while srv.log().matches("re-attached to its build").count() == attached_before {
            assert!(std::time::Instant::now() < deadline, "{major}: the client was not attached\n{}", srv.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(&end_gate, "").unwrap();
        let second = second.finish();
        assert!(!second.iter().any(|l| l["event"] == "id"), "{major}: no new greeting");
        let rest: Vec<String> = build_actions(&second).into_iter().map(|a| a.0).collect();
        let whole: Vec<String> = seen.iter().chain(&rest).cloned().collect();
        assert_eq!(whole, crate::socketio_success_actions(), "{major}");
        let output: String =
            second.iter().filter(|l| l["event"] == "building").map(|l| l["data"].as_str().unwrap()).collect();
        assert_eq!(output.matches(&"x".repeat(99)).count(), 120_000, "{major}: the whole backlog arrives");
        assert!(output.contains("burst-end\n") && output.contains("after the gate"), "{major}");
        assert_eq!(second.last().unwrap()["type"], "disconnect");
        let tasks = get_json(&format!("{}/api/v1/tasks?name=sio-back", srv.url)).unwrap();
        assert_eq!(
            tasks["tasks"].as_array().unwrap().len(),
            if major == "2" { 1 } else { 2 },
            "one build per client run"
        );
    }
}

/// A client whose lines are read while it runs.
struct LiveClient {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl LiveClient {
    fn start(url: &str, major: &str, query: &Value, extra: &[&str]) -> LiveClient {
        ensure_clients();
        let mut child = Command::new("node")
            .arg("client.js")
            .args([major, "polling", url, &query.to_string(), ""])
            .args(extra)
            .current_dir(node_dir())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("running node");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        LiveClient { child, lines, seen: Vec::new() }
    }

    /// Reads lines until `done` holds for what was seen (panics after 60 s).
    fn until(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => panic!("{what}: not seen in time: {:?}", self.seen),
            }
        }
    }

    /// Waits for the client to exit; everything it printed.
    fn finish(mut self) -> Vec<Value> {
        let status = self.child.wait().expect("node");
        self.seen.extend(self.lines.iter());
        let tail: Vec<String> =
            self.seen.iter().rev().take(6).map(|v| v.to_string().chars().take(200).collect()).collect();
        assert!(status.success(), "client failed ({} lines), last: {tail:?}", self.seen.len());
        self.seen
    }
}

#[test]
fn a_client_cut_off_mid_build_reconnects_and_gets_the_rest_of_the_log() {
    let srv = server(crate::EVERY_BUILD_RUNS);
    let proxy = TcpProxy::start(srv.url.trim_start_matches("http://")).unwrap();
    let gate = srv.probe.path().join("gate");
    let build = format!(
        "const fs=require('fs');while(!fs.existsSync({g:?})){{Atomics.wait(new Int32Array(new SharedArrayBuffer(4)),0,0,20);}}\
         console.log('after the cut');fs.mkdirSync('dist');fs.writeFileSync('dist/index.html','cut');",
        g = gate.to_str().unwrap()
    );
    let repo =
        Repo::new(&[("package.json", &package_json("sio-cut", &[("build", "node build.js")])), ("build.js", &build)]);
    for major in ["2", "4"] {
        let _ = std::fs::remove_file(&gate);
        let mut client = LiveClient::start(&proxy.url(), major, &query_for(&repo, "sio-cut"), &["--reconnect"]);
        // Everything up to the start of the (waiting) build has arrived: nothing is in flight.
        client.until("the build stage", |seen| build_actions(seen).len() == 8);
        let attached_before = srv.log().matches("re-attached to its build").count();
        // A polling client has no connection open between a response and its next request: cut
        // until it notices (its pending poll fails), then let it reconnect.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !client.seen.iter().any(|l| l["type"] == "disconnect") {
            assert!(std::time::Instant::now() < deadline, "{major}: the cut went unnoticed: {:?}", client.seen);
            proxy.drop_connections();
            client.seen.extend(client.lines.recv_timeout(std::time::Duration::from_millis(50)));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while srv.log().matches("re-attached to its build").count() == attached_before {
            client.seen.extend(client.lines.try_iter());
            assert!(
                std::time::Instant::now() < deadline,
                "{major}: the client did not come back: {:?}\n{}",
                client.seen.iter().filter(|l| l["event"] != "build").collect::<Vec<_>>(),
                srv.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(&gate, "").unwrap();
        let lines = client.finish();
        let actions: Vec<String> = build_actions(&lines).into_iter().map(|a| a.0).collect();
        assert_eq!(
            actions,
            crate::socketio_success_actions(),
            "{major}: the whole log once, no gap, no repeat: {lines:?}"
        );
        assert_eq!(lines.iter().filter(|l| l["event"] == "id").count(), 1, "{major}: one greeting");
        assert!(lines.iter().filter(|l| l["type"] == "connect").count() >= 2, "{major}: it reconnected: {lines:?}");
        let output: String =
            lines.iter().filter(|l| l["event"] == "building").map(|l| l["data"].as_str().unwrap()).collect();
        assert!(output.contains("after the cut"), "{major}: {output}");
        assert_eq!(lines.last().unwrap()["reason"], "io server disconnect", "{major}: ended by the server");
    }
    let tasks = get_json(&format!("{}/api/v1/tasks?name=sio-cut", srv.url)).unwrap();
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 2, "one build per client, none added by the reconnects");
}

#[test]
fn socket_io_queries_get_the_same_identity_check() {
    let srv = server(crate::EVERY_BUILD_RUNS);
    let repo = Repo::site("sio-ident", "<p>x</p>");
    let mut q = query_for(&repo, "sio-ident");
    q["version"] = "1.2.0".into();
    let lines = run_client(&srv, "2", "websocket", &q, None, &[]);
    let actions = build_actions(&lines);
    let (action, message) = actions.last().unwrap();
    assert_eq!(action, "download failed", "{actions:?}");
    assert!(message.contains("has version 1.0.0, but this task publishes 1.2.0"), "{message}");
    assert!(!actions.iter().any(|a| a.0 == "install"), "it fails before install: {actions:?}");
}

#[test]
fn a_client_that_stops_reading_is_waited_for_and_gets_everything() {
    // More output than the socket's buffer holds even after coalescing (12 MB / 64 KiB > 128).
    let srv = server(&format!("{}[limits]\noutput_bytes = 16777216\n", crate::EVERY_BUILD_RUNS));
    let gate = srv.probe.path().join("gate");
    let build = format!(
        "const fs=require('fs');while(!fs.existsSync({g:?})){{Atomics.wait(new Int32Array(new SharedArrayBuffer(4)),0,0,20);}}\
         const l='x'.repeat(99)+'\\n';let s='';for(let i=0;i<120000;i++)s+=l;\
         process.stdout.write(s,()=>{{fs.mkdirSync('dist');fs.writeFileSync('dist/index.html','slow');}});",
        g = gate.to_str().unwrap()
    );
    let repo =
        Repo::new(&[("package.json", &package_json("sio-slow", &[("build", "node build.js")])), ("build.js", &build)]);
    for major in ["2", "4"] {
        let _ = std::fs::remove_file(&gate);
        let mut client = LiveClient::start(&srv.url, major, &query_for(&repo, "sio-slow"), &[]);
        client.until("the build stage", |seen| build_actions(seen).len() == 8);
        let id: i64 = build_actions(&client.seen)[0].1.split_whitespace().nth(1).unwrap().parse().unwrap();
        // The client stops reading (frozen) while the whole build runs and ends.
        signal(client.child.id(), "STOP");
        std::fs::write(&gate, "").unwrap();
        let t = srv.wait_done(id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
        signal(client.child.id(), "CONT");
        let lines = client.finish();
        let output: String =
            lines.iter().filter(|l| l["event"] == "building").map(|l| l["data"].as_str().unwrap()).collect();
        assert_eq!(output.matches(&"x".repeat(99)).count(), 120_000, "{major}: every line arrives");
        let actions: Vec<String> = build_actions(&lines).into_iter().map(|a| a.0).collect();
        assert_eq!(actions, crate::socketio_success_actions(), "{major}");
        assert_eq!(lines.last().unwrap()["reason"], "io server disconnect", "{major}: ended by the server");
    }
}

/// The repository host's DNS check runs when the client emits `build`, not on the connection
/// path: a client is greeted at once, and a host that resolves to a local address is refused
/// at `build` with the reason, creating no task.
#[test]
fn the_repository_host_is_looked_up_at_build_not_at_connect() {
    let srv = server("[git]\nallowed_protocols = [\"https\"]\nallow_local_hosts = false\n");
    // This machine's own name resolves to one of its addresses (loopback or private) through
    // /etc/hosts, as in inputs.rs.
    let host = Command::new("hostname").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap();
    use std::net::ToSocketAddrs;
    let internal = (host.as_str(), 443)
        .to_socket_addrs()
        .is_ok_and(|mut addrs| addrs.any(|a| cloudbuild_proto::validate::is_internal_ip(a.ip())));
    assert!(internal, "this test needs the machine's name to resolve to one of its own addresses");
    let q = json!({ "repo": format!("https://{host}/org/app.git"), "name": "sio-dns", "version": "1.0.0", "branch": "main" });
    let lines = run_client(&srv, "4", "websocket", &q, None, &[]);
    let greeting = lines.iter().find(|l| l["event"] == "id").expect("a greeting");
    assert_eq!(greeting["data"]["data"]["action"], "connect", "greeted, not denied at connect: {lines:?}");
    let refused = build_actions(&lines);
    assert!(
        refused.iter().any(|(action, message)| action == "error" && message.contains("resolves to")),
        "refused at build with the reason: {lines:?}"
    );
    let tasks = get_json(&format!("{}/api/v1/tasks", srv.url)).unwrap();
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "no task was created");
}
