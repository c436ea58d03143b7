-- GET /hello/{user} spread over the seeded users (BENCH_USERS).
package.path = (os.getenv("BENCH_LUA_DIR") or ".") .. "/?.lua;" .. package.path
local users = require("users")
local requests, n, idx = {}, 0, 0

function init(_)
  for _, i in ipairs(users.indices()) do
    requests[#requests + 1] = wrk.format("GET", "/hello/" .. users.name(i))
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
