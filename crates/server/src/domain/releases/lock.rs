//! The release lock shared by every server on one store: held while a project's release is
//! recorded and switched in one environment, renewed while held, and checked before switching.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudbuild_store::{Store, StoreError};
use tokio::time::Instant;

/// Why a shared lock was not taken or is not held any more.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another holder kept it past the wait.
    #[error("another server has held `{0}` for too long")]
    Busy(String),
    /// Renewals failed for longer than the TTL (the store stalled or was unreachable), so
    /// another server may hold it now: whoever held it must not switch.
    #[error("the lock `{0}` could not be renewed in time and may be held by another server now")]
    Lost(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A hold on a shared lock, renewed in the background every third of its TTL until dropped.
///
/// The hold is trusted until `valid_until` = the start of the last successful renewal + TTL
/// − a safety margin. A renewal only extends a hold that is still this holder's
/// ([`Store::extend_lock`]); it never takes an expired lock back, because another server may
/// have taken it meanwhile.
pub struct SharedLock {
    store: Arc<dyn Store>,
    name: String,
    holder: String,
    ttl: Duration,
    valid_until: Arc<Mutex<Instant>>,
    renew: tokio::task::JoinHandle<()>,
}

impl SharedLock {
    /// Takes `name` for `holder`, waiting (polling every 100 ms) until `wait` has passed.
    pub async fn acquire(
        store: Arc<dyn Store>,
        name: String,
        holder: String,
        ttl: Duration,
        wait: Duration,
    ) -> Result<SharedLock, LockError> {
        let deadline = Instant::now() + wait;
        loop {
            let asked = Instant::now();
            if store.try_lock(&name, &holder, ttl).await? {
                let valid_until = Arc::new(Mutex::new(asked + trusted(ttl)));
                let renew = tokio::spawn(renew(store.clone(), name.clone(), holder.clone(), ttl, valid_until.clone()));
                return Ok(SharedLock { store, name, holder, ttl, valid_until, renew });
            }
            if Instant::now() > deadline {
                return Err(LockError::Busy(name));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Confirms the hold right before an action that must not overlap another holder's (the
    /// switch): fails if the last renewal is older than the TTL allows, or if the store does
    /// not confirm the hold now. A success is good for a whole TTL from now.
    pub async fn ensure_held(&self) -> Result<(), LockError> {
        if Instant::now() >= self.valid_until() {
            return Err(LockError::Lost(self.name.clone()));
        }
        let asked = Instant::now();
        match tokio::time::timeout_at(self.valid_until(), self.store.extend_lock(&self.name, &self.holder, self.ttl))
            .await
        {
            Ok(Ok(true)) => {
                *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = asked + trusted(self.ttl);
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::warn!(lock = %self.name, "cannot confirm the lock: {e}");
                Err(LockError::Lost(self.name.clone()))
            }
            Ok(Ok(false)) | Err(_) => Err(LockError::Lost(self.name.clone())),
        }
    }

    fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How much of a TTL a hold is trusted for: a margin for clock drift and the request's trip.
fn trusted(ttl: Duration) -> Duration {
    ttl.mul_f64(0.8)
}

async fn renew(store: Arc<dyn Store>, name: String, holder: String, ttl: Duration, valid_until: Arc<Mutex<Instant>>) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let asked = Instant::now();
        match store.extend_lock(&name, &holder, ttl).await {
            Ok(true) => *valid_until.lock().unwrap_or_else(|p| p.into_inner()) = asked + trusted(ttl),
            Ok(false) => {
                tracing::error!(lock = %name, "the lock expired before it could be renewed; not switching");
                return;
            }
            Err(e) => tracing::warn!(lock = %name, "renewing the lock failed (retrying): {e}"),
        }
    }
}

impl Drop for SharedLock {
    fn drop(&mut self) {
        self.renew.abort();
        let (store, name, holder) = (self.store.clone(), self.name.clone(), self.holder.clone());
        tokio::spawn(async move {
            if let Err(e) = store.unlock(&name, &holder).await {
                tracing::warn!("cannot release the lock {name} (it expires by itself): {e}");
            }
        });
    }
}
