-- Admitted shoppers holding one unit: POST .../holds with their admission token and a fresh
-- Idempotency-Key, rotating over many admitted shoppers. args: path, tokens file
local tokens, n, prefix
init = function(args)
  path = args[1]
  tokens = read_lines(args[2])
  n = 0
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  prefix = string.format("wrk-%d-%d", os.time(), math.random(1, 1e9))
end
request = function()
  n = n + 1
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. tokens[n % #tokens + 1],
    ["Idempotency-Key"] = prefix .. "-" .. n,
    ["Content-Type"] = "application/json",
  }, '{"quantity":1}')
end
