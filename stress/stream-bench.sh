#!/usr/bin/env bash
# Live streams on one instance: memory per stream, database load against polling at the same
# number of buyers, the delay from an admission to the buyer's `held` message, and how many
# public streams one instance holds (stress/stream-bench.py). A release build on a fresh,
# durable embedded Postgres; results in stress/results/<timestamp>-stream-bench/.
#
#   stress/stream-bench.sh            (or: just stream-bench)
#
# Knobs: BUYERS (5000), PUBLIC (15000), PHASE (15 s of polling, then of listening). Each
# stream is a socket in both processes, so the open-file limit (ulimit -n) must exceed them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$here/results/$(date +%Y%m%d-%H%M%S)-stream-bench"
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(cd "$root" && cargo build --release --quiet)
data=$(mktemp -d /tmp/flashsale-streams-XXXXXX)
chmod 755 "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
(PORT=$port DATA_DIR=$data RUST_LOG=warn RATE_LIMIT_PER_USER=0 MAX_LIVE_STREAMS=30000 MAX_STREAMS_PER_CLIENT=0 \
  exec "$root/target/release/flashsale" > "$out/service.log" 2>&1) &
service=$!
trap 'kill -TERM $service 2>/dev/null; wait $service 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 120); do curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.5; done
pg_port=$(sed -n 4p "$data/pg/postmaster.pid")
python3 "$here/stream-bench.py" "http://127.0.0.1:$port" "$service" \
  "postgres://postgres@127.0.0.1:$pg_port/flashsale" --admin-key "$ADMIN_API_KEY" \
  --buyers "${BUYERS:-5000}" --public "${PUBLIC:-15000}" --phase "${PHASE:-15}" | tee "$out/summary.txt"
curl -fsS "http://127.0.0.1:$port/metrics" > "$out/metrics.txt"
grep -E '^flashsale_(hold_push_seconds_(count|sum)|live_(notifications|refreshes)_total)' "$out/metrics.txt" | tee -a "$out/summary.txt"
