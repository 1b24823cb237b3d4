//! A TCP proxy that can cut the connections it carries (network drops).

use anyhow::Result;

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
