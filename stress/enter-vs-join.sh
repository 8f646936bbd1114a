#!/bin/bash
# Raffle entries against queue joins on one service: wrk, 1,000 connections, 15 s a load, in
# the order floor join enter enter join floor (every request a new buyer; the queued sale
# admits everyone). Usage: stress/enter-vs-join.sh BINARY (run it under flock
# /tmp/flashsale-load.lock on a shared machine; needs wrk, and runuser for the clean-up).
set -u
bin=$1; lua=$(cd "$(dirname "$0")" && pwd)/wrk-bench-queue.lua
data=$(mktemp -d /tmp/fs-evj-XXXX); chmod 755 $data
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'); base=http://127.0.0.1:$port; KEY=dev-admin-key
DATA_DIR=$data PORT=$port RUST_LOG=warn RATE_LIMIT_PER_USER=0 MAX_STREAMS_PER_CLIENT=0 setsid $bin > $data/service.log 2>&1 &
svc=$!
for _ in $(seq 1 120); do curl -fsS $base/health >/dev/null 2>&1 && break; sleep 0.5; done
mk() { curl -fsS -X POST $base/api/v1/admin/sales -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$1" >/dev/null; }
mk '{"sku":"evj-q","name":"q","stock":10000000,"checkout":"queued","queueCapacity":10000000}'
mk '{"sku":"evj-r","name":"r","stock":100,"checkout":"raffle"}'
sleep 2
for round in 1-live 1-join 2-enter 3-enter 4-join 5-live; do
  mode=${round#*-}; sku=$([ $mode = join ] && echo evj-q || echo evj-r)
  r=$(env MODE=$mode SKU=$sku RUN="e$RANDOM$round" THREADS=2 wrk -t2 -c1000 -d15s --timeout 10s -s $lua $base 2>&1 | grep RESULT)
  echo "$round $r"
done
kill -TERM $svc; wait $svc 2>/dev/null
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $data/pg stop -m fast >/dev/null 2>&1
rm -rf $data
