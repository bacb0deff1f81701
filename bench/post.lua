-- wrk script: POST one fixed JSON body, count responses by status, print a JSON summary.
--
-- Configured by environment, because wrk loads this file once per thread:
--   BENCH_BODY_FILE  file holding the request body (required)
--   BENCH_KEY        bearer key for the Authorization header (optional)
-- done() prints one line starting with "BENCH_JSON " for run.py to parse.

local body_file = assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is not set")
local f = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

-- Per-thread counters; done() runs in another Lua state and collects them via setup().
ok, busy, other, accepted = 0, 0, 0, 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    local n = string.match(body, '"accepted":%s*(%d+)')
    if n then accepted = accepted + tonumber(n) end
  elseif status == 503 then
    busy = busy + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local totals = { ok = 0, busy = 0, other = 0, accepted = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + thread:get(name)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"ok":%d,"busy_503":%d,"other_status":%d,' ..
    '"accepted":%d,"socket_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.duration, summary.requests, totals.ok, totals.busy, totals.other, totals.accepted,
    e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
