-- Shared by get.lua and put.lua: the seeded user names and the JSON result.
-- User i (0-based) is "user" followed by i written in base 26 with five
-- letters a-z, the same rule bench.py uses to seed the databases.
local M = {}

function M.name(i)
  local s = ""
  for _ = 1, 5 do
    s = string.char(97 + i % 26) .. s
    i = math.floor(i / 26)
  end
  return "user" .. s
end

-- Requests are built once in init() so the per-request cost in wrk is a
-- table lookup; with many users a fixed-size random sample keeps that cost
-- (and wrk's memory) the same whatever the number of seeded users.
M.sample_cap = 65536

function M.indices()
  local n = tonumber(os.getenv("BENCH_USERS") or "1000")
  local out = {}
  if n <= M.sample_cap then
    for i = 0, n - 1 do out[#out + 1] = i end
  else
    math.randomseed(tonumber(os.getenv("BENCH_SEED") or "42"))
    for _ = 1, M.sample_cap do out[#out + 1] = math.random(0, n - 1) end
  end
  return out
end

-- One JSON line for bench.py: wrk's counters and latency percentiles (us).
function M.report(summary, latency)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end

return M
