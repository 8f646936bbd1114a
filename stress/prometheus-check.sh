#!/usr/bin/env bash
# A real Prometheus scrapes a running flashsale and answers a PromQL query for one of its
# series; fails loudly otherwise. Also checks the committed Prometheus configurations with
# promtool. Needs Debian's `prometheus` package (installed when missing, as root).
#
#   BASE_URL=http://127.0.0.1:8080 [METRICS_TOKEN=...] stress/prometheus-check.sh
#
# METRICS_TOKEN, when set, is sent as a bearer token from a file (authorization
# credentials_file), as a production config would; it is never printed.
# QUERY (default: a gauge every instance exports from its start) and TIMEOUT_S can be changed.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BASE_URL:?BASE_URL: the running service, e.g. http://127.0.0.1:8080}"
query=${QUERY:-'flashsale_event_streams_open{job="flashsale"}'}
timeout_s=${TIMEOUT_S:-60}

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# kubernetes.yml names a token file that exists only inside the cluster: syntax only.
promtool check config deploy/prometheus/prometheus.yml
promtool check config --syntax-only deploy/prometheus/kubernetes.yml

work=$(mktemp -d /tmp/flashsale-prometheus-XXXXXX)
prometheus_pid=
cleanup() {
  [ -z "$prometheus_pid" ] || { kill -TERM "$prometheus_pid" 2>/dev/null; wait "$prometheus_pid" 2>/dev/null; }
  rm -rf "$work"
}
trap cleanup EXIT

read -r scheme target path < <(python3 -c '
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(u.scheme, u.netloc, u.path.rstrip("/") + "/metrics")' "$BASE_URL")
auth=
if [ -n "${METRICS_TOKEN:-}" ]; then
  (umask 077; printf '%s' "$METRICS_TOKEN" > "$work/metrics-token")
  auth="    authorization:
      type: Bearer
      credentials_file: $work/metrics-token"
fi
cat > "$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: flashsale
    scheme: $scheme
    metrics_path: $path
$auth
    static_configs:
      - targets: ["$target"]
YAML
promtool check config "$work/prometheus.yml"

prometheus_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
api=http://127.0.0.1:$prometheus_port/api/v1
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prometheus_port" --log.level=warn > "$work/prometheus.log" 2>&1 &
prometheus_pid=$!

# Prints the number of series the query returns (0 while Prometheus is starting up).
series() {
  curl -fsS --get "$api/query" --data-urlencode "query=$query" 2>/dev/null \
    | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["data"]["result"]))' 2>/dev/null \
    || echo 0
}
start=$SECONDS
until [ "$(series)" -gt 0 ]; do
  if [ $((SECONDS - start)) -ge "$timeout_s" ] || ! kill -0 "$prometheus_pid" 2>/dev/null; then
    echo "FAILED: no result for $query from Prometheus scraping $BASE_URL within ${timeout_s}s" >&2
    echo "-- the target as Prometheus sees it:" >&2
    curl -fsS "$api/targets" 2>/dev/null | python3 -c '
import json, sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    print(t["scrapeUrl"], t["health"], t["lastError"])' >&2 || echo "(Prometheus does not answer)" >&2
    echo "-- Prometheus log:" >&2
    tail -20 "$work/prometheus.log" >&2
    exit 1
  fi
  sleep 1
done
curl -fsS --get "$api/query" --data-urlencode "query=$query" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    print("  ", r["metric"], "=", r["value"][1])'
echo "Prometheus scraped $BASE_URL and answered $query in $((SECONDS - start)) s"
