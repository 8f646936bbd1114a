-- wrk script for stress/bench.sh: every request is an instant purchase by a new user of
-- the sale named by the SKU environment variable; the report counts the 201s.
local counter = 0
local thread_id = 0
local threads = {}
local sku = os.getenv("SKU") or "bench"
local run = os.getenv("RUN") or tostring(os.time())

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end

function init(args)
  created = 0
  other = 0
end

function request()
  counter = counter + 1
  local body = string.format('{"userId":"w-%s-%d-%d"}', run, tid, counter)
  return wrk.format("POST", "/api/v1/sales/" .. sku .. "/purchases",
    { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  if status == 201 then created = created + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local total_created, total_other = 0, 0
  for _, thread in ipairs(threads) do
    total_created = total_created + thread:get("created")
    total_other = total_other + thread:get("other")
  end
  local seconds = summary.duration / 1e6
  io.write(string.format("RESULT created=%d other=%d rate=%.1f p50=%.1f p95=%.1f p99=%.1f\n",
    total_created, total_other, total_created / seconds,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
