-- wrk script for stress/queue-bench.sh. MODE=join: every request joins the queue of SKU as a
-- new buyer q-<thread>-<n>. MODE=poll: every request polls a random one of those buyers
-- (PER_THREAD of them per thread, as the join run left them), every POLL_MS ms if set.
local mode = os.getenv("MODE") or "poll"
local sku = os.getenv("SKU") or "queue"
local per_thread = tonumber(os.getenv("PER_THREAD") or "1000")
local thread_id = 0
local threads = {}

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end

function init(args)
  n = 0
  ok = 0
end

function request()
  if mode == "join" then
    n = n + 1
    return wrk.format("POST", "/api/v1/sales/" .. sku .. "/queue",
      { ["Content-Type"] = "application/json" },
      string.format('{"userId":"q-%d-%d"}', tid, n))
  end
  local user = string.format("q-%d-%d", math.random(1, #threads), math.random(1, per_thread))
  return wrk.format("GET", "/api/v1/sales/" .. sku .. "/queue/" .. user)
end

-- POLL_MS paces each connection (a poller waiting between polls); unset: as fast as it goes.
local pause = tonumber(os.getenv("POLL_MS") or "0")
function delay()
  return pause
end

function response(status, headers, body)
  if status == 200 or status == 202 then ok = ok + 1 end
end

function done(summary, latency, requests)
  local total_ok = 0
  for _, thread in ipairs(threads) do total_ok = total_ok + thread:get("ok") end
  local seconds = summary.duration / 1e6
  io.write(string.format("RESULT ok=%d requests=%d rate=%.1f p50=%.2f p95=%.2f p99=%.2f\n",
    total_ok, summary.requests, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
