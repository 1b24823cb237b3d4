//! Project secrets in the Redis backend: one hash per project, field `<env>/<name>`, sealed
//! values only.

use std::collections::HashMap;

use cloudbuild_proto::task::Environment;
use redis::AsyncCommands;

use super::keys::P;
use super::{db_err, RedisStore};
use crate::{Result, StoredSecret};

fn key(project: &str) -> String {
    format!("{P}secrets:{project}")
}

pub(super) async fn put(s: &RedisStore, secret: &StoredSecret) -> Result<()> {
    let data = serde_json::to_string(secret).map_err(db_err)?;
    let field = format!("{}/{}", secret.env.as_str(), secret.name);
    let _: () = s.con().hset(key(&secret.project), field, data).await?;
    Ok(())
}

pub(super) async fn delete(s: &RedisStore, project: &str, env: Environment, name: &str) -> Result<bool> {
    let removed: u32 = s.con().hdel(key(project), format!("{}/{name}", env.as_str())).await?;
    Ok(removed == 1)
}

pub(super) async fn list(s: &RedisStore, project: &str) -> Result<Vec<StoredSecret>> {
    let all: HashMap<String, String> = s.con().hgetall(key(project)).await?;
    let mut out =
        all.values().map(|d| serde_json::from_str::<StoredSecret>(d).map_err(db_err)).collect::<Result<Vec<_>>>()?;
    out.sort_by(|a, b| (a.env.as_str(), &a.name).cmp(&(b.env.as_str(), &b.name)));
    Ok(out)
}
