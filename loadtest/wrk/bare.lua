-- The baseline: GET the bare Starlette endpoint. args: path
init = function(args) path = args[1] end
request = function() return wrk.format("GET", path) end
