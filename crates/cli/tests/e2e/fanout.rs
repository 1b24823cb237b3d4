//! Many followers of one live build: 100 SSE and 100 socket.io followers, all connected before
//! the build prints, each receive the complete log, byte for byte the same.

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};

use cloudbuild_proto::task::{Stage, TaskState};
use cloudbuild_testkit::{package_json, Repo};
use serde_json::Value;

use crate::events::dechunk;
use crate::server;
use crate::socketio::{ensure_clients, node_dir};

const FOLLOWERS: usize = 100;

/// Opens an SSE follower of `path`; returns once the response has begun (the follower is
/// connected), with a thread that reads the rest.
fn sse_follower(addr: &str, path: &str) -> std::thread::JoinHandle<String> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n").unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).unwrap();
    std::thread::spawn(move || {
        let mut out = first.to_vec();
        s.read_to_end(&mut out).unwrap();
        dechunk(&String::from_utf8_lossy(&out))
    })
}

/// The output text of an SSE log, in order (what a socket.io client receives as `building`).
fn output_text(sse: &str) -> String {
    stream_text(sse, None)
}

/// The output of one stream (`stdout`, `stderr`), or of both.
fn stream_text(sse: &str, stream: Option<&str>) -> String {
    sse.split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter(|v| stream.is_none_or(|s| v.get("stream").and_then(Value::as_str) == Some(s)))
        .filter_map(|v| v.get("text").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

#[test]
fn two_hundred_followers_of_one_build_all_receive_the_same_complete_log() {
    ensure_clients();
    let srv = server(crate::EVERY_BUILD_RUNS);
    let go = srv.probe.path().join("go");
    // Waits until every follower is connected, then prints 20,000 lines (about 1 MB) in bursts,
    // some on stderr.
    let script = format!(
        "const fs=require('fs');const go={go:?};\
         const wait=()=>fs.existsSync(go)?run(0):setTimeout(wait,20);\
         const run=(b)=>{{if(b===20){{fs.mkdirSync('dist');fs.writeFileSync('dist/index.html','ok');return;}}\
           const lines=[];for(let i=0;i<1000;i++)lines.push(`burst ${{b}} line ${{i}} ${{'x'.repeat(30)}}`);\
           (b%5===4?process.stderr:process.stdout).write(lines.join('\\n')+'\\n');setTimeout(()=>run(b+1),10);}};\
         wait();",
        go = go.to_str().unwrap()
    );
    let repo =
        Repo::new(&[("package.json", &package_json("fanout", &[("build", "node build.js")])), ("build.js", &script)]);
    let (_, t) = srv.create(&repo.task_body("fanout"));
    let id = t["id"].as_i64().unwrap();
    srv.wait_until(id, |t| t.stage == Some(Stage::Build), "the build waits for its followers");

    let mut node = Command::new("node")
        .arg("followers.js")
        .args([&srv.url, &FOLLOWERS.to_string(), &id.to_string()])
        .current_dir(node_dir())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(node.stdout.take().unwrap()).lines();
    let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    let addr = srv.url.trim_start_matches("http://").to_owned();
    let sse: Vec<_> = (0..FOLLOWERS).map(|_| sse_follower(&addr, &format!("/api/v1/tasks/{id}/events"))).collect();
    std::fs::write(&go, "1").unwrap();

    let logs: Vec<String> = sse.into_iter().map(|h| h.join().unwrap()).collect();
    let done: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(node.wait().unwrap().success());
    let t = srv.wait_done(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");

    // Every SSE follower got the same bytes, up to the end event.
    assert!(logs[0].contains("event: end"), "{}", &logs[0][logs[0].len().saturating_sub(500)..]);
    assert!(logs.iter().all(|l| *l == logs[0]), "the SSE followers' logs differ");
    let text = output_text(&logs[0]);
    // Each stream whole and in order. Across the two pipes, order is the order the worker read
    // them in: under load, the rest of a stdout burst can be read after the next stderr burst.
    let burst = |b: usize| (0..1000).map(move |i| format!("burst {b} line {i} {}\n", "x".repeat(30)));
    for (stream, on_stderr) in [("stdout", false), ("stderr", true)] {
        let printed: String = (0..20).filter(|b| (b % 5 == 4) == on_stderr).flat_map(burst).collect();
        assert!(stream_text(&logs[0], Some(stream)).contains(&printed), "the whole {stream}, in order");
    }
    assert_eq!(text.matches(" line ").count(), 20_000, "every line, once");
    // Every socket.io follower got that output, byte for byte, and was let go at the end.
    let results = done["results"].as_array().unwrap_or_else(|| panic!("{done}"));
    assert_eq!(results.len(), FOLLOWERS);
    let sha = sha256_hex(&text);
    for r in results {
        assert_eq!(r["bytes"].as_u64(), Some(text.len() as u64), "{r}");
        assert_eq!(r["sha256"], sha.as_str(), "{r}");
        assert_eq!(r["reason"], "io server disconnect", "{r}");
    }
}

/// SHA-256 of `text` in hex, as node's `crypto.createHash('sha256')` gives it (`sha256sum`).
fn sha256_hex(text: &str) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}
