-- wrk script for stress/bench-queue.sh. Every request is a new buyer <RUN>-<thread>-<n>:
--   MODE=join      POST /api/v1/sales/SKU/queue {"userId": ...}
--   MODE=purchase  POST /api/v1/sales/SKU/purchases {"userId": ...}
--   MODE=enter     POST /api/v1/sales/SKU/entries {"userId": ...} (a raffle)
--   MODE=live      GET /health/live (the floor: no database work)
--   VARIANTS=N     with MODE=purchase: each purchase names variant vK, K = 1..N in turn
-- TARGET (join only; 0 = no limit): the run's successful joins, split over THREADS threads.
-- A thread sends a new join only while its successes plus joins in flight are below its
-- share (a refused join is replaced by a new buyer), sends GET /health/live every 250 ms
-- per connection meanwhile, and stops once its share is in: the pre-queue gets TARGET
-- buyers. Should the count of joins in flight go wrong (a join lost with its connection),
-- it is taken as 0 after 3 s without any join answered (the joins still in flight, if any,
-- become extra buyers). The caller ends wrk (SIGINT) once the database holds TARGET buyers.
local mode = os.getenv("MODE") or "join"
local variants = tonumber(os.getenv("VARIANTS") or "0")
local sku = os.getenv("SKU") or "bench"
local run = os.getenv("RUN") or tostring(os.time())
local target = tonumber(os.getenv("TARGET") or "0")
local thread_count = tonumber(os.getenv("THREADS") or "1")
local ok_status = ({ join = 202, purchase = 201, enter = 202, live = 200 })[mode]
local thread_id = 0
local threads = {}
local filler_request = wrk.format("GET", "/health/live")

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end

-- Globals, not top-level locals: a top-level local would shadow what thread:set sets.
function init(args)
  n = 0
  ok = 0
  inflight = 0
  statuses = {}
  last_answer = os.time()
  -- wrk calls the first thread's request() once before the run to check what it returns
  -- (script_verify_request) and never sends that request.
  unsent = tid == 1
  budget = 0
  if mode == "join" and target > 0 then
    budget = math.floor(target / thread_count)
    if tid <= target % thread_count then budget = budget + 1 end
  end
end

-- Waiting for the last joins of the thread's share: no new join for now.
local function share_pending()
  if budget == 0 or ok + inflight < budget then return false end
  if inflight > 0 and os.time() - last_answer >= 3 then
    inflight = 0
    last_answer = os.time()
    return ok >= budget
  end
  return true
end

function request()
  if unsent then
    unsent = false
    return filler_request
  end
  if mode == "live" then return filler_request end
  if share_pending() then return filler_request end
  n = n + 1
  inflight = inflight + 1
  local path = ({ join = "/queue", purchase = "/purchases", enter = "/entries" })[mode]
  local body
  if variants > 0 then
    -- VARIANTS=N: purchases name the variants v1..vN in turn.
    body = string.format('{"userId":"%s-%d-%d","variant":"v%d"}', run, tid, n, n % variants + 1)
  else
    body = string.format('{"userId":"%s-%d-%d"}', run, tid, n)
  end
  return wrk.format("POST", "/api/v1/sales/" .. sku .. path,
    { ["Content-Type"] = "application/json" }, body)
end

-- Only with a TARGET (a delay() function costs every request a timer): the filler requests
-- of a thread waiting for its last joins go out every 250 ms per connection, not flat out.
if target > 0 then
  function delay()
    if share_pending() then return 250 end
    return 0
  end
end

function response(status, headers, body)
  -- With a TARGET, a 200 answers a filler request (a join answers 202 or an error).
  if budget > 0 and status == 200 then return end
  if mode ~= "live" then
    inflight = inflight - 1
    last_answer = os.time()
  end
  if status == ok_status then
    ok = ok + 1
  else
    statuses[status] = (statuses[status] or 0) + 1
  end
  if budget > 0 and ok >= budget and inflight <= 0 then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local total_ok = 0
  local by_status = {}
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    for status, count in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + count
    end
  end
  local keys = {}
  for status in pairs(by_status) do table.insert(keys, status) end
  table.sort(keys)
  local parts = {}
  for _, status in ipairs(keys) do table.insert(parts, status .. ":" .. by_status[status]) end
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT ok=%d requests=%d seconds=%.2f rate=%.1f answers=%.1f p50=%.1f p99=%.1f statuses=%s errors=%d\n",
    total_ok, summary.requests, seconds, total_ok / seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    #parts > 0 and table.concat(parts, ",") or "-",
    e.connect + e.read + e.write + e.timeout))
end
