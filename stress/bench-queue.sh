#!/usr/bin/env bash
# The queue benchmark (issue 16): what a waiting room costs, against the floor, on a durable
# Postgres of its own (fsync and synchronous_commit on), for one release binary or two.
#
#   stress/bench-queue.sh [BINARY]              (default target/release/flashsale; just bench-queue)
#   stress/bench-queue.sh BINARY_A BINARY_B     A B B A: parts 1 and 2 for A, B, B, A
#
# 1. wrk, CONNECTIONS connections, DURATION each, every request a new buyer: the floor
#    (GET /health/live, no database), instant purchases (stock too large to sell out),
#    joins of a queued sale opening in a day (the pre-queue), joins of a queued sale already
#    open (stock and queue capacity too large to refuse anyone). Successful answers per
#    second, the rows committed per second (counted in Postgres), answers per second, p50,
#    p99, and every non-2xx answer by status.
# 2. The opening: a queued sale of OPEN_STOCK units (holds of 600 s, no cap on live holds)
#    whose pre-queue wrk fills with PREQUEUE buyers through the join route (at most
#    FILL_SECONDS); then it opens (at its startsAt, or, when that is further than OPEN_LEAD s
#    away, its starts_at is moved to now() + OPEN_LEAD s with psql, with its due jobs), and
#    Postgres tells opening -> first hold and opening -> HOLDS_MARK holds (min(admitted_at) and
#    the HOLDS_MARK-th admitted_at, minus starts_at), waiting at most OPEN_WAIT s.
# 3. The queue journey (k6, stress/scenarios/queue-journey.js through stress/run-stress.sh;
#    5,000 VUs at STAGE_SCALE=1, stock JOURNEY_STOCK) once per binary: join p50/p95, join ->
#    hold p50/p95/p99, the floor beside them.
# Each round (and each journey) runs on a fresh database and service. Results go to
# stress/results/<timestamp>-bench-queue/ (git-ignored); the table is table.txt there.
#
# Knobs: CONNECTIONS (1000), DURATION (15s), THREADS (2), WARMUP (3 s of purchases first, 0
# skips), PREQUEUE (100000), FILL_SECONDS (120), FILL_CONNECTIONS (CONNECTIONS), OPEN_STOCK
# (20000), HOLDS_MARK (10000), OPEN_WAIT (60), OPEN_LEAD (3), STAGE_SCALE (1), JOURNEY_STOCK
# (20000), POST_STOCK (10000000: every post-opening joiner is admitted as they join, the
# dearest case; a real drop's stock is far below its crowd), WEBHOOKS (0: no webhook receiver in the journey), PARTS ("1 2 3"), K6_CMD,
# ADMIN_API_KEY.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

binaries=()
for arg in "${@:-$root/target/release/flashsale}"; do
  [ -x "$arg" ] || { echo "not an executable: $arg (build with cargo build --release)" >&2; exit 2; }
  binaries+=("$(cd "$(dirname "$arg")" && pwd)/$(basename "$arg")")
done
[ "${#binaries[@]}" -le 2 ] || { echo "usage: $0 [BINARY_A [BINARY_B]]" >&2; exit 2; }

connections=${CONNECTIONS:-1000}
seconds=${DURATION:-15s}; seconds=${seconds%s}
threads=${THREADS:-2}
warmup=${WARMUP:-3}
prequeue=${PREQUEUE:-100000}
fill_seconds=${FILL_SECONDS:-120}
fill_connections=${FILL_CONNECTIONS:-$connections}
open_stock=${OPEN_STOCK:-20000}
holds_mark=${HOLDS_MARK:-10000}
open_wait=${OPEN_WAIT:-60}
open_lead=${OPEN_LEAD:-3}
stage_scale=${STAGE_SCALE:-1}
journey_stock=${JOURNEY_STOCK:-20000}
post_stock=${POST_STOCK:-10000000}
parts=" ${PARTS:-1 2 3} "
export ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
lua="$here/wrk-bench-queue.lua"

out="$here/results/$(date +%Y%m%d-%H%M%S)-bench-queue"
mkdir -p "$out"
rows="$out/rows.txt"
: > "$rows"
log() { printf '[bench-queue %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v wrk >/dev/null || { log "wrk is required (apt-get install wrk)"; exit 2; }
command -v psql >/dev/null || { log "psql is required"; exit 2; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Everything this script starts is stopped on the way out, however it ends.
pids=()
dirs=()
cleanup() {
  local pid dir
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for dir in "${dirs[@]}"; do stop_cluster "$dir"; done
}
# The service's watchdog stops its cluster when the service exits; should it not have (yet),
# stop it here so no server outlives the folder.
stop_cluster() {
  local dir=$1
  for _ in $(seq 1 20); do [ -f "$dir/pg/postmaster.pid" ] || break; sleep 0.5; done
  if [ -f "$dir/pg/postmaster.pid" ]; then
    local bindir
    bindir=$(pg_config --bindir 2>/dev/null || dirname "$(command -v pg_ctl)")
    runuser -u postgres -- "$bindir/pg_ctl" stop -D "$dir/pg" -m immediate >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts BINARY on a fresh durable embedded cluster: sets svc, data, base, db.
start_service() {  # binary label [VAR=value ...]
  local bin=$1 label=$2 port
  shift 2
  data=$(mktemp -d /tmp/flashsale-qbench-XXXXXX)
  chmod 755 "$data"
  dirs+=("$data")
  port=$(free_port)
  base=http://127.0.0.1:$port
  env DATA_DIR="$data" PORT="$port" HOST=127.0.0.1 RUST_LOG=warn ADMIN_API_KEY="$ADMIN_API_KEY" "$@" \
    "$bin" > "$out/$label-service.log" 2>&1 &
  svc=$!
  pids+=("$svc")
  for _ in $(seq 1 240); do
    curl -fsS "$base/health" >/dev/null 2>&1 && break
    kill -0 "$svc" 2>/dev/null || { log "the service exited:"; tail -20 "$out/$label-service.log" >&2; exit 2; }
    sleep 0.5
  done
  curl -fsS "$base/health" >/dev/null || { log "the service did not become healthy"; exit 2; }
  db="postgres://postgres@127.0.0.1:$(sed -n 4p "$data/pg/postmaster.pid")/flashsale"
  durability=$(q "SELECT 'fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit')")
  log "$label: $bin on $base ($durability)"
}

stop_service() {
  kill -TERM "$svc" 2>/dev/null || true
  wait "$svc" 2>/dev/null || true
  stop_cluster "$data"
  local kept=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$svc" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}

q() { psql -X -q -At -v ON_ERROR_STOP=1 "$db" -c "$1"; }

create_sale() {  # JSON body; prints the sale's id
  curl -fsS -X POST "$base/api/v1/admin/sales" -H "Authorization: Bearer $ADMIN_API_KEY" \
    -H 'Content-Type: application/json' -d "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}

iso() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }

# One wrk run: prints its RESULT line (the raw output is kept in FILE).
load() {  # file mode sku seconds
  env MODE="$2" SKU="$3" RUN="b$RANDOM$RANDOM-$2" THREADS="$threads" \
    wrk -t"$threads" -c"$connections" -d"$4s" --timeout 10s -s "$lua" "$base" > "$1" 2>&1 || true
  grep '^RESULT' "$1" | tail -1 || echo "RESULT ok=0 requests=0 seconds=$4 rate=0 answers=0 p50=- p99=- statuses=wrk-failed errors=0"
}

checked=()
verify() {  # sku
  if DATABASE_URL=$db timeout 120 "$here/verify-invariants.sh" "$1" > "$out/$round-$1-invariants.txt" 2>&1; then
    checked+=("$1:PASS")
  else
    checked+=("$1:FAIL")
  fi
}

# Part 1: the floor, purchases, pre-queue joins, post-opening joins.
part1() {
  local r sku id n
  if [ "$warmup" != 0 ]; then
    create_sale '{"sku":"warm","name":"warm-up","stock":10000000}' >/dev/null
    load "$out/$round-warmup.txt" purchase warm "$warmup" >/dev/null
  fi
  log "round $round ($label): floor, GET /health/live, ${seconds}s"
  r=$(load "$out/$round-floor.txt" live - "$seconds")
  echo "load round=$round bin=$label load=floor in_db=- $r" >> "$rows"

  log "round $round ($label): instant purchases"
  sku=purchase-$round
  id=$(create_sale "{\"sku\":\"$sku\",\"name\":\"purchases\",\"stock\":10000000}")
  r=$(load "$out/$round-purchase.txt" purchase "$sku" "$seconds")
  sleep 1
  n=$(q "SELECT count(*) FROM purchases WHERE sale_id = '$id'")
  echo "load round=$round bin=$label load=purchase in_db=$n $r" >> "$rows"
  verify "$sku"

  log "round $round ($label): pre-queue joins (the sale opens in a day)"
  sku=prequeue-$round
  id=$(create_sale "{\"sku\":\"$sku\",\"name\":\"pre-queue joins\",\"stock\":10000000,\"checkout\":\"queued\",\"startsAt\":\"$(iso $(($(date +%s) + 86400)))\",\"queueCapacity\":10000000}")
  r=$(load "$out/$round-prequeue.txt" join "$sku" "$seconds")
  sleep 1
  n=$(q "SELECT count(*) FROM queue_entries WHERE sale_id = '$id'")
  echo "load round=$round bin=$label load=prequeue in_db=$n $r" >> "$rows"
  verify "$sku"

  log "round $round ($label): post-opening joins (an open sale: everyone is admitted)"
  sku=open-joins-$round
  id=$(create_sale "{\"sku\":\"$sku\",\"name\":\"post-opening joins\",\"stock\":$post_stock,\"checkout\":\"queued\",\"queueCapacity\":10000000,\"holdSeconds\":86400}")
  sleep 1
  r=$(load "$out/$round-postopen.txt" join "$sku" "$seconds")
  sleep 1
  n=$(q "SELECT count(*) FROM queue_entries WHERE sale_id = '$id'")
  echo "load round=$round bin=$label load=postopen in_db=$n $r" >> "$rows"
  # Let the admission of the last joiners finish before the next part (at most 15 s).
  for _ in $(seq 1 30); do
    [ "$(q "SELECT count(*) FROM queue_entries WHERE sale_id = '$id' AND status = 'queued'")" = 0 ] && break
    sleep 0.5
  done
  verify "$sku"
}

# Part 2: fill a pre-queue, open the sale, time the first hold and the HOLDS_MARK-th.
part2() {
  local sku=opening-$round id starts fill_pid started now count last_log n filled moved remaining
  starts=$(($(date +%s) + fill_seconds + 10))
  id=$(create_sale "{\"sku\":\"$sku\",\"name\":\"opening\",\"stock\":$open_stock,\"checkout\":\"queued\",\"startsAt\":\"$(iso "$starts")\",\"holdSeconds\":600,\"queueCapacity\":10000000,\"maxActiveHolds\":0}")
  log "round $round ($label): filling the pre-queue with $prequeue buyers (at most ${fill_seconds}s, $fill_connections connections)"
  env MODE=join SKU="$sku" RUN="f$RANDOM$RANDOM" TARGET="$prequeue" THREADS="$threads" \
    wrk -t"$threads" -c"$fill_connections" -d"$((fill_seconds + 5))s" --timeout 30s -s "$lua" "$base" \
    > "$out/$round-fill.txt" 2>&1 &
  fill_pid=$!
  pids+=("$fill_pid")
  started=$(date +%s)
  last_log=$started
  while kill -0 "$fill_pid" 2>/dev/null; do
    sleep 1
    # Before the opening nobody is admitted, so the queue row's counter is the pre-queue
    # (one row read, not a count over up to a million entries, every second).
    count=$(q "SELECT waiting FROM sale_queues WHERE sale_id = '$id'" 2>/dev/null ||
            q "SELECT count(*) FROM queue_entries WHERE sale_id = '$id'")
    now=$(date +%s)
    [ "$count" -ge "$prequeue" ] && break
    [ $((now - started)) -ge "$fill_seconds" ] && break
    if [ $((now - last_log)) -ge 10 ]; then log "  $count in the pre-queue after $((now - started)) s"; last_log=$now; fi
  done
  kill -INT "$fill_pid" 2>/dev/null || true
  wait "$fill_pid" 2>/dev/null || true
  sleep 1
  n=$(q "SELECT count(*) FROM queue_entries WHERE sale_id = '$id' AND prequeue")
  filled=$(q "SELECT round(extract(epoch FROM max(joined_at) - min(joined_at))::numeric, 1) FROM queue_entries WHERE sale_id = '$id'")
  log "  $n buyers in the pre-queue (joined over ${filled:-0} s)"
  remaining=$(q "SELECT extract(epoch FROM starts_at - now())::int FROM sales WHERE id = '$id'")
  moved=at-startsAt
  if [ "$remaining" -gt $((open_lead + 1)) ]; then
    # Open early: starts_at (and the sale's jobs due at the old opening) to now() + OPEN_LEAD,
    # so the service's own opening, not a job woken late, is what is timed.
    q "WITH old AS (SELECT starts_at FROM sales WHERE id = '$id'),
            s AS (UPDATE sales SET starts_at = now() + make_interval(secs => $open_lead)
                   WHERE id = '$id' RETURNING starts_at)
       UPDATE jobs SET run_at = (SELECT starts_at FROM s)
        WHERE sale_id = '$id' AND dead_at IS NULL AND lock_token IS NULL
          AND run_at > (SELECT starts_at FROM s) AND run_at <= (SELECT starts_at FROM old)" >/dev/null
    moved="psql(+${open_lead}s)"
    remaining=$open_lead
  fi
  local mark=$holds_mark all=""
  [ "$n" -lt "$mark" ] && { mark=$n; all="(all)"; }
  [ "$open_stock" -lt "$mark" ] && { mark=$open_stock; all="(stock)"; }
  log "  opening in ${remaining}s; waiting for $mark holds (at most ${open_wait}s after the opening)"
  sleep "$((remaining > 0 ? remaining : 0))"
  local deadline=$(($(date +%s) + open_wait)) held=0
  while [ "$(date +%s)" -lt "$deadline" ] && [ "$mark" -gt 0 ]; do
    held=$(q "SELECT held + sold FROM sales WHERE id = '$id'")
    [ "$held" -ge "$mark" ] && break
    sleep 0.5
  done
  local first nth shuffle holds
  first=$(q "SELECT round(extract(epoch FROM (SELECT min(admitted_at) FROM queue_entries WHERE sale_id = '$id')
                                         - (SELECT starts_at FROM sales WHERE id = '$id'))::numeric, 2)")
  nth=$(q "SELECT round(extract(epoch FROM e.admitted_at - s.starts_at)::numeric, 2)
             FROM queue_entries e JOIN sales s ON s.id = e.sale_id
            WHERE e.sale_id = '$id' AND e.admitted_at IS NOT NULL
            ORDER BY e.admitted_at OFFSET $((mark > 0 ? mark - 1 : 0)) LIMIT 1")
  shuffle=$(q "SELECT round(extract(epoch FROM q.shuffled_at - s.starts_at)::numeric, 2)
                 FROM sale_queues q JOIN sales s ON s.id = q.sale_id WHERE q.sale_id = '$id'" 2>/dev/null || echo "?")
  holds=$(q "SELECT count(*) FROM queue_entries WHERE sale_id = '$id' AND admitted_at IS NOT NULL")
  # The pre-queue's real size: joins in flight when wrk stopped may have committed since.
  n=$(q "SELECT count(*) FROM queue_entries WHERE sale_id = '$id' AND prequeue")
  echo "open round=$round bin=$label prequeue=$n target=$prequeue fill=${filled:--} opened=$moved shuffle=${shuffle:--} first=${first:--} mark=$mark$all nth=${nth:--} holds=$holds wait=$open_wait" >> "$rows"
  log "  first hold ${first:--} s, hold $mark ${nth:--} s after the opening; $holds holds"
  verify "$sku"
}

# Part 3: the k6 queue journey through the stress runner, on a fresh service with its
# default settings (as run-stress.sh starts one).
part3() {
  local status=0 results limit
  limit=$(python3 -c "print(int(420 * $stage_scale) + 360)")
  log "journey ($label): STAGE_SCALE=$stage_scale, stock $journey_stock (at most ${limit}s)"
  env BASE_URL="$base" DATABASE_URL="$db" INITIAL_STOCK="$journey_stock" STAGE_SCALE="$stage_scale" \
    WEBHOOKS="${WEBHOOKS:-0}" FLASHSALE_BIN="$svc_bin" \
    timeout -k 30 "$limit" "$here/run-stress.sh" queue-journey > "$out/journey-$label.txt" 2>&1 || status=$?
  results=$(sed -n 's/^\[stress\] results in \([^;]*\);.*/\1/p' "$out/journey-$label.txt" | tail -1)
  echo "journey bin=$label status=$status dir=${results:--}" >> "$rows"
  log "  journey exit $status, results in ${results:--}"
}

labels=(A B)
order=(0)
[ "${#binaries[@]}" = 2 ] && order=(0 1 1 0)
round=0
for index in "${order[@]}"; do
  round=$((round + 1))
  label=${labels[$index]}
  case "$parts" in *" 1 "*|*" 2 "*) ;; *) continue ;; esac
  start_service "${binaries[$index]}" "$round-$label" RATE_LIMIT_PER_USER=0 MAX_STREAMS_PER_CLIENT=0
  echo "db round=$round bin=$label $durability" | tr -s ' ' >> "$rows"
  case "$parts" in *" 1 "*) part1 ;; esac
  case "$parts" in *" 2 "*) part2 ;; esac
  echo "invariants round=$round bin=$label ${checked[*]:-none}" >> "$rows"
  checked=()
  stop_service
done
case "$parts" in
  *" 3 "*)
    for index in "${!binaries[@]}"; do
      label=${labels[$index]}
      svc_bin=${binaries[$index]}
      start_service "$svc_bin" "journey-$label"
      part3
      stop_service
    done ;;
esac

settings="$connections connections (wrk, $threads threads), ${seconds}s per load; pre-queue $prequeue (fill <= ${fill_seconds}s), stock $open_stock"
python3 "$here/bench-queue-table.py" "$rows" "$settings" "${binaries[@]}" | tee "$out/table.txt"
log "results in $out"
