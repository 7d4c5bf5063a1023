--[[ admit.lua: admit the next batch of a sale's waiting room, atomically and exactly.

KEYS[1]  meta hash of the sale
KEYS[2]  active sorted set (join index -> admission expiry, ms)
KEYS[3]  admitted bitmap
KEYS[4]  recent batches list
KEYS[5..] heartbeat bitmaps of the slices that count as "recently seen"
ARGV[1]  now, ms since the epoch
ARGV[2]  the frontier the caller read (compare-and-set: a stale caller changes nothing)
ARGV[3..] join indices standing at positions frontier, frontier+1, ... in line order

Returns {status, a, b, c}
  ok:      admitted, skipped, new frontier
  stale:   0, 0, current frontier
  wait:    ms until the next batch is due
  not_open | sold_out | closed: nothing done
  opened:  the opening was just recorded; call again with the drawn order

Active shoppers (admitted, not finished, not expired) never exceed max_active: expired
admissions are dropped first, and only the free slots (at most batch_size) are filled.
A waiter absent from every heartbeat bitmap is skipped and uses no slot.
]]
local now = tonumber(ARGV[1])
local m = redis.call('HMGET', KEYS[1], 'opens_ms', 'closes_ms', 'opened', 'sold_out', 'closed',
  'frontier', 'next_batch_ms', 'batch_size', 'interval_ms', 'max_active', 'admission_ttl_ms')
if not m[1] then return {'no_sale', 0, 0, 0} end
if m[5] == '1' or now >= tonumber(m[2]) then return {'closed', 0, 0, 0} end
if m[4] == '1' then return {'sold_out', 0, 0, 0} end
if m[3] ~= '1' then
  if now < tonumber(m[1]) then return {'not_open', 0, 0, 0} end
  local pre = tonumber(redis.call('HGET', KEYS[1], 'pre') or '0')
  redis.call('HSET', KEYS[1], 'opened', '1', 'P', pre, 'seq', pre, 'frontier', 0)
  return {'opened', 0, 0, 0}
end

local frontier = tonumber(m[6] or '0')
if frontier ~= tonumber(ARGV[2]) then return {'stale', 0, 0, frontier} end
local due = tonumber(m[7] or '0')
if now < due then return {'wait', due - now, 0, frontier} end

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local active = redis.call('ZCARD', KEYS[2])
local slots = math.min(tonumber(m[8]), tonumber(m[10]) - active)
local expires = now + tonumber(m[11])

local admitted, skipped, consumed = 0, 0, 0
if slots > 0 then
  for i = 3, #ARGV do
    local j = tonumber(ARGV[i])
    consumed = consumed + 1
    local present = false
    for k = 5, #KEYS do
      if redis.call('GETBIT', KEYS[k], j) == 1 then present = true; break end
    end
    if present then
      redis.call('ZADD', KEYS[2], expires, j)
      redis.call('SETBIT', KEYS[3], j, 1)
      admitted = admitted + 1
      if admitted >= slots then break end
    else
      skipped = skipped + 1
    end
  end
end

if consumed > 0 then
  frontier = frontier + consumed
  redis.call('HSET', KEYS[1], 'frontier', frontier)
  redis.call('HINCRBY', KEYS[1], 'admitted_total', admitted)
  redis.call('HINCRBY', KEYS[1], 'skipped_total', skipped)
  redis.call('LPUSH', KEYS[4], ARGV[1] .. ':' .. frontier .. ':' .. admitted .. ':' .. skipped)
  redis.call('LTRIM', KEYS[4], 0, 63)
end
if admitted > 0 then
  redis.call('HSET', KEYS[1], 'next_batch_ms', now + tonumber(m[9]))
end
return {'ok', admitted, skipped, frontier}
