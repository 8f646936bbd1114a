#!/usr/bin/env bash
# Two instances on one durable Postgres, each loaded by its own wrk (the two halves of a
# round-robin balancer), buying instant purchases of one sale; with RETRY_PCT of requests
# (default: 0, then 5) made by buyers who also buy through the other instance at the same
# moment. Prints committed purchases/s for each mix, and checks the invariants after each.
#
#   stress/bench-two-instances.sh [BINARY]        (default target/release/flashsale)
#
# Knobs: BENCH_SECONDS (15), CONNECTIONS per instance (100), RETRY_PCTS ("0 5").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
binary=${1:-$root/target/release/flashsale}
seconds=${BENCH_SECONDS:-15}
connections=${CONNECTIONS:-100}
out="$here/results/$(date +%Y%m%d-%H%M%S)-two-instances"
mkdir -p "$out"
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data=$(mktemp -d /tmp/flashsale-two-XXXXXX)
chmod 755 "$data"
port_a=$(free_port)
DATA_DIR=$data PORT=$port_a RUST_LOG=warn RATE_LIMIT_PER_USER=0 "$binary" > "$out/a.log" 2>&1 &
a=$!
trap 'kill -TERM ${b:-} $a 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 120); do curl -fsS "http://127.0.0.1:$port_a/health" >/dev/null 2>&1 && break; sleep 0.5; done
export DATABASE_URL="postgres://postgres@127.0.0.1:$(sed -n 4p "$data/pg/postmaster.pid")/flashsale"
port_b=$(free_port)
PORT=$port_b RUST_LOG=warn RATE_LIMIT_PER_USER=0 "$binary" > "$out/b.log" 2>&1 &
b=$!
for _ in $(seq 1 120); do curl -fsS "http://127.0.0.1:$port_b/health" >/dev/null 2>&1 && break; sleep 0.5; done
failed=0
# Warm both instances and the database first: the first seconds of load run slower (new
# table pages, connection start-up), which would favour whichever mix runs second.
warm=$(date +%s)-$RANDOM
curl -fsS -X POST "http://127.0.0.1:$port_a/api/v1/admin/sales" -H "Authorization: Bearer ${ADMIN_API_KEY:-dev-admin-key}" \
  -H 'Content-Type: application/json' -d "{\"sku\":\"warm-$warm\",\"name\":\"warm\",\"stock\":10000000}" >/dev/null
for port in $port_a $port_b; do
  SKU=warm-$warm RUN=warm$port wrk -t1 -c"$connections" -d5s -s "$here/wrk-purchase-retry.lua" "http://127.0.0.1:$port" >/dev/null 2>&1 &
done
wait "$(jobs -p | tail -1)" "$(jobs -p | tail -2 | head -1)"
for pct in ${RETRY_PCTS:-0 5}; do
  sku="two-$pct-$(date +%s)-$RANDOM"
  curl -fsS -X POST "http://127.0.0.1:$port_a/api/v1/admin/sales" -H "Authorization: Bearer ${ADMIN_API_KEY:-dev-admin-key}" \
    -H 'Content-Type: application/json' -d "{\"sku\":\"$sku\",\"name\":\"two\",\"stock\":10000000}" >/dev/null
  run="r$RANDOM"
  loaders=()
  for side in a b; do
    port=$port_a; [ "$side" = b ] && port=$port_b
    SKU=$sku RUN=$run INSTANCE=$side RETRY_PCT=$pct wrk -t1 -c"$connections" -d"${seconds}s" --timeout 10s \
      -s "$here/wrk-purchase-retry.lua" "http://127.0.0.1:$port" > "$out/$pct-$side.txt" 2>&1 &
    loaders+=($!)
  done
  wait "${loaders[@]}"
  "$here/verify-invariants.sh" "$sku" > "$out/$pct-invariants.txt" 2>&1 || { failed=1; echo "FAILED invariants at $pct%"; }
  python3 - "$out/$pct-a.txt" "$out/$pct-b.txt" "$pct" <<'PY'
import re, sys
tot = {}
for f in sys.argv[1:3]:
    line = [l for l in open(f) if l.startswith("RESULT")][-1]
    for k, v in re.findall(r"(\w+)=([\d.]+)", line):
        tot.setdefault(k, []).append(float(v))
print(f"  {sys.argv[3]:>2}% retrying on the other instance: {sum(tot['rate']):8.0f} purchases/s committed, "
      f"{sum(tot['answered']):8.0f} answers/s, ALREADY_PURCHASED {int(sum(tot['repeated']))}, "
      f"other {int(sum(tot['other']))}, p99 {max(tot['p99']):.1f} ms")
PY
done > "$out/table.txt"
echo "two instances, one durable Postgres, $connections connections each, ${seconds}s per mix ($binary)"
cat "$out/table.txt"
exit "$failed"
