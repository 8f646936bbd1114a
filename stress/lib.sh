# shellcheck shell=bash
# Helpers the stress scripts share (pgbouncer-pass.sh, webhook-crash.sh, queue-bench.sh).
# Source it after defining `log` (the script's own prefix) and setting `data` (the
# throwaway folder the EXIT trap removes); add every process the script starts to `pids`.

pids=()

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The EXIT trap: ends every process in `pids` and removes `data`.
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  rm -rf "${data:?}"
}

# wait_healthy PORT [LOG PID]: waits (up to 60 s) until the instance on PORT answers
# /health, else exits 2. With LOG and PID: gives up as soon as PID has died, and shows the
# end of LOG (without backtrace lines).
wait_healthy() {
  for _ in $(seq 1 240); do
    curl -fsS "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return
    if [ -n "${3:-}" ]; then kill -0 "$3" 2>/dev/null || break; fi
    sleep 0.25
  done
  log "the instance on $1 did not become healthy"
  if [ -n "${2:-}" ]; then grep -v '^ \+[0-9]*:\|^ \+at ' "$2" | tail -8 >&2; fi
  exit 2
}
