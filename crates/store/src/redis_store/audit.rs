//! The audit log in the Redis backend: a list of JSON entries, appended to by a Lua script
//! that numbers each entry (`INCR`) and pushes it at once, so ids follow list order; read
//! newest first from the list's end.

use cloudbuild_proto::audit::AuditEntry;
use redis::AsyncCommands;

use super::keys::P;
use super::{db_err, RedisStore};
use crate::{AuditQuery, Result};

fn key() -> String {
    format!("{P}audit")
}

fn counter() -> String {
    format!("{P}audit:id")
}

/// Numbers the entry (ARGV[1] is its JSON; its `id` is replaced) and appends it.
const APPEND: &str = r#"
local id = redis.call('INCR', KEYS[2])
local entry = cjson.decode(ARGV[1])
entry['id'] = id
redis.call('RPUSH', KEYS[1], cjson.encode(entry))
return id
"#;

pub(super) async fn append(s: &RedisStore, entry: &AuditEntry) -> Result<()> {
    let json = serde_json::to_string(entry).map_err(db_err)?;
    let _: i64 = redis::Script::new(APPEND).key(key()).key(counter()).arg(json).invoke_async(&mut s.con()).await?;
    Ok(())
}

/// Entries matching `q`, newest first: read from the end of the list in chunks.
pub(super) async fn list(s: &RedisStore, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
    const CHUNK: isize = 512;
    let len: isize = s.con().llen(key()).await?;
    let mut out = Vec::new();
    let mut end = len - 1;
    while end >= 0 && out.len() < q.limit as usize {
        let start = (end - CHUNK + 1).max(0);
        let chunk: Vec<String> = s.con().lrange(key(), start, end).await?;
        for raw in chunk.iter().rev() {
            let e: AuditEntry = serde_json::from_str(raw).map_err(db_err)?;
            let keep = q.before.is_none_or(|b| e.id < b)
                && q.project.as_ref().is_none_or(|p| e.project.as_ref() == Some(p))
                && q.actor.as_ref().is_none_or(|a| &e.actor == a)
                && q.action.as_ref().is_none_or(|a| &e.action == a);
            if keep && out.len() < q.limit as usize {
                out.push(e);
            }
        }
        end = start - 1;
    }
    Ok(out)
}
