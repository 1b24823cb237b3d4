//! Webhook deliveries in the Redis backend: each key claimed by `SET NX` with a 30-day expiry
//! (whichever server receives it first), the outcome replaced keeping that expiry, and a
//! capped list of each project's newest keys for listing.

use cloudbuild_proto::webhook::Delivery;
use redis::AsyncCommands;

use super::keys::P;
use super::{db_err, RedisStore};
use crate::{Result, DELIVERY_DAYS};

/// The newest deliveries listed per project.
const LISTED: isize = 200;

fn key(k: &str) -> String {
    format!("{P}delivery:{k}")
}

fn list_key(project: &str) -> String {
    format!("{P}deliveries:{project}")
}

pub(super) async fn claim(s: &RedisStore, k: &str, d: &Delivery, listed: bool) -> Result<bool> {
    let data = serde_json::to_string(d).map_err(db_err)?;
    let ttl = (DELIVERY_DAYS * 86_400) as u64;
    let opts = redis::SetOptions::default()
        .conditional_set(redis::ExistenceCheck::NX)
        .with_expiration(redis::SetExpiry::EX(ttl));
    let claimed: Option<String> = s.con().set_options(key(k), data, opts).await?;
    if claimed.is_none() {
        return Ok(false);
    }
    if !listed {
        return Ok(true);
    }
    let mut pipe = redis::pipe();
    // A key claimed again after it was given back is listed once, as the newest.
    pipe.lrem(list_key(&d.project), 0, k).ignore();
    pipe.lpush(list_key(&d.project), k).ignore().ltrim(list_key(&d.project), 0, LISTED - 1).ignore();
    let () = pipe.query_async(&mut s.con()).await?;
    Ok(true)
}

pub(super) async fn set(s: &RedisStore, k: &str, d: &Delivery) -> Result<()> {
    let data = serde_json::to_string(d).map_err(db_err)?;
    let opts = redis::SetOptions::default()
        .conditional_set(redis::ExistenceCheck::XX)
        .with_expiration(redis::SetExpiry::KEEPTTL);
    let _: Option<String> = s.con().set_options(key(k), data, opts).await?;
    Ok(())
}

pub(super) async fn release(s: &RedisStore, k: &str) -> Result<()> {
    // Its place in the project's list stays; a key that is gone is skipped when listing.
    let _: u32 = s.con().del(key(k)).await?;
    Ok(())
}

pub(super) async fn get(s: &RedisStore, k: &str) -> Result<Option<Delivery>> {
    let data: Option<String> = s.con().get(key(k)).await?;
    data.map(|d| serde_json::from_str(&d).map_err(db_err)).transpose()
}

pub(super) async fn list(s: &RedisStore, project: &str, limit: u32) -> Result<Vec<Delivery>> {
    let keys: Vec<String> = s.con().lrange(list_key(project), 0, LISTED - 1).await?;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let data: Vec<Option<String>> = s.con().mget(keys.iter().map(|k| key(k)).collect::<Vec<_>>()).await?;
    // Expired ones are gone; a key claimed twice in the list (never: claims are unique) is not.
    data.into_iter().flatten().take(limit as usize).map(|d| serde_json::from_str(&d).map_err(db_err)).collect()
}
