#!/usr/bin/env bash
# The k6 pass through PgBouncer in transaction mode (CI runs it; `just pgbouncer`): Debian's
# pgbouncer (1.18: no prepared statements across transactions) with deploy/pgbouncer's
# configuration on a loopback port, in front of a throwaway Postgres; flashsale with
# DATABASE_POOLER=transaction through it, LISTEN and migrations on DATABASE_SESSION_URL. Then
# the purchase burst and the queue journey of stress/run-stress.sh, each followed by the
# invariant check, and the service's log must show no database error.
#
#   stress/pgbouncer-pass.sh [FLASHSALE_BIN]
#
# Knobs: POOLER (transaction; `none`: the service as it was, which pgbouncer refuses at
# connect for its start-up `options`; with IGNORE_OPTIONS=1 as well, pgbouncer drops them
# and lets it in, to show the prepared-statement failures), VUS (200),
# INITIAL_STOCK (100), SCENARIOS ("purchase-load queue-journey"), DIRECT=1 (first the same
# scenarios against an instance straight on Postgres, for comparison), POOL_SIZE (the
# pooler's server connections, 4: fewer than the service's, so transactions change server
# connection all the time), K6_CMD.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$here/results/$(date +%Y%m%d-%H%M%S)-pgbouncer"
mkdir -p "$out"
log() { printf '[pgbouncer] %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

pgbouncer=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
[ -x "$pgbouncer" ] || die "no pgbouncer (apt-get install pgbouncer)"
bin=${1:-${FLASHSALE_BIN:-}}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --quiet)
  bin="$root/target/release/flashsale"
fi
export ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}

data=$(mktemp -d /tmp/flashsale-pgbouncer-XXXXXX)
chmod 755 "$data"   # the embedded cluster and pgbouncer run as postgres when this runs as root
# shellcheck source=stress/lib.sh
. "$here/lib.sh"
trap cleanup EXIT
started=$(date +%s)

# Postgres: the embedded cluster of a direct instance (it also serves DIRECT=1's run).
direct_port=$(free_port)
(PORT=$direct_port DATA_DIR=$data RUST_LOG=warn WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8 \
  exec "$bin" > "$out/direct.log" 2>&1) &
pids+=($!)
wait_healthy "$direct_port" "$out/direct.log" $!
pg_port=$(sed -n 4p "$data/pg/postmaster.pid")
psql -h 127.0.0.1 -p "$pg_port" -U postgres -XAtqc 'CREATE DATABASE flashsale_pooled' postgres

# PgBouncer: deploy/pgbouncer/pgbouncer.ini with the lines marked "local:" made local.
pgb_port=$(free_port)
printf '"postgres" ""\n' > "$data/userlist.txt"
sed -e "s|^flashsale = .*|flashsale = host=127.0.0.1 port=$pg_port dbname=flashsale_pooled|" \
    -e "s|^listen_port = .*|listen_port = $pgb_port|" \
    -e "s|^auth_type = .*|auth_type = trust|" \
    -e "s|^auth_file = .*|auth_file = $data/userlist.txt|" \
    -e "s|^default_pool_size = .*|default_pool_size = ${POOL_SIZE:-4}|" \
    "$root/deploy/pgbouncer/pgbouncer.ini" > "$data/pgbouncer.ini"
if [ "${IGNORE_OPTIONS:-0}" = 1 ]; then
  sed -i 's|^ignore_startup_parameters = .*|ignore_startup_parameters = extra_float_digits, options|' "$data/pgbouncer.ini"
fi
chmod 644 "$data/pgbouncer.ini" "$data/userlist.txt"
as_postgres=()
[ "$(id -u)" = 0 ] && as_postgres=(runuser -u postgres --)
"${as_postgres[@]}" "$pgbouncer" "$data/pgbouncer.ini" > "$out/pgbouncer.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 40); do
  psql -h 127.0.0.1 -p "$pgb_port" -U postgres -XAtqc 'select 1' flashsale >/dev/null 2>&1 && break
  sleep 0.25
done
log "$("$pgbouncer" --version | head -1) on $pgb_port (transaction mode, ${POOL_SIZE:-4} server connections) in front of Postgres on $pg_port"

# flashsale through it.
pooled_port=$(free_port)
pooler=${POOLER:-transaction}
(PORT=$pooled_port RUST_LOG=warn WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8 DB_STARTUP_WAIT_MS=5000 \
  DATABASE_URL="postgres://postgres@127.0.0.1:$pgb_port/flashsale" \
  DATABASE_SESSION_URL="postgres://postgres@127.0.0.1:$pg_port/flashsale_pooled" \
  DATABASE_POOLER=$pooler exec "$bin" > "$out/pooled.log" 2>&1) &
pids+=($!)
wait_healthy "$pooled_port" "$out/pooled.log" $!
log "flashsale (DATABASE_POOLER=$pooler) on $pooled_port, ready $(( $(date +%s) - started )) s after the start"

run() {  # label port database
  local label=$1 status=0 scenario
  for scenario in ${SCENARIOS:-purchase-load queue-journey}; do
    log "$label: $scenario"
    BASE_URL=http://127.0.0.1:$2 DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/$3" \
      VUS=${VUS:-200} INITIAL_STOCK=${INITIAL_STOCK:-100} STAGE_SCALE=${STAGE_SCALE:-0.05} \
      HOLD_SECONDS=${HOLD_SECONDS:-5} FLOOR=${FLOOR:-0} DASHBOARD=0 PROGRESS_INTERVAL=0 \
      "$here/run-stress.sh" "$scenario" > "$out/$label-$scenario.txt" 2>&1 || status=1
    grep -E 'purchase_success|http_req_duration\{endpoint:(purchase|queue_join|queue_confirm)\}|INVARIANTS|✗' \
      "$out/$label-$scenario.txt" | head -20 >&2 || true
  done
  return "$status"
}

failed=0
if [ "${DIRECT:-0}" = 1 ]; then
  run direct "$direct_port" flashsale || failed=1
fi
run pooled "$pooled_port" flashsale_pooled || failed=1

# No statement of the pooled instance may have failed on the database's side.
if grep -Ei 'prepared statement|error returned from database|database error|protocol' "$out/pooled.log" >&2; then
  log "the pooled instance logged database errors (above)"; failed=1
fi
psql -h 127.0.0.1 -p "$pgb_port" -U postgres -XAc 'SHOW STATS' pgbouncer 2>/dev/null \
  | sed -n '1p;/^flashsale|/p' > "$out/pgbouncer-stats.txt" || true
log "through pgbouncer: $(awk -F'|' 'NR>1 {print $2" transactions, "$3" queries"}' "$out/pgbouncer-stats.txt")"
log "$( [ $failed = 0 ] && echo PASSED || echo FAILED ) in $(( $(date +%s) - started )) s; logs under $out"
exit "$failed"
