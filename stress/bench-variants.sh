#!/bin/bash
# A 10-variant drop against one variant of the same total stock, and against a sale without
# variants, on one service: wrk, 1,000 connections, 15 s a load, every request a new buyer of
# one unit, stock too large to sell out. Order: floor ten one plain plain one ten floor (A B B
# A), each run's committed purchases a second. Usage: stress/bench-variants.sh BINARY (run it
# under flock /tmp/flashsale-load.lock on a shared machine; needs wrk, and runuser for the
# clean-up). Ends with the invariant audit of each sale.
set -u
bin=$1; lua=$(cd "$(dirname "$0")" && pwd)/wrk-bench-queue.lua
seconds=${BENCH_SECONDS:-15}
data=$(mktemp -d /tmp/fs-var-XXXX); chmod 755 "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'); base=http://127.0.0.1:$port; KEY=dev-admin-key
DATA_DIR=$data PORT=$port RUST_LOG=warn RATE_LIMIT_PER_USER=0 setsid "$bin" > "$data/service.log" 2>&1 &
svc=$!
for _ in $(seq 1 120); do curl -fsS "$base/health" >/dev/null 2>&1 && break; sleep 0.5; done
mk() { curl -fsS -X POST "$base/api/v1/admin/sales" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$1" >/dev/null; }
ten=$(python3 -c 'import json; print(json.dumps([{"code": f"v{k}", "stock": 1000000} for k in range(1, 11)]))')
mk "{\"sku\":\"var-ten\",\"name\":\"ten\",\"variants\":$ten}"
mk '{"sku":"var-one","name":"one","variants":[{"code":"v1","stock":10000000}]}'
mk '{"sku":"var-plain","name":"plain","stock":10000000}'
for round in 1-live 2-ten 3-one 4-plain 5-plain 6-one 7-ten 8-live; do
  mode=${round#*-}
  case $mode in
    ten) env_=(MODE=purchase SKU=var-ten VARIANTS=10) ;;
    one) env_=(MODE=purchase SKU=var-one VARIANTS=1) ;;
    plain) env_=(MODE=purchase SKU=var-plain) ;;
    live) env_=(MODE=live SKU=var-plain) ;;
  esac
  r=$(env "${env_[@]}" RUN="v$RANDOM$round" THREADS=2 wrk -t2 -c1000 -d"${seconds}s" --timeout 10s -s "$lua" "$base" 2>&1 | grep RESULT)
  echo "$round $r"
done
for sku in var-ten var-one var-plain; do
  curl -fsS "$base/api/v1/admin/sales/$sku/audit" -H "Authorization: Bearer $KEY" \
    | python3 -c 'import json,sys; a=json.load(sys.stdin); print(sys.argv[1], "audit", "PASS" if all(c["passed"] for c in a["checks"]) else "FAIL " + json.dumps(a))' "$sku"
done
kill -TERM $svc; wait $svc 2>/dev/null
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$data/pg" stop -m fast >/dev/null 2>&1
rm -rf "$data"
