//! Personal API tokens in the Redis backend: `api_tokens` (hash of the secret → record),
//! `user_tokens:{user}` (token name → hash: a user's names are unique), `api_token_used`
//! (hash → last use in µs, apart so that a use rewrites no record). Creation and removal touch
//! both hashes in one Lua script.

use std::collections::HashMap;

use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::ApiTokenRecord;
use redis::AsyncCommands;

use super::keys::P;
use super::{db_err, RedisStore};
use crate::Result;

fn tokens_key() -> String {
    format!("{P}api_tokens")
}

fn used_key() -> String {
    format!("{P}api_token_used")
}

fn user_key(user: &str) -> String {
    format!("{P}user_tokens:{user}")
}

fn parse(data: &str, used: Option<i64>) -> Result<ApiTokenRecord> {
    let mut rec: ApiTokenRecord = serde_json::from_str(data).map_err(db_err)?;
    rec.token.last_used_at = used.map(Timestamp);
    Ok(rec)
}

pub(super) async fn create(s: &RedisStore, t: &ApiTokenRecord) -> Result<bool> {
    let data = serde_json::to_string(t).map_err(db_err)?;
    let script = redis::Script::new(
        "if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) return 1 else return 0 end",
    );
    let done: i64 = script
        .key(user_key(&t.token.user))
        .key(tokens_key())
        .arg(&t.token.name)
        .arg(&t.hash)
        .arg(data)
        .invoke_async(&mut s.con())
        .await?;
    Ok(done == 1)
}

pub(super) async fn by_hash(s: &RedisStore, hash: &str) -> Result<Option<ApiTokenRecord>> {
    let mut con = s.con();
    let data: Option<String> = con.hget(tokens_key(), hash).await?;
    let Some(data) = data else { return Ok(None) };
    let used: Option<i64> = con.hget(used_key(), hash).await?;
    parse(&data, used).map(Some)
}

pub(super) async fn list(s: &RedisStore, user: &str) -> Result<Vec<ApiTokenRecord>> {
    let mut con = s.con();
    let names: HashMap<String, String> = con.hgetall(user_key(user)).await?;
    let mut out = Vec::with_capacity(names.len());
    for hash in names.values() {
        if let Some(rec) = by_hash(s, hash).await? {
            out.push(rec);
        }
    }
    out.sort_by(|a, b| a.token.name.cmp(&b.token.name));
    Ok(out)
}

pub(super) async fn delete(s: &RedisStore, user: &str, name: &str) -> Result<bool> {
    let script = redis::Script::new(
        "local h = redis.call('HGET', KEYS[1], ARGV[1]) if not h then return 0 end \
         redis.call('HDEL', KEYS[1], ARGV[1]) redis.call('HDEL', KEYS[2], h) redis.call('HDEL', KEYS[3], h) return 1",
    );
    let done: i64 =
        script.key(user_key(user)).key(tokens_key()).key(used_key()).arg(name).invoke_async(&mut s.con()).await?;
    Ok(done == 1)
}

pub(super) async fn touch(s: &RedisStore, hash: &str, at: Timestamp) -> Result<()> {
    // Only for a token that still exists: a use racing a revocation must not leave a record.
    let script = redis::Script::new(
        "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end return 1",
    );
    let _: i64 = script.key(tokens_key()).key(used_key()).arg(hash).arg(at.0).invoke_async(&mut s.con()).await?;
    Ok(())
}
