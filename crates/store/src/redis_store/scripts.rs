//! The Lua scripts: each runs atomically in Redis.

/// Checks revisions, then writes. ARGV[1] is a JSON plan; returns 1 if applied, 0 on conflict.
pub(super) const CAS_LUA: &str = r#"
local plan = cjson.decode(ARGV[1])
for _, c in ipairs(plan.check) do
  local rev = redis.call('HGET', c[1], 'rev') or ''
  if rev ~= c[2] then return 0 end
end
for _, w in ipairs(plan.put) do
  redis.call('HSET', w[1], 'data', w[2])
  redis.call('HINCRBY', w[1], 'rev', 1)
end
for _, e in ipairs(plan.rpush) do redis.call('RPUSH', e[1], unpack(e[2])) end
for _, z in ipairs(plan.zadd) do redis.call('ZADD', z[1], z[2], z[3]) end
for _, z in ipairs(plan.zrem) do redis.call('ZREM', z[1], z[2]) end
return 1
"#;

/// Sets a hash field and returns its previous value, atomically.
pub(super) const SWAP_LUA: &str = r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"#;

/// Takes or extends a lock for its holder: KEYS[1] lock, ARGV[1] holder, ARGV[2] ttl in ms.
pub(super) const LOCK_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Extends a lock only while its holder still has it: a renewal that arrives after the lock
/// expired (Redis stalled past the TTL) must not take it again, another server may have it.
pub(super) const EXTEND_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Deletes a lock if its holder still has it.
pub(super) const UNLOCK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;
