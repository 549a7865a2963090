"""The Lua scripts of the delivery store. Each names all its keys in ``KEYS``, and all of them
carry one shard's hash tag, so each runs in a single Redis Cluster slot (docs/webhooks.md)."""

from __future__ import annotations

# KEYS: due, delivery hash, key index, origin counts, tombstone buckets (ARGV[7] of them)
# ARGV: id, due time, force, idempotency key, origin, tombstone marker, bucket count, fields...
SCHEDULE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if ARGV[3] == '0' then
  for i = 5, 4 + tonumber(ARGV[7]) do
    local t = redis.call('HGET', KEYS[i], ARGV[4])
    if t and string.find(t, ARGV[6], 1, true) then return 0 end
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ids = redis.call('HGET', KEYS[3], ARGV[4])
if ids then
  redis.call('HSET', KEYS[3], ARGV[4], ids .. ' ' .. ARGV[1])
else
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[1])
end
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
return 1
"""

# KEYS: due, delivery hash. ARGV: id, now, lease expiry, token. Returns the hash or nil.
CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) > tonumber(ARGV[2]) then return false end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return false
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'lease', ARGV[4])
return redis.call('HGETALL', KEYS[2])
"""

# KEYS: due, delivery hash. ARGV: id, token, due time, fields to update...
RESCHEDULE = """
if redis.call('HGET', KEYS[2], 'lease') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], 'lease')
if #ARGV > 3 then redis.call('HSET', KEYS[2], unpack(ARGV, 4)) end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: due, delivery hash, key index, origin counts, current tombstone bucket
# ARGV: id, token, idempotency key, origin, tombstone line, bucket expiry (unix seconds), origin
# ref. An empty tombstone line writes none (the caller leaves a compact marker in the idempotency
# record); the bucket then names the origin once, as `o:<origin ref>`.
FINISH = """
if redis.call('HGET', KEYS[2], 'lease') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
local ids = redis.call('HGET', KEYS[3], ARGV[3])
if ids then
  local rest = {}
  for id in string.gmatch(ids, '%S+') do
    if id ~= ARGV[1] then rest[#rest + 1] = id end
  end
  if #rest == 0 then
    redis.call('HDEL', KEYS[3], ARGV[3])
  else
    redis.call('HSET', KEYS[3], ARGV[3], table.concat(rest, ' '))
  end
end
if redis.call('HINCRBY', KEYS[4], ARGV[4], -1) <= 0 then redis.call('HDEL', KEYS[4], ARGV[4]) end
if ARGV[5] ~= '' then
  local t = redis.call('HGET', KEYS[5], ARGV[3])
  redis.call('HSET', KEYS[5], ARGV[3], (t or '') .. ARGV[5])
elseif redis.call('HSETNX', KEYS[5], 'o:' .. ARGV[7], ARGV[4]) == 0 then
  return 1
end
redis.call('EXPIREAT', KEYS[5], ARGV[6])
return 1
"""

# KEYS: a tombstone bucket. ARGV: idempotency key, tombstone line, bucket expiry (unix seconds).
TOMBSTONE = """
local t = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], (t or '') .. ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return 1
"""

# KEYS: the key's idempotency record. ARGV: the marker (`history.CompactDone`), whose first 8
# characters are the delivery id's.
# Appended to the record's `w` field when the record exists (it keeps its own retention); 0 when
# there is no record to hold it (expired, or never written under this prefix).
DONE_MARK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local w = redis.call('HGET', KEYS[1], 'w')
if w and string.find(' ' .. w, ' ' .. string.sub(ARGV[1], 1, 8), 1, true) then return 1 end
redis.call('HSET', KEYS[1], 'w', w and (w .. ' ' .. ARGV[1]) or ARGV[1])
return 1
"""
