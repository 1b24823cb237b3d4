//! Notices between servers on one Redis: published on one channel, each wrapped with its
//! sender so a server ignores its own; hints only (see `Store::notices`).

use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::keys::NOTICES;
use super::{db_err, RedisStore};
use crate::{Notice, Result};

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    notice: Notice,
}

/// Forwards the other servers' notices until the process ends, resubscribing after Redis
/// comes back. Notices lost while disconnected cost latency only: followers re-read the store
/// and the scheduler ticks on its own.
pub(super) async fn listen(client: redis::Client, me: String, tx: broadcast::Sender<Notice>) {
    loop {
        if let Ok(mut pubsub) = client.get_async_pubsub().await {
            if pubsub.subscribe(NOTICES).await.is_ok() {
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else { continue };
                    match serde_json::from_str::<Envelope>(&payload) {
                        Ok(env) if env.from != me => {
                            let _ = tx.send(env.notice);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("unreadable notice from another server: {e}"),
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Publishes a notice to the other servers.
pub(super) async fn announce(s: &RedisStore, notice: Notice) -> Result<()> {
    let env = Envelope { from: s.instance.clone(), notice };
    let _: () = s.con().publish(NOTICES, serde_json::to_string(&env).map_err(db_err)?).await?;
    Ok(())
}
