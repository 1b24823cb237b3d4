//! A stand-in for a forge's REST API on loopback: it records every request (method, path,
//! headers, JSON body) and answers with the statuses it is given in turn, then `201`, as the
//! forges answer a new commit status.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the forge received.
#[derive(Debug, Clone)]
pub struct ForgeCall {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl ForgeCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The recording forge; it stops with the test process.
pub struct ForgeRecorder {
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    calls: Arc<Mutex<Vec<ForgeCall>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

impl ForgeRecorder {
    /// Starts one on a free loopback port.
    pub fn start() -> ForgeRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        let (c, a) = (calls.clone(), answers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (c, a) = (c.clone(), a.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &c, &a);
                });
            }
        });
        ForgeRecorder { url, calls, answers }
    }

    /// The statuses of the next answers (then `201` again).
    pub fn answer_with(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<ForgeCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (up to `timeout`) until a request satisfies `done`; returns them all.
    pub fn wait_for(&self, done: impl Fn(&ForgeCall) -> bool, timeout: Duration) -> Vec<ForgeCall> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            if calls.iter().any(&done) || Instant::now() > deadline {
                return calls;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(
    mut stream: std::net::TcpStream,
    calls: &Mutex<Vec<ForgeCall>>,
    answers: &Mutex<VecDeque<u16>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let length: usize =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let status = answers.lock().unwrap().pop_front().unwrap_or(201);
    calls.lock().unwrap().push(ForgeCall { method, path, headers, body });
    let text = format!(r#"{{"state":"recorded","status":{status}}}"#);
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(reply.as_bytes())
}
