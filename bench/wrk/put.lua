-- PUT /hello/{user} with a valid JSON body, spread over the seeded users
-- (BENCH_USERS): every request is an update of an existing row.
package.path = (os.getenv("BENCH_LUA_DIR") or ".") .. "/?.lua;" .. package.path
local users = require("users")
local requests, n, idx = {}, 0, 0

function init(_)
  local headers = { ["Content-Type"] = "application/json" }
  for k, i in ipairs(users.indices()) do
    -- Dates vary so updates really change rows; all are in the past.
    local body = string.format('{"dateOfBirth":"%04d-%02d-%02d"}',
      1950 + k % 50, 1 + k % 12, 1 + k % 28)
    requests[#requests + 1] = wrk.format("PUT", "/hello/" .. users.name(i), headers, body)
  end
  n = #requests
end

function request()
  idx = idx % n + 1
  return requests[idx]
end

function done(summary, latency, _)
  users.report(summary, latency)
end
