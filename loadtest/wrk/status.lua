-- Waiting shoppers polling their place: GET .../status with X-Queue-Ticket, rotating over the
-- tickets of many waiters, echoing the heartbeat slice the last answer gave as `hb`, as the
-- client is told to. args: path, tickets file
local tickets, n, hb
init = function(args)
  path = args[1]
  tickets = read_lines(args[2])
  n = 0
end
request = function()
  n = n + 1
  local p = path
  if hb then p = p .. "?hb=" .. hb end
  return wrk.format("GET", p, {["X-Queue-Ticket"] = tickets[n % #tickets + 1]})
end
response = function(status, headers, body)
  local h = body:match('"heartbeat":(%d+)')
  if h then hb = h end
end
