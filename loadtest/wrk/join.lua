-- First-time visitors joining the waiting room: POST .../join without a visitor id, so the
-- API issues one (and its cookie), as for a browser arriving at the sale. args: path
init = function(args) path = args[1] end
request = function() return wrk.format("POST", path, {["Content-Length"] = "0"}) end
