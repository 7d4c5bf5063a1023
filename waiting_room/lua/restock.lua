--[[ restock.lua: bring a warm sale's stock to an admin's new figure without ever letting
the available count go negative.

The new stock is given, not the change: running it again (a retry after PostgreSQL failed to
commit the change this was part of) changes nothing, where a change would be applied twice.

KEYS[1]  inventory hash
KEYS[2]  meta hash of the sale
ARGV[1]  the new stock (units)

Returns {ok, available} | {short, available} (the decrease exceeds what is unsold and
unheld) | {cold} (not warm yet: the pre-warm will read the new stock from PostgreSQL)
]]
if not redis.call('HGET', KEYS[1], 'warmed') then return {'cold'} end
local delta = tonumber(ARGV[1]) - tonumber(redis.call('HGET', KEYS[1], 'stock') or '0')
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
