--[[ release.lua: end a hold or order and settle the counts, atomically.

Used for expiry, a declined payment, a cancelled hold or order (stock returns), and a hold the
database refused (status failed: the stock does not exist, so it does not return).

KEYS[1]  meta hash of the sale
KEYS[2]  inventory hash
KEYS[3]  seats bitmap
KEYS[4]  open holds sorted set
KEYS[5]  the hold's hash
KEYS[6]  shopper's units counter
KEYS[7]  orders stream
ARGV[1]  now, ms
ARGV[2]  new status: released | cancelled | failed
ARGV[3]  reason (shown to the shopper)
ARGV[4]  statuses it may leave, comma-separated (e.g. "held" or "held,paying")
ARGV[5]  inventory counter the units leave: held | sold
ARGV[6]  1: the units return to stock; 0: they do not
ARGV[7]  1: append a release event to the stream for the persister (with the status it left:
         the persister ends a `confirmed` one from PostgreSQL's `cancelling`); 0: do not
ARGV[8]  sale id

Returns {ok, quantity} | {missing} | {state, current status}
]]
local h = redis.call('HMGET', KEYS[5], 'status', 'qty', 'seats', 'id')
if not h[1] then return {'missing'} end
local allowed = false
for s in string.gmatch(ARGV[4], '[^,]+') do
  if s == h[1] then allowed = true end
end
if not allowed then return {'state', h[1]} end

local qty = tonumber(h[2])
redis.call('HSET', KEYS[5], 'status', ARGV[2], 'reason', ARGV[3], 'ended_ms', ARGV[1])
redis.call('ZREM', KEYS[4], h[4])
redis.call('HINCRBY', KEYS[2], ARGV[5], -qty)
local units = redis.call('DECRBY', KEYS[6], qty)
if units < 0 then redis.call('SET', KEYS[6], 0) end
if ARGV[6] == '1' then
  local avail = redis.call('HINCRBY', KEYS[2], 'avail', qty)
  for seat in string.gmatch(h[3] or '', '%d+') do redis.call('SETBIT', KEYS[3], seat, 0) end
  if avail > 0 then redis.call('HSET', KEYS[1], 'sold_out', '0') end
end
if ARGV[7] == '1' then
  redis.call('XADD', KEYS[7], '*', 'type', 'release', 'order', h[4], 'sale', ARGV[8],
    'status', ARGV[2], 'reason', ARGV[3], 'at', ARGV[1], 'from', h[1])
end
return {'ok', qty}
