//! The server under abusive clients: slow request headers, more connections than it takes,
//! large frames from event followers. It must stay up and answer everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::server;

/// Reads until the server closes the connection; false if it is still open after `within`.
fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn clients_that_send_headers_slowly_are_disconnected() {
    let srv = server("[limits]\nheader_read_timeout_secs = 1\n");
    let addr = srv.url.trim_start_matches("http://").to_owned();
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
            c
        })
        .collect();
    let started = Instant::now();
    for conn in &mut slow {
        assert!(closed_within(conn, Duration::from_secs(10)), "a slow-header connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Everyone else is answered all along.
    assert_eq!(cloudbuild_testkit::get_text(&format!("{}/healthz", srv.url)).0, 200);
}

#[test]
fn connections_past_the_cap_wait_for_a_free_one() {
    let srv = server("[limits]\nmax_connections = 4\nheader_read_timeout_secs = 60\n");
    let addr = srv.url.trim_start_matches("http://").to_owned();
    // Four idle connections hold every slot.
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let mut fifth = TcpStream::connect(&addr).unwrap();
    fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    fifth.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut buf = [0u8; 512];
    assert!(fifth.read(&mut buf).is_err(), "the fifth connection was served while four were open");
    drop(held);
    fifth.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = fifth.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
}

#[test]
fn a_websocket_follower_that_sends_a_large_frame_is_disconnected() {
    let srv = server("");
    // A task no worker can take keeps its followers waiting.
    let (_, task) = srv.create(&serde_json::json!({
        "repo": "https://example.com/app.git", "branch": "main", "name": "ws-big", "version": "1.0.0",
        "labels": ["nowhere"]
    }));
    let id = task["id"].as_i64().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let closed = rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("{}/api/v1/tasks/{id}/events?after=0", srv.url.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        // Read what is stored, then send one megabyte.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(500), ws.next()).await {}
        let _ = ws.send(Message::Text("x".repeat(1 << 20).into())).await;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => break true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => break false,
            }
        }
    });
    assert!(closed, "the server kept a follower that sent a 1 MiB frame");
    assert_eq!(srv.task(id).state, cloudbuild_proto::task::TaskState::Queued, "the task is unaffected");
}
