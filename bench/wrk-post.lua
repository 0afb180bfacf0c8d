-- wrk script: 1 MiB POST bodies with 1,000 rotating user ids in x-user-id, as
-- the autocannon POST runs of bench/run.js send.
wrk.method = "POST"
wrk.body = string.rep("x", 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"

local i = 0
request = function()
  i = (i + 1) % 1000
  -- wrk.format() takes method, body and headers from wrk.*; only the id changes
  wrk.headers["x-user-id"] = "user-" .. i
  return wrk.format()
end
