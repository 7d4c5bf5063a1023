--[[ prewarm.lua: load a sale's availability into Redis, fenced.

KEYS[1]  meta hash of the sale
KEYS[2]  inventory hash
KEYS[3]  seats bitmap
ARGV[1]  1: overwrite a sale already warm (repair); 0: refuse
ARGV[2]  stock
ARGV[3]  available units
ARGV[4]  held units
ARGV[5]  sold units
ARGV[6]  warm-up stamp (ms)
ARGV[7]  1: seated sale, ARGV[8] is the taken-seats bitmap; 0: quantity sale
ARGV[8]  taken-seats bitmap (bytes)

Once a sale is warm its live counters belong to the hold scripts: a second pre-warm would
resurrect sold stock, so it is refused unless forced by a repair.
Returns {ok} | {already_warm, stamp}
]]
local warmed = redis.call('HGET', KEYS[2], 'warmed')
if warmed and ARGV[1] ~= '1' then return {'already_warm', warmed} end
redis.call('HSET', KEYS[2], 'stock', ARGV[2], 'avail', ARGV[3], 'held', ARGV[4],
  'sold', ARGV[5], 'warmed', ARGV[6])
if ARGV[7] == '1' then
  if ARGV[8] ~= '' then
    redis.call('SET', KEYS[3], ARGV[8])
  else
    redis.call('DEL', KEYS[3])
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[1], 'sold_out', '0')
else
  redis.call('HSET', KEYS[1], 'sold_out', '1')
end
return {'ok'}
