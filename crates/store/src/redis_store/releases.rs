//! Releases, their files, the current release per environment and the content index.

use std::collections::HashMap;

use cloudbuild_proto::release::{ManifestFile, Release};
use cloudbuild_proto::task::Environment;
use cloudbuild_proto::time::Timestamp;
use redis::AsyncCommands;

use super::keys::{current_field, holders_key, P};
use super::{db_err, RedisStore};
use crate::{NewRelease, Result};

pub(super) async fn load_release(s: &RedisStore, id: i64) -> Result<Option<Release>> {
    let data: Option<String> = s.con().get(format!("{P}release:{id}")).await?;
    let Some(data) = data else { return Ok(None) };
    let mut r: Release = serde_json::from_str(&data).map_err(db_err)?;
    let current: Option<i64> = s.con().hget(format!("{P}current"), current_field(r.env, &r.name)).await?;
    r.current = current == Some(r.id);
    Ok(Some(r))
}

pub(super) async fn record_release(s: &RedisStore, new: NewRelease, files: &[ManifestFile]) -> Result<Release> {
    let id: i64 = s.con().incr(format!("{P}next_release"), 1).await?;
    let release = Release {
        id,
        env: new.env,
        name: new.name,
        version: new.version,
        task_id: new.task_id,
        commit: new.commit,
        requested_by: new.requested_by,
        created_at: Timestamp::now(),
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.size).sum(),
        current: false,
        pruned: false,
    };
    let mut pipe = redis::pipe();
    pipe.atomic()
        .set(format!("{P}release:{id}"), serde_json::to_string(&release).map_err(db_err)?)
        .set(format!("{P}release_files:{id}"), serde_json::to_string(files).map_err(db_err)?)
        .zadd(format!("{P}releases:{}", release.name), id, id);
    for f in files {
        pipe.sadd(holders_key(release.env, &f.hash), format!("{id} {}", f.path));
    }
    pipe.query_async::<()>(&mut s.con()).await?;
    Ok(release)
}

pub(super) async fn set_current(s: &RedisStore, release_id: i64) -> Result<Option<Release>> {
    let release = load_release(s, release_id)
        .await?
        .ok_or_else(|| crate::StoreError::Corrupt(format!("release {release_id} is not in the store")))?;
    let previous: Option<i64> = s
        .swap
        .key(format!("{P}current"))
        .arg(current_field(release.env, &release.name))
        .arg(release_id)
        .invoke_async(&mut s.con())
        .await?;
    match previous.filter(|p| *p != release_id) {
        Some(p) => load_release(s, p).await,
        None => Ok(None),
    }
}

pub(super) async fn list_releases(s: &RedisStore, env: Option<Environment>, name: &str) -> Result<Vec<Release>> {
    let ids: Vec<i64> = s.con().zrevrange(format!("{P}releases:{name}"), 0, -1).await?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(r) = load_release(s, id).await? {
            if env.is_none_or(|e| e == r.env) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

pub(super) async fn get_release(s: &RedisStore, id: i64) -> Result<Option<Release>> {
    load_release(s, id).await
}

pub(super) async fn release_files(s: &RedisStore, release_id: i64) -> Result<Vec<ManifestFile>> {
    let data: Option<String> = s.con().get(format!("{P}release_files:{release_id}")).await?;
    let mut files: Vec<ManifestFile> = match data {
        Some(d) => serde_json::from_str(&d).map_err(db_err)?,
        None => Vec::new(),
    };
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

pub(super) async fn find_contents(
    s: &RedisStore,
    env: Environment,
    hashes: &[String],
) -> Result<Vec<crate::ContentHolder>> {
    let mut out = Vec::new();
    let mut releases: HashMap<i64, Option<Release>> = HashMap::new();
    for chunk in hashes.chunks(500) {
        let mut pipe = redis::pipe();
        for hash in chunk {
            pipe.smembers(holders_key(env, hash));
        }
        let holders: Vec<Vec<String>> = pipe.query_async(&mut s.con()).await?;
        for (hash, members) in chunk.iter().zip(holders) {
            // Newest holder first, as the SQLite backend answers.
            let mut candidates: Vec<(i64, String)> = members
                .iter()
                .filter_map(|m| m.split_once(' '))
                .filter_map(|(id, path)| Some((id.parse::<i64>().ok()?, path.to_owned())))
                .collect();
            candidates.sort_by(|a, b| b.cmp(a));
            for (id, path) in candidates {
                if let std::collections::hash_map::Entry::Vacant(slot) = releases.entry(id) {
                    slot.insert(load_release(s, id).await?);
                }
                if let Some(Some(r)) = releases.get(&id).filter(|r| r.as_ref().is_some_and(|r| !r.pruned)) {
                    out.push(crate::ContentHolder { hash: hash.clone(), release: r.clone(), path });
                    break;
                }
            }
        }
    }
    Ok(out)
}

pub(super) async fn mark_pruned(s: &RedisStore, ids: &[i64]) -> Result<()> {
    for id in ids {
        if let Some(mut r) = load_release(s, *id).await? {
            // A pruned release holds no content any more.
            let files = release_files(s, *id).await?;
            if !files.is_empty() {
                let mut pipe = redis::pipe();
                for f in &files {
                    pipe.srem(holders_key(r.env, &f.hash), format!("{id} {}", f.path));
                }
                pipe.query_async::<()>(&mut s.con()).await?;
            }
            if r.current {
                // A removed release is nobody's current one (a removed preview's last).
                let field = current_field(r.env, &r.name);
                let script = redis::Script::new(
                    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end",
                );
                let _: () =
                    script.key(format!("{P}current")).arg(field).arg(id.to_string()).invoke_async(&mut s.con()).await?;
            }
            r.pruned = true;
            r.current = false;
            let _: () = s.con().set(format!("{P}release:{id}"), serde_json::to_string(&r).map_err(db_err)?).await?;
        }
    }
    Ok(())
}
