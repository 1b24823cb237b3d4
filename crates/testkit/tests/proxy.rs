//! The test proxy really cuts the connections it carries, and keeps accepting new ones.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use cloudbuild_testkit::TcpProxy;

#[test]
fn dropping_cuts_open_connections_and_new_ones_still_pass() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = upstream.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in upstream.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = TcpProxy::start(&addr).unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    proxy.drop_connections();
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0, "the open connection is cut");
    let mut again = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    again.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    again.write_all(b"pong").unwrap();
    again.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}
