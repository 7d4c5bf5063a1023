--[[ hold.lua: reserve stock for an admitted shopper and record the order intent, atomically.

KEYS[1]  meta hash of the sale
KEYS[2]  active admissions sorted set
KEYS[3]  inventory hash (stock, avail, held, sold, warmed)
KEYS[4]  seats bitmap (taken seats)
KEYS[5]  open holds sorted set (order id -> expiry ms)
KEYS[6]  the new hold's hash
KEYS[7]  idempotency key string (unused when ARGV[9] is empty)
KEYS[8]  shopper's units counter
KEYS[9]  shopper's order list
KEYS[10] orders stream
ARGV[1]  now, ms
ARGV[2]  join index of the shopper's admission
ARGV[3]  visitor id
ARGV[4]  order id
ARGV[5]  quantity
ARGV[6]  hold time, ms
ARGV[7]  per-shopper limit
ARGV[8]  amount, minor units
ARGV[9]  idempotency key ('' for none)
ARGV[10] idempotency record TTL, ms
ARGV[11] sale id
ARGV[12..] seated sales: alternative seat choices, best first, each "s1,s2,..."

Returns {status, ...}
  ok, order id, expiry ms, seats csv, units left | existing, order id | no_sale | closed
  not_admitted
  not_warm | sold_out | limit, units the shopper may still take | insufficient, units left
  seats_taken
Checks come before any write, so a refusal changes nothing. The available count can never go
negative: it is compared before it is decremented, by the same script.
]]
local now = tonumber(ARGV[1])
local qty = tonumber(ARGV[5])

if ARGV[9] ~= '' then
  local prior = redis.call('GET', KEYS[7])
  if prior then return {'existing', prior} end
end

local m = redis.call('HMGET', KEYS[1], 'closes_ms', 'closed')
if not m[1] then return {'no_sale'} end
if m[2] == '1' or now >= tonumber(m[1]) then return {'closed'} end

local admitted_until = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not admitted_until or tonumber(admitted_until) <= now then return {'not_admitted'} end

local inv = redis.call('HMGET', KEYS[3], 'avail', 'warmed')
if not inv[2] then return {'not_warm'} end
local avail = tonumber(inv[1])

local units = tonumber(redis.call('GET', KEYS[8]) or '0')
local limit = tonumber(ARGV[7])
if units + qty > limit then return {'limit', limit - units} end

if avail <= 0 then
  redis.call('HSET', KEYS[1], 'sold_out', '1')
  return {'sold_out'}
end
if avail < qty then return {'insufficient', avail} end

local chosen = ''
if #ARGV >= 12 then
  for i = 12, #ARGV do
    local free = true
    for seat in string.gmatch(ARGV[i], '%d+') do
      if redis.call('GETBIT', KEYS[4], seat) == 1 then free = false; break end
    end
    if free then chosen = ARGV[i]; break end
  end
  if chosen == '' then return {'seats_taken'} end
  for seat in string.gmatch(chosen, '%d+') do redis.call('SETBIT', KEYS[4], seat, 1) end
end

local left = redis.call('HINCRBY', KEYS[3], 'avail', -qty)
redis.call('HINCRBY', KEYS[3], 'held', qty)
redis.call('INCRBY', KEYS[8], qty)
local expires = now + tonumber(ARGV[6])
redis.call('HSET', KEYS[6], 'id', ARGV[4], 'sale', ARGV[11], 'visitor', ARGV[3],
  'j', ARGV[2], 'qty', qty, 'seats', chosen, 'status', 'held', 'expires_ms', expires,
  'created_ms', ARGV[1], 'amount', ARGV[8], 'idem', ARGV[9], 'limit', ARGV[7])
redis.call('ZADD', KEYS[5], expires, ARGV[4])
redis.call('RPUSH', KEYS[9], ARGV[4])
if ARGV[9] ~= '' then redis.call('SET', KEYS[7], ARGV[4], 'PX', ARGV[10]) end
redis.call('XADD', KEYS[10], '*', 'type', 'hold', 'order', ARGV[4], 'sale', ARGV[11],
  'visitor', ARGV[3], 'j', ARGV[2], 'qty', qty, 'seats', chosen, 'expires_ms', expires,
  'amount', ARGV[8], 'idem', ARGV[9], 'limit', ARGV[7], 'at', ARGV[1])
if left == 0 then redis.call('HSET', KEYS[1], 'sold_out', '1') end
return {'ok', ARGV[4], expires, chosen, left}
