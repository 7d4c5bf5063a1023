-- The row-lock purchase (loadtest/apps.py): POST /rowlock/SALE/purchase. args: path
local n
init = function(args) path = args[1]; n = 0 end
request = function()
  n = n + 1
  return wrk.format("POST", path, {["X-Visitor-Id"] = "v" .. n, ["Content-Length"] = "0"})
end
