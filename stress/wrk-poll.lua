-- wrk script for stress/bench.sh: each connection is a poller that reads the public sale
-- view (path in SALE_PATH) every POLL_MS milliseconds (default 100: 1,000 connections make
-- about 10,000 requests/s), so latency is measured at that load, not at wrk's ceiling.
local path = os.getenv("SALE_PATH") or "/health"
local pause = tonumber(os.getenv("POLL_MS") or "100")

function request()
  return wrk.format("GET", path)
end

function delay()
  return pause
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format("RESULT requests=%d errors=%d rate=%.1f p50=%.2f p95=%.2f p99=%.2f\n",
    summary.requests, summary.errors.status + summary.errors.timeout + summary.errors.read,
    summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
