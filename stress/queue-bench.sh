#!/usr/bin/env bash
# Queued checkout figures: join rate, position-poll latency with thousands of buyers
# waiting, and the admission rate (holds granted per second) when a sale with thousands in
# its pre-queue opens. Own durable Postgres and release build, like bench.sh.
#
#   stress/queue-bench.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$here/results/$(date +%Y%m%d-%H%M%S)-queue-bench"
mkdir -p "$out"
log() { printf '[queue-bench] %s\n' "$*" >&2; }
command -v wrk >/dev/null || { log "wrk is required (apt-get install wrk)"; exit 2; }
(cd "$root" && cargo build --release --quiet)
data=$(mktemp -d /tmp/flashsale-qbench-XXXXXX); chmod 755 "$data"
# shellcheck source=stress/lib.sh
. "$here/lib.sh"
trap cleanup EXIT
port=$(free_port)
export BASE_URL=http://127.0.0.1:$port ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
(cd "$root" && PORT=$port DATA_DIR=$data RUST_LOG=warn RATE_LIMIT_PER_USER=0 \
  exec target/release/flashsale > "$out/service.log" 2>&1) &
pids+=($!)
wait_healthy "$port" "$out/service.log" $!
export DATABASE_URL="postgres://postgres@127.0.0.1:$(sed -n 4p "$data/pg/postmaster.pid")/flashsale"
admin() { curl -fsS -H "Authorization: Bearer $ADMIN_API_KEY" -H 'Content-Type: application/json' "$@"; }

# 1. Joins and polls: one unit and one hold at a time, so nearly everyone keeps waiting.
admin -X POST "$BASE_URL/api/v1/admin/sales" -d '{"sku":"qb-wait","name":"wait","stock":1,"checkout":"queued","maxActiveHolds":1}' >/dev/null
log "joining for 5 s (200 connections)"
MODE=join SKU=qb-wait wrk -t2 -c200 -d5s -s "$here/wrk-queue.lua" "$BASE_URL" > "$out/join.txt" 2>&1
join=$(grep RESULT "$out/join.txt")
waiting=$(psql -X -At "$DATABASE_URL" -c "SELECT waiting FROM sale_queues q JOIN sales s ON s.id = q.sale_id WHERE s.sku = 'qb-wait'")
per_thread=$(psql -X -At "$DATABASE_URL" -c "SELECT min(c) FROM (SELECT count(*) c FROM queue_entries e JOIN sales s ON s.id = e.sale_id WHERE s.sku = 'qb-wait' GROUP BY split_part(e.user_id, '-', 2)) t")
log "$waiting buyers waiting; polling positions for 10 s (1,000 connections)"
MODE=poll SKU=qb-wait PER_THREAD=$per_thread wrk -t2 -c1000 -d10s -s "$here/wrk-queue.lua" "$BASE_URL" > "$out/poll.txt" 2>&1
poll=$(grep RESULT "$out/poll.txt")
log "polling again, each of 1,000 pollers every 250 ms"
MODE=poll SKU=qb-wait PER_THREAD=$per_thread POLL_MS=250 wrk -t2 -c1000 -d10s -s "$here/wrk-queue.lua" "$BASE_URL" > "$out/poll-paced.txt" 2>&1
paced=$(grep RESULT "$out/poll-paced.txt")
"$here/verify-invariants.sh" qb-wait > "$out/qb-wait-invariants.txt"

# 2. Admission: 20,000 buyers in the pre-queue of a sale of 20,000 units, then it opens.
starts=$(date -u -d '+30 seconds' +%Y-%m-%dT%H:%M:%SZ)
admin -X POST "$BASE_URL/api/v1/admin/sales" -d "{\"sku\":\"qb-open\",\"name\":\"open\",\"stock\":20000,\"checkout\":\"queued\",\"startsAt\":\"$starts\"}" >/dev/null
log "filling the pre-queue until the opening at $starts"
MODE=join SKU=qb-open wrk -t2 -c200 -d20s -s "$here/wrk-queue.lua" "$BASE_URL" > "$out/prejoin.txt" 2>&1
prequeued=$(psql -X -At "$DATABASE_URL" -c "SELECT count(*) FROM queue_entries e JOIN sales s ON s.id = e.sale_id WHERE s.sku = 'qb-open'")
log "$prequeued buyers pre-queued; waiting for the opening and the admission"
for _ in $(seq 1 120); do
  left=$(psql -X -At "$DATABASE_URL" -c "SELECT waiting FROM sale_queues q JOIN sales s ON s.id = q.sale_id WHERE s.sku = 'qb-open'")
  [ "$left" = 0 ] && break
  sleep 1
done
admission=$(psql -X -At "$DATABASE_URL" -c "
  SELECT format('holds=%s seconds=%s rate=%s', count(*),
                round(extract(epoch FROM max(admitted_at) - min(admitted_at))::numeric, 2),
                round(count(*) / greatest(extract(epoch FROM max(admitted_at) - min(admitted_at)), 0.001)))
    FROM queue_entries e JOIN sales s ON s.id = e.sale_id
   WHERE s.sku = 'qb-open' AND e.admitted_at IS NOT NULL")
"$here/verify-invariants.sh" qb-open > "$out/qb-open-invariants.txt"
{
  echo "flashsale queue benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
  echo "  joins (200 connections, 5 s):            $join"
  echo "  position polls, $waiting waiting, 1,000 connections flat out: $poll"
  echo "  position polls, $waiting waiting, 1,000 pollers every 250 ms: $paced"
  echo "  admission of $prequeued pre-queued buyers at the opening: $admission"
  echo "  invariants: PASS (qb-wait, qb-open)"
} | tee "$out/table.txt"
