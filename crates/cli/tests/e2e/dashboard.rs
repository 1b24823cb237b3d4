//! The dashboard in a real browser (Debian's Chromium driven by playwright-core): a build's
//! log grows in the open page while the build runs, over SSE, without a reload; the final page
//! holds every line `cloudbuild logs` prints, in order, from its oldest line kept (at most 5,000
//! line nodes); markup in the log stays text. Screenshots
//! of the build page (light and dark) are left under `target/dashboard-screens/`.

use std::path::PathBuf;
use std::process::Command;

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{package_json, Repo};
use serde_json::Value;

use crate::server;
use crate::socketio::{ensure_clients, node_dir};

/// A build printing a line every 100 ms for 4 s (one of them markup, one coloured, one a burst
/// of 6,000 lines: more than the page keeps), then its site. It starts printing once the file
/// named by its first argument exists: the browser has the page open (however long Chromium
/// took to start on a loaded machine).
const SLOW_BUILD: &str =
    "const fs=require('fs');let i=0;const go=()=>{if(!fs.existsSync(process.argv[2]))return setTimeout(go,50);\
    const t=setInterval(()=>{i++;\
    if(i===5)console.log('<script>alert(1)</script>');else if(i===6)console.log('\\x1b[32mgreen line\\x1b[0m');\
    else if(i===8){let b='';for(let k=1;k<=6000;k++)b+='burst '+k+'\\n';process.stdout.write(b);}\
    else console.log('line '+i);if(i===40){clearInterval(t);fs.mkdirSync('dist',{recursive:true});\
    fs.writeFileSync('dist/index.html','<h1>ok</h1>');}},100);};go();";

#[test]
fn a_builds_log_grows_live_in_the_browser_and_ends_equal_to_cloudbuild_logs() {
    ensure_clients();
    let srv = server(crate::EVERY_BUILD_RUNS);
    let open = srv.probe.path().join("page-open");
    let repo = Repo::new(&[
        ("package.json", &package_json("live-page", &[("build", &format!("node build.js {}", open.display()))])),
        ("build.js", SLOW_BUILD),
    ]);
    let (status, task) = srv.create(&repo.task_body("live-page"));
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screens");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .env("READY_FILE", &open)
        .arg("dashboard.js")
        .arg(format!("{}/tasks/{id}", srv.url))
        .arg(&shots)
        .current_dir(node_dir())
        .output()
        .expect("running node");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the driver's report");
    assert_eq!(seen["state"], "succeeded", "{seen}");
    assert_eq!(srv.task(id).state, TaskState::Succeeded);
    let counts: Vec<u64> = seen["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "the last line shown only ever moves on: {counts:?}");
    let distinct = counts.windows(2).filter(|w| w[0] < w[1]).count();
    assert!(distinct >= 3, "the log grew several times while the page was open: {counts:?}");
    assert_eq!(seen["scriptRan"], false, "markup in the log did not run");
    // The page keeps at most 5,000 line nodes: the oldest left, and it says so.
    let page: Vec<String> = seen["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect();
    assert!(page.len() <= 5_000 && page.len() > 4_000, "{} line nodes", page.len());
    assert_eq!(seen["trimmed"], true, "the note about the lines that left is shown");
    // From the first line still on the page, every line `cloudbuild logs` shows of the output
    // is on the page, in order.
    let logs = srv.cli(&repo.work, &["logs", &id.to_string()]);
    let printed = String::from_utf8_lossy(&logs.stdout).into_owned();
    let output = srv.output(id);
    let first =
        output.lines().position(|l| strip_ansi(l).trim_end() == page[0].trim_end()).expect("the page's first line");
    let mut at = 0;
    for line in output.lines().skip(first).filter(|l| !l.trim().is_empty()) {
        let plain: String = strip_ansi(line);
        assert!(printed.contains(plain.trim_end()), "`cloudbuild logs` shows {plain:?}");
        let found = page[at..].iter().position(|p| p.trim_end() == plain.trim_end());
        assert!(found.is_some(), "{plain:?} is on the page after line {at}: {page:?}");
        at += found.unwrap() + 1;
    }
    assert!(page.iter().any(|l| l == "burst 6000") && !page.iter().any(|l| l == "burst 1"), "the oldest left");
    assert!(shots.join("build-light.png").is_file() && shots.join("build-dark.png").is_file());
}

/// The text of a line without its SGR sequences (what the page shows).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
