--[[ pay.lua: move a hold into or out of payment, so the expiry sweeper never releases a hold
whose payment is under way, and a provider outage never costs a shopper their hold.

KEYS[1]  the hold's hash
KEYS[2]  open holds sorted set
ARGV[1]  now, ms
ARGV[2]  begin | abort
ARGV[3]  abort: keep the hold at least this many ms from now

begin: held and unexpired -> paying.  Returns {ok} | {expired} | {missing} | {state, status}
abort: paying -> held, expiry pushed to at least now + ARGV[3]. Returns {ok, expiry ms}
]]
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'status', 'expires_ms', 'id')
if not h[1] then return {'missing'} end
if ARGV[2] == 'begin' then
  if h[1] ~= 'held' then return {'state', h[1]} end
  if tonumber(h[2]) <= now then return {'expired'} end
  redis.call('HSET', KEYS[1], 'status', 'paying', 'paying_since', now, 'pay_attempted', '1')
  return {'ok'}
end
if h[1] ~= 'paying' then return {'state', h[1]} end
local expires = math.max(tonumber(h[2]), now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'status', 'held', 'expires_ms', expires)
redis.call('ZADD', KEYS[2], expires, h[3])
return {'ok', expires}
