--[[ join.lua: give a visitor one place in a sale's waiting room, atomically.

KEYS[1]  meta hash of the sale
KEYS[2]  visitor bucket hash (visitor id -> join index)
KEYS[3]  heartbeat bitmap of the current slice
KEYS[4]  rate-limit counter of this visitor
KEYS[5]  rate-limit counter of this client address
KEYS[6]  inventory hash (units still held may return to stock)
KEYS[7]  spent-proof key of the proof of work this join brings (a placeholder without one)
ARGV[1]  visitor id
ARGV[2]  now, ms since the epoch
ARGV[3]  heartbeat bitmap TTL, ms
ARGV[4]  rate window, ms
ARGV[5]  joins allowed per visitor per window
ARGV[6]  joins allowed per address per window
ARGV[7]  proof of work: 0 not needed, 1 needed and missing, 2 needed and verified (KEYS[7])
ARGV[8]  ms until that proof's challenge expires (how long its spent key is kept)

Returns {status, join index or retry-after ms, 1 if the place already existed}
status: ok | rate_limited | no_sale | closed | sold_out | proof_required | proof_spent

A place that exists costs no proof (a reload, another tab); a new one spends the proof once.

Joining before the opening draws a pre-queue index (shuffled at the opening); the first call
at or after the opening freezes the pre-queue size so later joiners queue behind it.
]]
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[4])

local function over_limit(key, limit)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, window) end
  if n > limit then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then ttl = window end
    return ttl
  end
  return nil
end

local wait_v = over_limit(KEYS[4], tonumber(ARGV[5]))
local wait_a = over_limit(KEYS[5], tonumber(ARGV[6]))
if wait_v or wait_a then
  return {'rate_limited', math.max(wait_v or 0, wait_a or 0), 0}
end

local m = redis.call('HMGET', KEYS[1], 'opens_ms', 'closes_ms', 'opened', 'sold_out', 'closed')
if not m[1] then return {'no_sale', 0, 0} end

local function mark_seen(j)
  redis.call('SETBIT', KEYS[3], j, 1)
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
end

local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  mark_seen(tonumber(existing))
  return {'ok', tonumber(existing), 1}
end

if m[5] == '1' or now >= tonumber(m[2]) then return {'closed', 0, 0} end
-- sold out for good only when nothing is held either: held units come back if not paid
if m[4] == '1' and tonumber(redis.call('HGET', KEYS[6], 'held') or '0') <= 0 then
  return {'sold_out', 0, 0}
end

-- a new place: its price, when the sale sets one, is a proof of work used once
if ARGV[7] == '1' then return {'proof_required', 0, 0} end
if ARGV[7] == '2' then
  if not redis.call('SET', KEYS[7], '1', 'NX', 'PX', math.max(1, tonumber(ARGV[8]))) then
    return {'proof_spent', 0, 0}
  end
end

local j
if m[3] == '1' then
  j = redis.call('HINCRBY', KEYS[1], 'seq', 1) - 1
elseif now >= tonumber(m[1]) then
  -- first sign of the opening: freeze the pre-queue, then queue first come first served
  local pre = tonumber(redis.call('HGET', KEYS[1], 'pre') or '0')
  redis.call('HSET', KEYS[1], 'opened', '1', 'P', pre, 'seq', pre + 1, 'frontier', 0)
  j = pre
else
  j = redis.call('HINCRBY', KEYS[1], 'pre', 1) - 1
end

redis.call('HSET', KEYS[2], ARGV[1], j)
mark_seen(j)
return {'ok', j, 0}
