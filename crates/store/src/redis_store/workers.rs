//! The worker registry, revocable worker tokens, and the locks shared by servers.

use std::collections::HashMap;
use std::time::Duration;

use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::worker::{WorkerInfo, WorkerToken};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::keys::P;
use super::{db_err, RedisStore};
use crate::{Result, StoreError};

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    hash: String,
    created_at: Timestamp,
    revoked_at: Option<Timestamp>,
}

pub(super) async fn put_worker(s: &RedisStore, worker: &WorkerInfo) -> Result<()> {
    let data = serde_json::to_string(worker).map_err(db_err)?;
    let _: () = s.con().hset(format!("{P}workers"), &worker.name, data).await?;
    Ok(())
}

pub(super) async fn list_workers(s: &RedisStore) -> Result<Vec<WorkerInfo>> {
    let all: HashMap<String, String> = s.con().hgetall(format!("{P}workers")).await?;
    let mut out: Vec<WorkerInfo> =
        all.values().map(|d| serde_json::from_str(d).map_err(db_err)).collect::<Result<_>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(super) async fn create_worker_token(s: &RedisStore, name: &str, hash: &str) -> Result<WorkerToken> {
    let created = Timestamp::now();
    let record = TokenRecord { hash: hash.to_owned(), created_at: created, revoked_at: None };
    let data = serde_json::to_string(&record).map_err(db_err)?;
    let fresh: bool = s.con().hset_nx(format!("{P}worker_tokens"), name, data).await?;
    if !fresh {
        return Err(StoreError::Conflict { what: format!("a worker token named `{name}`") });
    }
    let _: () = s.con().hset(format!("{P}worker_token_hash"), hash, name).await?;
    Ok(WorkerToken { name: name.to_owned(), created_at: created, revoked_at: None })
}

pub(super) async fn revoke_worker_token(s: &RedisStore, name: &str) -> Result<bool> {
    let data: Option<String> = s.con().hget(format!("{P}worker_tokens"), name).await?;
    let Some(data) = data else { return Ok(false) };
    let mut record: TokenRecord = serde_json::from_str(&data).map_err(db_err)?;
    if record.revoked_at.is_some() {
        return Ok(false);
    }
    // The hash index goes first: from then on the token authenticates nobody.
    let _: () = s.con().hdel(format!("{P}worker_token_hash"), &record.hash).await?;
    record.revoked_at = Some(Timestamp::now());
    let data = serde_json::to_string(&record).map_err(db_err)?;
    let _: () = s.con().hset(format!("{P}worker_tokens"), name, data).await?;
    Ok(true)
}

pub(super) async fn list_worker_tokens(s: &RedisStore) -> Result<Vec<WorkerToken>> {
    let all: HashMap<String, String> = s.con().hgetall(format!("{P}worker_tokens")).await?;
    let mut out = all
        .into_iter()
        .map(|(name, d)| {
            let r: TokenRecord = serde_json::from_str(&d).map_err(db_err)?;
            Ok(WorkerToken { name, created_at: r.created_at, revoked_at: r.revoked_at })
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(super) async fn worker_token_name(s: &RedisStore, hash: &str) -> Result<Option<String>> {
    Ok(s.con().hget(format!("{P}worker_token_hash"), hash).await?)
}

pub(super) async fn extend_lock(s: &RedisStore, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
    let ttl_ms = ttl.as_millis().max(1) as u64;
    let kept: i64 = s.extend.key(format!("{P}lock:{name}")).arg(holder).arg(ttl_ms).invoke_async(&mut s.con()).await?;
    Ok(kept == 1)
}

pub(super) async fn try_lock(s: &RedisStore, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
    let ttl_ms = ttl.as_millis().max(1) as u64;
    let got: i64 = s.lock.key(format!("{P}lock:{name}")).arg(holder).arg(ttl_ms).invoke_async(&mut s.con()).await?;
    Ok(got == 1)
}

pub(super) async fn unlock(s: &RedisStore, name: &str, holder: &str) -> Result<()> {
    let _: i64 = s.unlock.key(format!("{P}lock:{name}")).arg(holder).invoke_async(&mut s.con()).await?;
    Ok(())
}
