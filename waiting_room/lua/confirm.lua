--[[ confirm.lua: record in Redis an order PostgreSQL has already confirmed.

KEYS[1]  inventory hash
KEYS[2]  open holds sorted set
KEYS[3]  the hold's hash
KEYS[4]  active admissions sorted set
ARGV[1]  now, ms
ARGV[2]  payment reference

The shopper is done, so their admission stops counting as active and frees a slot.
Returns {ok} | {already} | {missing} | {state, status}
]]
local h = redis.call('HMGET', KEYS[3], 'status', 'qty', 'id', 'j')
if not h[1] then return {'missing'} end
if h[1] == 'confirmed' then return {'already'} end
if h[1] ~= 'held' and h[1] ~= 'paying' then return {'state', h[1]} end
local qty = tonumber(h[2])
redis.call('HSET', KEYS[3], 'status', 'confirmed', 'payment_ref', ARGV[2],
  'confirmed_ms', ARGV[1])
redis.call('ZREM', KEYS[2], h[3])
redis.call('HINCRBY', KEYS[1], 'held', -qty)
redis.call('HINCRBY', KEYS[1], 'sold', qty)
redis.call('ZREM', KEYS[4], h[4])
return {'ok'}
