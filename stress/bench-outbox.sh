#!/usr/bin/env bash
# The outbox benchmark, on a durable embedded Postgres and a release build:
# 1. purchase throughput (wrk, 1,000 buyers, every request a new buyer) with no webhook
#    endpoint against one endpoint whose receiver answers at once, as A B B A;
# 2. a 20,000-unit sale bought out as fast as wrk can, then: how long after the last
#    purchase the last delivery arrived (the lag), and the delivery rate;
# 3. the floor: the same receiver's own HTTP rate (GET /stats, wrk), beside the delivery rate.
# Results go to stress/results/<timestamp>-bench-outbox/ (git-ignored).
#
#   stress/bench-outbox.sh         (or: just bench-outbox)
#
# Knobs: BENCH_SECONDS (15), BUYERS (1000), SALE_STOCK (20000), WEBHOOK_CONCURRENCY (16).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$here/results/$(date +%Y%m%d-%H%M%S)-bench-outbox"
mkdir -p "$out"
seconds=${BENCH_SECONDS:-15}
buyers=${BUYERS:-1000}
stock=${SALE_STOCK:-20000}
log() { printf '[bench-outbox] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
command -v wrk >/dev/null || { log "wrk is required (apt-get install wrk)"; exit 2; }
venv="$root/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null || "$venv/bin/pip" install -q standardwebhooks
ulimit -n 65536 2>/dev/null || true
(cd "$root" && cargo build --release --quiet)

data=$(mktemp -d /tmp/flashsale-outbox-XXXXXX)
chmod 755 "$data"
port=$(free_port); rport=$(free_port)
base=http://127.0.0.1:$port
export ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
(PORT=$port DATA_DIR=$data RUST_LOG=warn RATE_LIMIT_PER_USER=0 WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8 exec "$root/target/release/flashsale" \
  > "$out/service.log" 2>&1) &
service=$!
"$venv/bin/python" "$here/webhook-receiver.py" --port "$rport" --secret-file "$out/secret" \
  2> "$out/receiver.log" &
receiver=$!
trap 'kill -TERM $service $receiver 2>/dev/null; wait $service 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 120); do curl -fsS "$base/health" >/dev/null 2>&1 && break; sleep 0.5; done
admin=(-H "Authorization: Bearer $ADMIN_API_KEY" -H 'Content-Type: application/json')
new_sale() { curl -fsS -X POST "$base/api/v1/admin/sales" "${admin[@]}" \
  -d "{\"sku\":\"$1\",\"name\":\"bench\",\"stock\":$2}" >/dev/null; }
stats() { curl -fsS "http://127.0.0.1:$rport/stats"; }
hook=""
add_hook() {
  local answer
  answer=$(curl -fsS -X POST "$base/api/v1/admin/webhooks" "${admin[@]}" \
    -d "{\"url\":\"http://127.0.0.1:$rport/hook\",\"events\":[\"purchase.created\"]}")
  hook=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$answer")
  python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])' <<<"$answer" > "$out/secret"
}
drop_hook() { curl -fsS -X DELETE "$base/api/v1/admin/webhooks/$hook" "${admin[@]}" >/dev/null; hook=""; }
buy() {  # name sku -> purchases/s
  SKU=$2 RUN="$1-$RANDOM" wrk -t2 -c"$buyers" -d"${seconds}s" --timeout 10s \
    -s "$here/wrk-purchase.lua" "$base" > "$out/$1.txt" 2>&1
  sed -n 's/.*RESULT created=\([0-9]*\).*rate=\([0-9.]*\).*/\2/p' "$out/$1.txt" | tail -1
}

log "1. purchases/s at $buyers buyers, ${seconds}s each: none, endpoint, endpoint, none"
rates=()
for step in none endpoint endpoint none; do
  [ "$step" = endpoint ] && add_hook
  sku="tp-$step-$RANDOM"
  new_sale "$sku" 10000000
  rate=$(buy "throughput-$step-$RANDOM" "$sku")
  rates+=("$step=$rate")
  log "  $step: $rate purchases/s"
  # Deleting the endpoint drops its backlog, so the next run starts without one.
  [ -n "$hook" ] && drop_hook
  sleep 2
done

log "2. a $stock-unit sale bought out, delivered to a receiver that answers at once"
add_hook
sku="sellout-$RANDOM"
new_sale "$sku" "$stock"
before=$(stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["verified"])')
SKU=$sku RUN="sellout-$RANDOM" wrk -t2 -c"$buyers" -d"10s" --timeout 10s \
  -s "$here/wrk-purchase.lua" "$base" > "$out/sellout.txt" 2>&1 &
load=$!
started=$(date +%s.%N)
while :; do
  sold=$(curl -fsS "$base/api/v1/admin/sales/$sku" "${admin[@]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sold"])')
  [ "$sold" -ge "$stock" ] && break
  sleep 0.05
done
sold_out=$(date +%s.%N)
kill "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true
while :; do
  got=$(stats | python3 -c "import json,sys; print(json.load(sys.stdin)['purchasesBySku'].get('$sku', 0))")
  [ "$got" -ge "$stock" ] && break
  sleep 0.05
done
done_at=$(date +%s.%N)
after=$(stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["verified"])')

log "3. the receiver's own HTTP floor: wrk straight at GET /stats (no signature check)"
wrk -t1 -c16 -d5s "http://127.0.0.1:$rport/stats" > "$out/receiver-floor.txt" 2>&1
floor=$(awk '/Requests\/sec/ {print int($2)}' "$out/receiver-floor.txt")

python3 - "$started" "$sold_out" "$done_at" "$stock" "$((after - before))" "$floor" "${rates[@]}" <<'PY' | tee "$out/summary.txt"
import sys
started, sold_out, done_at = map(float, sys.argv[1:4])
stock, delivered, floor = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rates = [kv.split("=") for kv in sys.argv[7:]]
none = [float(r) for k, r in rates if k == "none"]
endpoint = [float(r) for k, r in rates if k == "endpoint"]
print("purchase throughput (A B B A):", ", ".join(f"{k} {float(r):,.0f}/s" for k, r in rates))
ratio = (sum(endpoint) / len(endpoint)) / (sum(none) / len(none))
print(f"  with one endpoint / with none: {ratio:.0%} (target >= 80%)")
print(f"sell-out of {stock:,}: sold in {sold_out - started:.1f} s; last delivery {done_at - sold_out:.1f} s "
      f"after the sell-out (the lag); {delivered:,} deliveries in {done_at - started:.1f} s = "
      f"{delivered / (done_at - started):,.0f}/s overall, "
      f"{delivered / max(done_at - sold_out, 0.001):,.0f}/s after the sell-out")
print(f"floor: the receiver alone answers {floor:,} requests/s (GET /stats, wrk, 16 connections)")
PY
