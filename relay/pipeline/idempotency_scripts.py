"""The Lua scripts of the idempotency store (``relay.pipeline.idempotency``). Each touches one
record, ``KEYS[1]``, tagged by its idempotency key: a single Redis Cluster slot."""

from __future__ import annotations

# A tombstone keeps the fingerprint's first FP_TOMBSTONE_CHARS hex digits: it matches a payload
# whose fingerprint starts with them.
CLAIM_LUA = """
local fp = redis.call('HGET', KEYS[1], 'fp')
if fp and #fp < #ARGV[1] and fp == string.sub(ARGV[1], 1, #fp) then fp = ARGV[1] end
local state = redis.call('HGET', KEYS[1], 'state')
local short = redis.call('HGET', KEYS[1], 's')
if not fp and (state or short) then
  -- A record without its fingerprint (written back after Redis lost the key): never fresh,
  -- the request it stands for may have been submitted and published already.
  fp = ARGV[1]
end
local fresh = not fp
if fp and fp ~= ARGV[1] then
  fresh = state == 'rejected' or string.sub(short or '', 1, 1) == 'r'
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
# small: one HSET of the fields ARGV[4..], the shortened fingerprint, `w` and every `seen:`
# marker the record had. The fingerprint is the caller's (ARGV[3]) when given, so the tombstone
# is whole even when Redis lost the record meanwhile (a restart without persistence).
# ARGV: retention, fingerprint length, fingerprint or "", fields.
TOMBSTONE_LUA = """
local old = redis.call('HGETALL', KEYS[1])
local new = {unpack(ARGV, 4)}
local fp = ARGV[3]
for i = 1, #old, 2 do
  local name = old[i]
  if name == 'fp' then
    if fp == '' then fp = old[i + 1] end
  elseif name == 'w' or string.sub(name, 1, 5) == 'seen:' then
    table.insert(new, name)
    table.insert(new, old[i + 1])
  end
end
if fp ~= '' then
  table.insert(new, 'fp')
  table.insert(new, string.sub(fp, 1, tonumber(ARGV[2])))
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

# Taking the right to publish a once-per-key result decided without a claim of its own (the
# key's idempotency_conflict): 'done' when its marker ARGV[2] is set (published), 'busy' while
# another holder's lease (field 'lease:' .. ARGV[2] = "<until, unix ms> <token>", left out of the
# tombstone) runs, else
# 'won' with the lease taken for ARGV[4] seconds; a holder that dies before publishing leaves
# the lease to run out, and the next record publishes. ARGV: retention, marker, token, lease s.
TAKE_ONCE_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 'done' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local field = 'lease:' .. ARGV[2]
local lease = redis.call('HGET', KEYS[1], field)
if lease then
  local until_ms, holder = string.match(lease, '^(%d+) (.*)$')
  if holder ~= ARGV[3] and tonumber(until_ms) > now then return 'busy' end
end
redis.call('HSET', KEYS[1], field, string.format('%d %s', now + tonumber(ARGV[4]) * 1000, ARGV[3]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 'won'
"""

# Set a marker field once; a hash created by it gets the retention like every other record.
MARK_ONCE_LUA = """
local added = redis.call('HSETNX', KEYS[1], ARGV[1], '1')
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return added
"""
