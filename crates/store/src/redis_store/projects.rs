//! Registered projects in the Redis backend: one hash, field = the project's name, value = its
//! record as JSON (`HSETNX` registers a name once, whichever server asks first).

use std::collections::HashMap;

use cloudbuild_proto::project::Project;
use redis::AsyncCommands;

use super::keys::P;
use super::{db_err, RedisStore};
use crate::Result;

fn key() -> String {
    format!("{P}projects")
}

pub(super) async fn create(s: &RedisStore, p: &Project) -> Result<bool> {
    let data = serde_json::to_string(p).map_err(db_err)?;
    Ok(s.con().hset_nx(key(), &p.name, data).await?)
}

pub(super) async fn get(s: &RedisStore, name: &str) -> Result<Option<Project>> {
    let data: Option<String> = s.con().hget(key(), name).await?;
    data.map(|d| serde_json::from_str(&d).map_err(db_err)).transpose()
}

pub(super) async fn list(s: &RedisStore) -> Result<Vec<Project>> {
    let all: HashMap<String, String> = s.con().hgetall(key()).await?;
    let mut out =
        all.values().map(|d| serde_json::from_str::<Project>(d).map_err(db_err)).collect::<Result<Vec<_>>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Replaces the record only while it is still `old` (a Lua script: compare and set at once).
pub(super) async fn update(s: &RedisStore, old: &Project, new: &Project) -> Result<bool> {
    let (was, now) = (serde_json::to_string(old).map_err(db_err)?, serde_json::to_string(new).map_err(db_err)?);
    let script = redis::Script::new(
        "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1 else return 0 end",
    );
    let done: i64 = script.key(key()).arg(&old.name).arg(was).arg(now).invoke_async(&mut s.con()).await?;
    Ok(done == 1)
}

pub(super) async fn delete(s: &RedisStore, name: &str) -> Result<bool> {
    let removed: u32 = s.con().hdel(key(), name).await?;
    Ok(removed == 1)
}
