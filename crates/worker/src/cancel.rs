//! `CancelToken`: a cloneable "stop now" signal for one task.

use tokio::sync::watch;

/// Receives the cancel signal of one task.
#[derive(Debug, Clone)]
pub struct CancelToken(watch::Receiver<bool>);

/// Sends it.
#[derive(Debug)]
pub struct CancelHandle(watch::Sender<bool>);

impl CancelToken {
    /// A new signal, not yet raised.
    pub fn new() -> (CancelHandle, CancelToken) {
        let (tx, rx) = watch::channel(false);
        (CancelHandle(tx), CancelToken(rx))
    }

    /// Whether the signal was raised.
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when the signal is raised; never, if the handle is dropped without raising it.
    pub async fn cancelled(&mut self) {
        if self.0.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl CancelHandle {
    /// Raises the signal.
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }
}
