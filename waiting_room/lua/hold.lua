--[[ hold.lua: reserve stock for an admitted shopper and record the order intent, atomically.
Runs after seating.lua (scripts.py joins them), whose choose_seats seats a party.

KEYS[1]  meta hash of the sale
KEYS[2]  active admissions sorted set
KEYS[3]  inventory hash (stock, avail, held, sold, warmed)
KEYS[4]  seats bitmap (taken seats)
KEYS[5]  open holds sorted set (order id -> expiry ms)
KEYS[6]  the new hold's hash
KEYS[7]  idempotency record: "order id:request fingerprint" (unused when ARGV[9] is empty)
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
ARGV[12] fingerprint of the request the key is bound to ('' when no key)
ARGV[13] seated sale, seats the shopper named: "s1,s2,..." ('' otherwise)
ARGV[14] seated sale, a party for the venue to seat: its rows, as choose_seats takes them
         ('' otherwise)

Returns {status, ...}
  ok, order id, expiry ms, seats csv, units left | existing, order id | no_sale | closed
  key_reused, order id (the key was first sent with another request)
  not_admitted
  not_warm | sold_out | limit, units the shopper may still take | insufficient, units left
  seats_taken (a named seat is no longer free)
Checks come before any write, so a refusal changes nothing. The available count can never go
negative: it is compared before it is decremented, by the same script. A party's seats are
chosen here, on the bitmap as it is at this instant, so no other hold can take them first.
]]
local now = tonumber(ARGV[1])
local qty = tonumber(ARGV[5])

if ARGV[9] ~= '' then
  local prior = redis.call('GET', KEYS[7])
  if prior then
    -- a record written before fingerprints were kept is a bare order id: it matches anything
    local order, fingerprint = string.match(prior, '^([^:]*):?(.*)$')
    if fingerprint ~= '' and fingerprint ~= ARGV[12] then return {'key_reused', order} end
    return {'existing', order}
  end
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
if ARGV[13] ~= '' then
  for seat in string.gmatch(ARGV[13], '%d+') do
    if redis.call('GETBIT', KEYS[4], seat) == 1 then return {'seats_taken'} end
  end
  chosen = ARGV[13]
elseif ARGV[14] ~= '' then
  chosen = choose_seats(redis.call('GET', KEYS[4]) or '', ARGV[14], qty)
  if chosen == '' then return {'insufficient', avail} end
end
for seat in string.gmatch(chosen, '%d+') do redis.call('SETBIT', KEYS[4], seat, 1) end

local left = redis.call('HINCRBY', KEYS[3], 'avail', -qty)
redis.call('HINCRBY', KEYS[3], 'held', qty)
redis.call('INCRBY', KEYS[8], qty)
local expires = now + tonumber(ARGV[6])
redis.call('HSET', KEYS[6], 'id', ARGV[4], 'sale', ARGV[11], 'visitor', ARGV[3],
  'j', ARGV[2], 'qty', qty, 'seats', chosen, 'status', 'held', 'expires_ms', expires,
  'created_ms', ARGV[1], 'amount', ARGV[8], 'idem', ARGV[9], 'idem_fp', ARGV[12],
  'limit', ARGV[7])
redis.call('ZADD', KEYS[5], expires, ARGV[4])
redis.call('RPUSH', KEYS[9], ARGV[4])
if ARGV[9] ~= '' then redis.call('SET', KEYS[7], ARGV[4] .. ':' .. ARGV[12], 'PX', ARGV[10]) end
redis.call('XADD', KEYS[10], '*', 'type', 'hold', 'order', ARGV[4], 'sale', ARGV[11],
  'visitor', ARGV[3], 'j', ARGV[2], 'qty', qty, 'seats', chosen, 'expires_ms', expires,
  'amount', ARGV[8], 'idem', ARGV[9], 'idem_fp', ARGV[12], 'limit', ARGV[7], 'at', ARGV[1])
if left == 0 then redis.call('HSET', KEYS[1], 'sold_out', '1') end
return {'ok', ARGV[4], expires, chosen, left}
