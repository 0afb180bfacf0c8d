-- wrk script: 1,000 rotating user ids in x-user-id, as the autocannon runs use.
local i = 0
request = function()
  i = (i + 1) % 1000
  return wrk.format("GET", "/", { ["x-user-id"] = "user-" .. i })
end
