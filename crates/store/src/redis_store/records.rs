//! Records kept as JSON in one hash keyed by name (projects, users, global freeze windows) in the Redis backend:
//! `HSETNX` registers a name once, whichever server asks first; updates are compare-and-set.

use std::collections::HashMap;

use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::keys::P;
use super::{db_err, RedisStore};
use crate::Result;

/// The hash of projects (`cb:projects`).
pub(super) const PROJECTS: &str = "projects";
/// The hash of users (`cb:users`).
pub(super) const USERS: &str = "users";
/// The hash of global freeze windows, by id (`cb:freeze_windows`).
pub(super) const FREEZE_WINDOWS: &str = "freeze_windows";

fn key(hash: &str) -> String {
    format!("{P}{hash}")
}

pub(super) async fn create(s: &RedisStore, hash: &str, name: &str, r: &impl Serialize) -> Result<bool> {
    let data = serde_json::to_string(r).map_err(db_err)?;
    Ok(s.con().hset_nx(key(hash), name, data).await?)
}

pub(super) async fn get<T: DeserializeOwned>(s: &RedisStore, hash: &str, name: &str) -> Result<Option<T>> {
    let data: Option<String> = s.con().hget(key(hash), name).await?;
    data.map(|d| serde_json::from_str(&d).map_err(db_err)).transpose()
}

/// Every record, by name.
pub(super) async fn list<T: DeserializeOwned>(s: &RedisStore, hash: &str) -> Result<Vec<T>> {
    let all: HashMap<String, String> = s.con().hgetall(key(hash)).await?;
    let mut named = all
        .into_iter()
        .map(|(name, d)| Ok((name, serde_json::from_str::<T>(&d).map_err(db_err)?)))
        .collect::<Result<Vec<_>>>()?;
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named.into_iter().map(|(_, r)| r).collect())
}

/// Replaces the record only while it is still `old`. The stored record is compared as this
/// version writes it (one stored before a field was added still matches the `old` read from
/// it); the Lua script then sets it only if it is still those stored bytes.
pub(super) async fn update<T: Serialize + DeserializeOwned>(
    s: &RedisStore,
    hash: &str,
    name: &str,
    old: &T,
    new: &T,
) -> Result<bool> {
    let stored: Option<String> = s.con().hget(key(hash), name).await?;
    let Some(stored) = stored else { return Ok(false) };
    let normalised = serde_json::to_string(&serde_json::from_str::<T>(&stored).map_err(db_err)?).map_err(db_err)?;
    if normalised != serde_json::to_string(old).map_err(db_err)? {
        return Ok(false);
    }
    let now = serde_json::to_string(new).map_err(db_err)?;
    let script = redis::Script::new(
        "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1 else return 0 end",
    );
    let done: i64 = script.key(key(hash)).arg(name).arg(stored).arg(now).invoke_async(&mut s.con()).await?;
    Ok(done == 1)
}

pub(super) async fn delete(s: &RedisStore, hash: &str, name: &str) -> Result<bool> {
    let removed: u32 = s.con().hdel(key(hash), name).await?;
    Ok(removed == 1)
}
