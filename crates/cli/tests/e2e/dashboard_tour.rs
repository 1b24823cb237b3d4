//! The whole dashboard in a real browser (Debian's Chromium driven by playwright-core, the
//! script `tests/node/dashboard-tour.js`), on a server that requires sign-in: a guest is sent to
//! the login form; each role sees only the buttons its role allows and its forged POSTs are
//! refused; a developer cancels a running build from its page (a second tab, in Chinese, sees
//! its state change live); a maintainer rolls the site back
//! from the project page and the site serves the older release; sign-out; the language by the
//! switch, by `?locale=` and by `Accept-Language`; a 200,000-line log's page keeps a bounded
//! number of line nodes and shows markup and escape sequences as text. Screenshots of every page
//! (en-US and zh-CN, light and dark, and a phone) are left under `target/dashboard-screens/`.

use std::path::PathBuf;
use std::process::Command;

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{build_script, hang_script, package_json, request_as, Repo, Server, ServerOptions};
use serde_json::{json, Value};

use crate::bin;
use crate::socketio::{ensure_clients, node_dir};

const ADMIN_TOKEN: &str = "tour-admin-service-token-0123456789";
const PASSWORD: &str = "correct horse battery";

/// A build printing 200,000 numbered lines (≈ 20 MB), then one line of markup and escape
/// sequences, then its site.
const BIG_BUILD: &str = "const fs=require('fs');let b='';for(let i=1;i<=200000;i++){\
    b+='line '+String(i).padStart(6,'0')+' \\x1b[32mok\\x1b[0m '+'x'.repeat(80)+'\\n';\
    if(b.length>65536){process.stdout.write(b);b='';}}process.stdout.write(b);\
    console.log('<script>alert(1)</script> \\x1b]0;owned title\\x07\\x1b[31mred\\x1b[0m end');\
    fs.mkdirSync('dist',{recursive:true});fs.writeFileSync('dist/index.html','<h1>big</h1>');";

fn api(srv: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    request_as(method, &format!("{}{path}", srv.url), Some(ADMIN_TOKEN), body.as_ref())
}

/// Registers `name` from `repo` with `members` (user, role).
fn register(srv: &Server, name: &str, repo: &Repo, members: &[(&str, &str)]) {
    let (status, body) = api(srv, "POST", "/api/v1/projects", Some(json!({"name": name, "repo": repo.url})));
    assert_eq!(status, 201, "{body}");
    for (user, role) in members {
        let (status, body) =
            api(srv, "PUT", &format!("/api/v1/projects/{name}/members/{user}"), Some(json!({"role": role})));
        assert_eq!(status, 200, "{body}");
    }
}

fn publish(srv: &Server, repo: &Repo, name: &str, version: &str) -> i64 {
    let body = json!({"repo": repo.url, "branch": "main", "name": name, "version": version});
    let (status, task) = api(srv, "POST", "/api/v1/tasks", Some(body));
    assert_eq!(status, 201, "{task}");
    task["id"].as_i64().unwrap()
}

#[test]
fn each_role_uses_the_dashboard_in_a_browser_as_its_role_allows_in_both_languages() {
    ensure_clients();
    let toml = format!(
        "[auth]\nallow_anonymous = false\n[[auth.tokens]]\nname = \"tour\"\ntoken = \"{ADMIN_TOKEN}\"\n{}",
        crate::EVERY_BUILD_RUNS
    );
    let env = [("CLOUDBUILD_LIMITS__OUTPUT_BYTES", "67108864")];
    let mut srv = Server::start_with(bin(), ServerOptions { extra_toml: &toml, env: &env, ..Default::default() })
        .expect("server starts");
    srv.token = Some(ADMIN_TOKEN.to_owned());
    for (user, role) in [("root", "admin"), ("max", "user"), ("dev", "user"), ("rep", "user")] {
        let (status, body) =
            api(&srv, "POST", "/api/v1/users", Some(json!({"name": user, "password": PASSWORD, "role": role})));
        assert_eq!(status, 201, "{body}");
    }
    let team = [("max", "maintainer"), ("dev", "developer"), ("rep", "reporter")];
    let site = Repo::new(&[
        ("package.json", &package_json("tour", &[("build", "node build.js")])),
        ("build.js", &build_script("<h1>tour 1.0.0</h1>")),
    ]);
    register(&srv, "tour", &site, &team);
    let first = publish(&srv, &site, "tour", "1.0.0");
    let big =
        Repo::new(&[("package.json", &package_json("big", &[("build", "node build.js")])), ("build.js", BIG_BUILD)]);
    register(&srv, "big", &big, &team);
    let big_task = publish(&srv, &big, "big", "1.0.0");
    assert_eq!(srv.wait_done(first).state, TaskState::Succeeded, "{}", srv.output(first));
    site.commit(&[("build.js", &build_script("<h1>tour 1.0.1</h1>"))], "second release");
    site.set_version("1.0.1");
    let second = publish(&srv, &site, "tour", "1.0.1");
    assert_eq!(srv.wait_done(second).state, TaskState::Succeeded, "{}", srv.output(second));
    assert_eq!(srv.wait_done(big_task).state, TaskState::Succeeded, "{}", srv.log());
    let slow = Repo::new(&[
        ("package.json", &package_json("slow", &[("build", "node build.js")])),
        ("build.js", &hang_script("/dev/null")),
    ]);
    register(&srv, "slow", &slow, &team);
    let running = publish(&srv, &slow, "slow", "1.0.0");
    srv.wait_until(running, |t| t.state == TaskState::Running, "running");

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screens");
    std::fs::create_dir_all(&shots).unwrap();
    let plan = json!({
        "url": srv.url, "password": PASSWORD, "shots": shots,
        "tasks": {"first": first, "second": second, "big": big_task, "running": running},
        "site": srv.site_url("test", "tour"),
    });
    let out = Command::new("node")
        .arg("dashboard-tour.js")
        .arg(plan.to_string())
        .current_dir(node_dir())
        .output()
        .expect("running node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", String::from_utf8_lossy(&out.stdout));
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the driver's report");
    let check = |key: &str, want: Value| assert_eq!(seen[key], want, "{key}: {seen:#}");

    check("guest", json!("/login?next=/projects"));
    // A reporter: no cancel, rollback or settings; the forged POSTs refused.
    check("rep_buttons", json!({"cancel": 0, "rollback": 0, "settings": 0}));
    check("rep_posts", json!({"cancel": 403, "rollback": 403, "workers": 403}));
    // A developer: cancel yes, rollback no; cancelling from the page stopped the build.
    check("dev_buttons", json!({"cancel": 1, "rollback": 0, "settings": 0}));
    check("dev_posts", json!({"rollback": 403}));
    assert_eq!(srv.wait_done(running).state, TaskState::Cancelled);
    check("dev_cancelled", json!({"badge": "已取消", "live": true}));
    // A maintainer: rollback to 1.0.0 from the page, and the site serves it.
    check("max_buttons", json!({"cancel": 0, "rollback": 1, "settings": 1}));
    assert!(seen["site_after_rollback"].as_str().unwrap().contains("tour 1.0.0"), "{seen:#}");
    let (_, releases) = api(&srv, "GET", "/api/v1/releases?name=tour", None);
    let current: Vec<&Value> =
        releases["releases"].as_array().unwrap().iter().filter(|r| r["current"] == true).collect();
    assert_eq!(current[0]["version"], "1.0.0", "{releases}");
    // Admins see workers and users; signing out ends the session.
    check("admin_pages", json!({"workers": 200, "users": 200, "audit": 200}));
    check("after_logout", json!("/login?next=/projects"));
    // The language: the switch (and its cookie), `?locale=`, `Accept-Language`.
    check("lang", json!({"switch": "zh-CN", "next_page": "zh-CN", "query": "en-US", "accept_language": "zh-CN"}));
    // The 200,000-line log: a bounded page, its last lines, markup as text, no script run.
    let lines = seen["big"]["lines"].as_u64().unwrap();
    assert!(lines > 100 && lines <= 2_001, "line nodes in the DOM: {lines}");
    assert_eq!(seen["big"]["markup"], "<script>alert(1)</script> red end", "as text, the OSC title dropped: {seen:#}");
    assert!(seen["big"]["before"].as_str().unwrap().starts_with("line 200000 ok"), "{seen:#}");
    assert_eq!(seen["big"]["red"], json!(true), "the SGR colour became a class");
    check("script_ran", json!(false));
    eprintln!("the 200,000-line build page loaded in {} ms", seen["big"]["load_ms"]);
    let pages = ["login", "projects", "project", "build", "big-log", "search", "workers", "users", "audit", "tokens"];
    for page in pages {
        for lang in ["en-US", "zh-CN"] {
            for scheme in ["light", "dark"] {
                let file = shots.join(format!("{page}-{lang}-{scheme}.png"));
                assert!(file.is_file(), "{} was saved", file.display());
            }
        }
    }
    srv.kill9();
}
