//! The event log: late followers, reconnects and WebSocket followers see the same bytes as a
//! follower from the start.

use std::io::Read;
use std::time::Duration;

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{package_json, Repo};

use crate::server;

/// Reads a whole SSE response with a plain blocking socket (a follower from the start).
fn raw_follow(url: &str, path: &str) -> std::thread::JoinHandle<String> {
    let addr = url.trim_start_matches("http://").to_owned();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        use std::io::Write;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Removes HTTP framing from a chunked response, leaving the body.
pub(crate) fn dechunk(raw: &str) -> String {
    let body = raw.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

#[test]
fn late_and_resumed_followers_get_identical_bytes() {
    let srv = server("");
    // Output in several bursts, so the live follower sees many separate events.
    let script = "let i=0;const t=setInterval(()=>{console.log('tick '+i);if(++i==20){clearInterval(t);\
        require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/index.html','ok');}},20);";
    let repo =
        Repo::new(&[("package.json", &package_json("site-log", &[("build", "node build.js")])), ("build.js", script)]);
    let (_, task) = srv.create(&repo.task_body("site-log"));
    let id = task["id"].as_i64().unwrap();
    let live = raw_follow(&srv.url, &format!("/api/v1/tasks/{id}/events?after=0"));
    let t = srv.wait_done(id);
    assert_eq!(t.state, TaskState::Succeeded);
    let live = dechunk(&live.join().unwrap());
    let late = srv.sse(id, 0);
    assert_eq!(live, late, "a late follower must see exactly what a live one saw");
    assert!(late.contains("tick 19"));
    // Resuming after any event gives exactly the rest.
    let frames: Vec<&str> = late.split_inclusive("\n\n").collect();
    assert_eq!(frames.len() as u64, t.last_seq);
    for cut in [1usize, 5, frames.len() - 1] {
        assert_eq!(srv.sse(id, cut as u64), frames[cut..].concat(), "resume after {cut}");
    }
    // Sequence numbers are 1..=n without gaps, and the last event is `end`.
    for (i, f) in frames.iter().enumerate() {
        assert!(f.starts_with(&format!("id: {}\n", i + 1)), "{f}");
    }
    assert!(frames.last().unwrap().contains("event: end"));
}

#[test]
fn websocket_followers_get_the_same_events() {
    let srv = server("");
    let repo = Repo::new(&[
        ("package.json", &package_json("site-ws", &[("build", "node build.js")])),
        ("build.js", &cloudbuild_testkit::build_script("ws")),
    ]);
    let (_, task) = srv.create(&repo.task_body("site-ws"));
    let id = task["id"].as_i64().unwrap();
    srv.wait_done(id);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let messages = rt.block_on(async {
        use futures_util::StreamExt;
        let url = format!("{}/api/v1/tasks/{id}/events?after=0", srv.url.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut out = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            let msg = msg.expect("websocket message");
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                out.push(t.to_string());
            }
        }
        out
    });
    let sse_data: Vec<String> = srv
        .sse(id, 0)
        .split("\n\n")
        .filter_map(|f| f.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned))
        .collect();
    let ws_data: Vec<String> =
        messages.iter().map(|m| serde_json::from_str::<serde_json::Value>(m).unwrap()["data"].to_string()).collect();
    assert_eq!(ws_data.len(), sse_data.len());
    for (w, s) in ws_data.iter().zip(&sse_data) {
        let s: serde_json::Value = serde_json::from_str(s).unwrap();
        assert_eq!(w, &s.to_string());
    }
}
