#!/usr/bin/env bash
# Webhooks through a crash: two instances on one database, a receiver that fails 30% of
# deliveries at random and is down for a few seconds, and a kill -9 of one instance in the
# middle of a buying burst (then a restart). Passes when, in the end, every purchase in the
# table was delivered and verified by the official Python `standardwebhooks` library, no
# delivery failed verification, every event that was refused was later delivered with the
# same webhook-id, and the sale's invariants (including the outbox's) hold.
#
#   stress/webhook-crash.sh          (or: just webhook-crash)
#
# Knobs: STOCK (20000), BURST_SECONDS (6), CONNECTIONS (200), FAIL_PERCENT (30), and the
# retry policy of both instances: WEBHOOK_BACKOFF_BASE_MS (100), WEBHOOK_BACKOFF_MAX_SECS (5),
# WEBHOOK_CONNECT_TIMEOUT_MS (1000), WEBHOOK_TIMEOUT_MS (2000): shorter than the service's
# defaults (1 s, 1 h, 5 s, 10 s), so the run checks what is delivered rather than waiting
# out the backoff of the few deliveries that fail eight times in a row.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$here/results/$(date +%Y%m%d-%H%M%S)-webhook-crash"
mkdir -p "$out"
stock=${STOCK:-20000}
burst=${BURST_SECONDS:-6}
connections=${CONNECTIONS:-200}
log() { printf '[webhook-crash] %s\n' "$*" >&2; }
# shellcheck source=stress/lib.sh
. "$here/lib.sh"

command -v wrk >/dev/null || { log "wrk is required (apt-get install wrk)"; exit 2; }
venv="$root/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null || "$venv/bin/pip" install -q standardwebhooks
(cd "$root" && cargo build --release --quiet)
bin="$root/target/release/flashsale"

data=$(mktemp -d /tmp/flashsale-crash-XXXXXX)
chmod 755 "$data"
port_a=$(free_port); port_b=$(free_port); port_r=$(free_port)
export ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
export WEBHOOK_BACKOFF_BASE_MS=${WEBHOOK_BACKOFF_BASE_MS:-100} WEBHOOK_BACKOFF_MAX_SECS=${WEBHOOK_BACKOFF_MAX_SECS:-5}
# The receiver answers at once: short timeouts make the killed instance's claims (leased for
# 2 x (connect + answer) + 5 s) come back after 11 s instead of 35 s.
export WEBHOOK_CONNECT_TIMEOUT_MS=${WEBHOOK_CONNECT_TIMEOUT_MS:-1000} WEBHOOK_TIMEOUT_MS=${WEBHOOK_TIMEOUT_MS:-2000}
trap cleanup EXIT

log "instance A on $port_a (embedded Postgres), receiver on $port_r"
(PORT=$port_a DATA_DIR=$data RUST_LOG=warn RATE_LIMIT_PER_USER=0 WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8 exec "$bin" > "$out/a.log" 2>&1) &
pids+=($!)
wait_healthy "$port_a"
pg_port=$(sed -n 4p "$data/pg/postmaster.pid")
export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/flashsale"
start_b() {
  (PORT=$port_b RUST_LOG=warn RATE_LIMIT_PER_USER=0 WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8 exec "$bin" >> "$out/b.log" 2>&1) &
  pid_b=$!
  pids+=("$pid_b")
}
start_b
wait_healthy "$port_b"
"$venv/bin/python" "$here/webhook-receiver.py" --port "$port_r" --secret-file "$out/secret" \
  --fail-percent "${FAIL_PERCENT:-30}" --down-file "$out/down" --log "$out/deliveries.jsonl" \
  2> "$out/receiver.log" &
pids+=($!)

base_a=http://127.0.0.1:$port_a
answer=$(curl -fsS -X POST "$base_a/api/v1/admin/webhooks" -H "Authorization: Bearer $ADMIN_API_KEY" \
  -H 'Content-Type: application/json' -d "{\"url\":\"http://127.0.0.1:$port_r/hook\"}")
python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])' <<<"$answer" > "$out/secret"
sku="crash-$(date +%s)-$RANDOM"
curl -fsS -X POST "$base_a/api/v1/admin/sales" -H "Authorization: Bearer $ADMIN_API_KEY" \
  -H 'Content-Type: application/json' -d "{\"sku\":\"$sku\",\"name\":\"crash\",\"stock\":$stock}" >/dev/null

log "burst: ${burst}s of new buyers through both instances; kill -9 of B after 1 s"
loads=()
for port in $port_a $port_b; do
  SKU=$sku RUN="crash-$port" wrk -t1 -c"$((connections / 2))" -d"${burst}s" --timeout 10s \
    -s "$here/wrk-purchase.lua" "http://127.0.0.1:$port" > "$out/wrk-$port.txt" 2>&1 &
  loads+=($!)
done
sleep 1
kill -9 "$pid_b"
log "B killed (-9); receiver down for 3 s"
touch "$out/down"
sleep 3
rm -f "$out/down"
start_b
wait_healthy "$port_b"
log "B restarted"
wait "${loads[@]}" 2>/dev/null || true
sleep 1

purchases=$(psql -X -At "$DATABASE_URL" -c "SELECT count(*) FROM purchases p JOIN sales s ON s.id = p.sale_id WHERE s.sku = '$sku'")
log "$purchases purchases committed; waiting for every delivery"
deadline=$((SECONDS + ${WAIT_SECONDS:-300}))
while :; do
  # Every purchase in, and every event refused at some point delivered since.
  done_yet=$(curl -fsS "http://127.0.0.1:$port_r/stats" | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(int(s['purchasesBySku'].get('$sku', 0) >= $purchases and s['refusedEvents'] == s['refusedEventsDeliveredLater']))")
  [ "$done_yet" = 1 ] && break
  [ $SECONDS -lt $deadline ] || break
  sleep 1
done
psql -X -At "$DATABASE_URL" -c "SELECT p.id FROM purchases p JOIN sales s ON s.id = p.sale_id WHERE s.sku = '$sku'" | sort > "$out/purchases.txt"
python3 - "$out/deliveries.jsonl" "$sku" <<'PY' | sort -u > "$out/delivered.txt"
import json, sys
for line in open(sys.argv[1]):
    entry = json.loads(line)
    event = entry["event"]
    if entry["webhookId"] != event["id"]:
        print("MISMATCH", entry["webhookId"])
    if event["type"] == "purchase.created" and event["sku"] == sys.argv[2]:
        print(event["data"]["id"])
PY
missing=$(comm -23 "$out/purchases.txt" "$out/delivered.txt" | wc -l)
stats=$(curl -fsS "http://127.0.0.1:$port_r/stats")
echo "$stats" > "$out/receiver-stats.json"
failed=0
if ! "$here/verify-invariants.sh" "$sku" > "$out/invariants.txt" 2>&1; then failed=1; cat "$out/invariants.txt"; fi
python3 - "$stats" "$purchases" "$missing" <<'PY' || failed=1
import json, sys
stats, purchases, missing = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(f"purchases {purchases}, delivered and verified {purchases - missing}, missing {missing}; "
      f"requests {stats['received']}, refused {stats['refused']} ({stats['refusedEvents']} events), "
      f"refused events delivered later with the same webhook-id {stats['refusedEventsDeliveredLater']}, "
      f"unverified {stats['unverified']}, max lag {stats['maxLagSeconds']} s")
ok = (missing == 0 and purchases > 0 and stats["unverified"] == 0 and stats["refused"] > 0
      and stats["refusedEvents"] == stats["refusedEventsDeliveredLater"])
sys.exit(0 if ok else 1)
PY
grep -q MISMATCH "$out/delivered.txt" && { log "a delivery's webhook-id was not its event's id"; failed=1; }
[ "$failed" = 0 ] && log "PASS (results in $out)" || log "FAIL (results in $out)"
exit "$failed"
