"""The Lua scripts of the idempotency store (``relay.pipeline.idempotency``). Each touches one
record, ``KEYS[1]``, tagged by its idempotency key: a single Redis Cluster slot."""

from __future__ import annotations

# A tombstone keeps the fingerprint's first FP_TOMBSTONE_CHARS hex digits: it matches a payload
# whose fingerprint starts with them.
CLAIM_LUA = """
local fp = redis.call('HGET', KEYS[1], 'fp')
if fp and #fp < #ARGV[1] and fp == string.sub(ARGV[1], 1, #fp) then fp = ARGV[1] end
local fresh = not fp
if fp and fp ~= ARGV[1] then
  fresh = redis.call('HGET', KEYS[1], 'state') == 'rejected'
    or string.sub(redis.call('HGET', KEYS[1], 's') or '', 1, 1) == 'r'
end
if fresh then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'claimed', 'claimed_at', ARGV[2],
             'model', ARGV[4], 'meta', ARGV[5], 'hook', ARGV[6])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {'new'}
end
if fp ~= ARGV[1] then
  return {'conflict'}
end
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, 'existing')
return out
"""


# Record the submit only while the key is still claimed (or lost): states move forward only, and
# of two owners that both submitted (a rebalance during a slow submit) exactly one records it and
# is told so (1), so the task's estimate is counted once.
SUBMITTED_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if (state and state ~= 'claimed') or redis.call('HEXISTS', KEYS[1], 's') == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# Shrink a finished record to its tombstone (state, short fingerprint, task, result type,
# times, webhook done markers and the once-markers of rejections), so a week of them stays
# small: one HSET of the fields ARGV[3..], the shortened fingerprint, `w` and every `seen:`
# marker the record had. ARGV: retention, fingerprint length, fields.
TOMBSTONE_LUA = """
local old = redis.call('HGETALL', KEYS[1])
local new = {unpack(ARGV, 3)}
for i = 1, #old, 2 do
  local name = old[i]
  if name == 'fp' then
    table.insert(new, 'fp')
    table.insert(new, string.sub(old[i + 1], 1, tonumber(ARGV[2])))
  elseif name == 'w' or string.sub(name, 1, 5) == 'seen:' then
    table.insert(new, name)
    table.insert(new, old[i + 1])
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(new))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# Publishing a key's result once: a compare-and-set on the record (terminal → publishing, a lease
# `pub` = "<until, unix ms> <token>"). KEYS[1]; ARGV: retention, result JSON (stored when none
# is), token, lease seconds. {'won'} | {'won', the stored result when it is not ARGV[2]} |
# {'busy'} | {'done'}.
TAKE_PUBLISH_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if redis.call('HEXISTS', KEYS[1], 's') == 1 or state == 'published' or state == 'rejected' then
  return {'done'}
end
if state ~= 'terminal' then
  redis.call('HSET', KEYS[1], 'state', 'terminal', 'result', ARGV[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = redis.call('HGET', KEYS[1], 'pub')
if lease then
  local until_ms, holder = string.match(lease, '^(%d+) (.*)$')
  if holder ~= ARGV[3] and tonumber(until_ms) > now then return {'busy'} end
end
redis.call('HSET', KEYS[1], 'pub', string.format('%d %s', now + tonumber(ARGV[4]) * 1000, ARGV[3]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
local stored = redis.call('HGET', KEYS[1], 'result')
if stored == ARGV[2] then return {'won'} end
return {'won', stored}
"""

# Set a marker field once; a hash created by it gets the retention like every other record.
MARK_ONCE_LUA = """
local added = redis.call('HSETNX', KEYS[1], ARGV[1], '1')
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return added
"""
