"""The budget ledger's Lua scripts: each transition of a reservation is one script, so relay
processes sharing a budget can never both take its last room.

Every key lives under one hash tag (``<prefix>:budget:{<prefix>}:…``), so a Redis Cluster keeps
them on one slot and a script may touch all of them; the keys a reservation remembers (its windows,
its price probe) are read from the reservation and touched inside that slot. Amounts are integer
micro-USD.

A reservation (``T:r:<id>``, ``id`` a digest of the idempotency key) is ``h`` held (its amount
counted in each window's ``reserved``), ``l`` lapsed (its holder stopped refreshing it; the amount
went back), ``c`` charged (MindVideo created the task; its estimate counted in ``spent``) or ``s``
settled (the estimate replaced by the task's actual cost). ``T:exp`` orders held reservations by
expiry; every reserve and every monitor pass lapses the expired ones.
"""

from __future__ import annotations

# ARGV[1] is always the tag prefix T, ARGV[2] the TTL of a window key created outside a reserve.
_PRELUDE = """
local T = ARGV[1]
local function each(entries, fn)
  for entry in string.gmatch(entries or '', '%S+') do fn(entry) end
end
local function top_update(entry)
  local rule, wid, inst = string.match(entry, '^([^:]+):([^:]+):([^:]+)$')
  if not rule then return end
  local wk = T .. ':w:' .. entry
  local used = (tonumber(redis.call('HGET', wk, 'spent')) or 0)
             + (tonumber(redis.call('HGET', wk, 'reserved')) or 0)
  local tk = T .. ':top:' .. rule .. ':' .. wid
  redis.call('ZADD', tk, used, inst)
  local ttl = redis.call('TTL', wk)
  if ttl > 0 then redis.call('EXPIRE', tk, ttl) end
end
local function adjust(entries, field, delta)
  if delta == 0 then return end
  each(entries, function(entry)
    local wk = T .. ':w:' .. entry
    local exists = redis.call('EXISTS', wk) == 1
    if exists or delta > 0 then
      if redis.call('HINCRBY', wk, field, delta) < 0 then redis.call('HSET', wk, field, 0) end
      if not exists then redis.call('EXPIRE', wk, ARGV[2]) end
      top_update(entry)
    end
  end)
end
local function release_probe(rk, id)
  local p = redis.call('HGET', rk, 'p')
  if p and p ~= '' and redis.call('GET', p) == id then redis.call('DEL', p) end
end
local function lapse(id)
  local rk = T .. ':r:' .. id
  if redis.call('HGET', rk, 's') == 'h' then
    adjust(redis.call('HGET', rk, 'k'), 'reserved', -(tonumber(redis.call('HGET', rk, 'a')) or 0))
    release_probe(rk, id)
    redis.call('HSET', rk, 's', 'l')
  end
  redis.call('ZREM', T .. ':exp', id)
end
"""

# KEYS: exp, reservation, probe (a placeholder when the price is known), window keys...
# ARGV: T, default ttl, id, now ms, expiry ms, amount (-1: price unknown), reservation ttl,
#       sweep limit, entries, probe ttl ms, then per window: limit, window key ttl.
# Returns {outcome, detail (the full window's index, a probe's ms left), reservations lapsed}.
RESERVE = (
    _PRELUDE
    + """
local now = tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[8]))
for _, old in ipairs(expired) do lapse(old) end
local lapsed = #expired
local id = ARGV[3]
local state = redis.call('HGET', KEYS[2], 's')
if state == 'h' then
  redis.call('ZADD', KEYS[1], ARGV[5], id)
  redis.call('EXPIRE', KEYS[2], ARGV[7])
  return {'held', 0, lapsed}
end
if state == 'c' or state == 's' then return {'charged', 0, lapsed} end
local amount = tonumber(ARGV[6])
local probing = amount < 0
local n = #KEYS - 3
if probing then
  amount = 0
  local holder = redis.call('GET', KEYS[3])
  if n > 0 and holder and holder ~= id then
    return {'probing', redis.call('PTTL', KEYS[3]), lapsed}
  end
end
for i = 1, n do
  local wk = KEYS[3 + i]
  local used = (tonumber(redis.call('HGET', wk, 'spent')) or 0)
             + (tonumber(redis.call('HGET', wk, 'reserved')) or 0)
  local limit = tonumber(ARGV[9 + 2 * i])
  if used + amount > limit or (probing and used >= limit) then return {'full', i, lapsed} end
end
for i = 1, n do
  local wk = KEYS[3 + i]
  redis.call('HINCRBY', wk, 'reserved', amount)
  redis.call('HSET', wk, 'limit', ARGV[9 + 2 * i])
  redis.call('EXPIRE', wk, ARGV[10 + 2 * i])
end
each(ARGV[9], top_update)
local probe = ''
if probing and n > 0 then
  redis.call('SET', KEYS[3], id, 'PX', ARGV[10])
  probe = KEYS[3]
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 's', 'h', 'a', amount, 'k', ARGV[9], 'p', probe)
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('ZADD', KEYS[1], ARGV[5], id)
return {'ok', 0, lapsed}
"""
)

# KEYS: exp, reservation. ARGV: T, default ttl, id, expiry ms, reservation ttl, probe ttl ms.
REFRESH = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[2], 's') ~= 'h' then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
local p = redis.call('HGET', KEYS[2], 'p')
if p and p ~= '' and redis.call('GET', p) == ARGV[3] then redis.call('PEXPIRE', p, ARGV[6]) end
return 1
"""
)

# KEYS: exp, reservation, prices, spend-per-minute key of now.
# ARGV: T, default ttl, id, estimate (-1: none given), charge if missing (0/1), reservation ttl,
#       price field, unit price ('' to learn nothing), minute key ttl, minute id, entries.
CONFIRM = (
    _PRELUDE
    + """
local state = redis.call('HGET', KEYS[2], 's')
if state == 'c' or state == 's' then return 0 end
if (not state) and ARGV[5] ~= '1' then return 0 end
local entries, held = ARGV[11], 0
if state then
  entries = redis.call('HGET', KEYS[2], 'k')
  held = tonumber(redis.call('HGET', KEYS[2], 'a')) or 0
end
local estimate = tonumber(ARGV[4])
if estimate < 0 then estimate = held end
if state == 'h' then adjust(entries, 'reserved', -held) end
adjust(entries, 'spent', estimate)
release_probe(KEYS[2], ARGV[3])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[3], ARGV[7], ARGV[8]) end
if estimate > 0 then
  redis.call('INCRBY', KEYS[4], estimate)
  redis.call('EXPIRE', KEYS[4], ARGV[9])
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 's', 'c', 'e', estimate, 'k', entries, 'm', ARGV[10])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('ZREM', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS: reservation. ARGV: T, default ttl, actual (-1: unknown, the estimate stays), settled ttl.
SETTLE = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 's') ~= 'c' then return 0 end
local estimate = tonumber(redis.call('HGET', KEYS[1], 'e')) or 0
local actual = tonumber(ARGV[3])
if actual >= 0 and actual ~= estimate then
  local delta = actual - estimate
  adjust(redis.call('HGET', KEYS[1], 'k'), 'spent', delta)
  local sk = T .. ':spm:' .. (redis.call('HGET', KEYS[1], 'm') or '')
  if redis.call('EXISTS', sk) == 1 and redis.call('INCRBY', sk, delta) < 0 then
    redis.call('SET', sk, 0, 'KEEPTTL')
  end
end
redis.call('HSET', KEYS[1], 's', 's')
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
)

# KEYS: exp, reservation. ARGV: T, default ttl, id.
RELEASE = (
    _PRELUDE
    + """
local state = redis.call('HGET', KEYS[2], 's')
if state == 'h' then
  adjust(redis.call('HGET', KEYS[2], 'k'), 'reserved',
         -(tonumber(redis.call('HGET', KEYS[2], 'a')) or 0))
  release_probe(KEYS[2], ARGV[3])
end
if state == 'h' or state == 'l' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
)

# KEYS: exp. ARGV: T, default ttl, now ms, limit. Lapses expired reservations; how many.
SWEEP = (
    _PRELUDE
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[3]), 'LIMIT', 0,
                           tonumber(ARGV[4]))
for _, id in ipairs(expired) do lapse(id) end
return #expired
"""
)

# KEYS: one "top" sorted set per budget rule (its current window).
# ARGV: T, default ttl, then per key the window key prefix "T:w:<rule>:<window id>:".
# Returns, per rule: instances, spent and reserved of the fullest instance.
USAGE = """
local out = {}
for i = 1, #KEYS do
  local top = redis.call('ZREVRANGE', KEYS[i], 0, 0)
  local spent, reserved = 0, 0
  if top[1] then
    local wk = ARGV[2 + i] .. top[1]
    spent = tonumber(redis.call('HGET', wk, 'spent')) or 0
    reserved = tonumber(redis.call('HGET', wk, 'reserved')) or 0
  end
  table.insert(out, redis.call('ZCARD', KEYS[i]))
  table.insert(out, spent)
  table.insert(out, reserved)
end
return out
"""
