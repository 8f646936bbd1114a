-- wrk script for stress/bench-two-instances.sh: instant purchases of the sale SKU, each by a
-- new user, except that every (100 / RETRY_PCT)-th request uses a user id that the wrk
-- aimed at the other instance sends too, at about the same moment: a buyer retrying through
-- the other instance. Both wrk processes number their threads and requests alike, so the
-- shared ids meet. The report counts 201s and ALREADY_PURCHASED (409) separately.
local counter = 0
local thread_id = 0
local threads = {}
local sku = os.getenv("SKU") or "bench"
local run = os.getenv("RUN") or tostring(os.time())
local instance = os.getenv("INSTANCE") or "a"
local pct = tonumber(os.getenv("RETRY_PCT") or "0")
local every = pct > 0 and math.floor(100 / pct + 0.5) or 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end

function init(args)
  created = 0
  repeated = 0
  other = 0
end

function request()
  counter = counter + 1
  local user
  if every > 0 and counter % every == 0 then
    user = string.format("shared-%s-%d-%d", run, tid, counter)
  else
    user = string.format("w-%s-%s-%d-%d", run, instance, tid, counter)
  end
  return wrk.format("POST", "/api/v1/sales/" .. sku .. "/purchases",
    { ["Content-Type"] = "application/json" }, string.format('{"userId":"%s"}', user))
end

function response(status, headers, body)
  if status == 201 then created = created + 1
  elseif status == 409 then repeated = repeated + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local c, r, o = 0, 0, 0
  for _, thread in ipairs(threads) do
    c = c + thread:get("created")
    r = r + thread:get("repeated")
    o = o + thread:get("other")
  end
  local seconds = summary.duration / 1e6
  io.write(string.format("RESULT created=%d repeated=%d other=%d rate=%.1f answered=%.1f p50=%.1f p99=%.1f\n",
    c, r, o, c / seconds, (c + r + o) / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
