--[[ restock.lua: apply an admin's stock change to a warm sale without ever letting the
available count go negative.

KEYS[1]  inventory hash
KEYS[2]  meta hash of the sale
ARGV[1]  change in stock (units, may be negative)

Returns {ok, available} | {short, available} (the decrease exceeds what is unsold and
unheld) | {cold} (not warm yet: the pre-warm will read the new stock from PostgreSQL)
]]
if not redis.call('HGET', KEYS[1], 'warmed') then return {'cold'} end
local delta = tonumber(ARGV[1])
local avail = tonumber(redis.call('HGET', KEYS[1], 'avail') or '0')
if avail + delta < 0 then return {'short', avail} end
avail = redis.call('HINCRBY', KEYS[1], 'avail', delta)
redis.call('HINCRBY', KEYS[1], 'stock', delta)
if avail > 0 then
  redis.call('HSET', KEYS[2], 'sold_out', '0')
else
  redis.call('HSET', KEYS[2], 'sold_out', '1')
end
return {'ok', avail}
