#!/usr/bin/env bash
# The development compose stack (docker-compose.yml) behind `just up` / `just down`, and
# behind stress/compose-check.sh, which runs it for real in CI.
#
#   deploy/compose/stack.sh available   exit 0 when a compose command is found (below)
#   deploy/compose/stack.sh up          build, start, wait for /health, write compose.env
#   deploy/compose/stack.sh down [ARGS] stop (ARGS go to `compose down`, e.g. -v)
#
# The compose command: COMPOSE_CMD when set (e.g. ".venv/bin/podman-compose"), else
# `docker compose` when a Docker engine answers, else `podman-compose` on PATH.
#
# `up` writes ${DATA_DIR:-.data}/compose.env: the stack's BASE_URL, its DATABASE_URL and,
# unless you set your own ADMIN_API_KEY, the development key of docker-compose.yml, so
# `just psql`, `just invariants` and stress/run-stress.sh find the stack with no setting
# (stress/lib/compose-env.sh reads it). `down` removes it.
#
# Knobs: UP_TIMEOUT (seconds to wait for /health, default 90), FLASHSALE_PUBLISH_PORT and
# POSTGRES_PUBLISH_PORT (the compose file's, defaults 8080 and 5432).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
env_file=${DATA_DIR:-$root/.data}/compose.env
http_port=${FLASHSALE_PUBLISH_PORT:-8080}
pg_port=${POSTGRES_PUBLISH_PORT:-5432}

log() { printf '[compose] %s\n' "$*" >&2; }

compose_cmd() {
  local cmd
  cmd=$(find_compose) || { log "no compose command: no Docker engine answers and no podman-compose on PATH (or set COMPOSE_CMD)"; exit 2; }
  echo "$cmd"
}

find_compose() {
  if [ -n "${COMPOSE_CMD:-}" ]; then
    echo "$COMPOSE_CMD"
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 \
      && docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v podman >/dev/null 2>&1 && command -v podman-compose >/dev/null 2>&1; then
    echo podman-compose
  else
    return 1
  fi
}

# The development admin key is written once, in docker-compose.yml; read it from there so
# compose.env cannot drift from it.
dev_admin_key() {
  sed -n 's/.*ADMIN_API_KEY:-\([^}]*\)}.*/\1/p' "$root/docker-compose.yml" | head -1
}

up() {
  local cmd compose url deadline
  cmd=$(compose_cmd)
  read -ra compose <<<"$cmd"
  log "${compose[*]} up -d --build"
  "${compose[@]}" up -d --build
  # Started is not running: wait until the service answers, and say so loudly if it does
  # not (a refused configuration, a database it cannot reach, a port taken...).
  url=http://127.0.0.1:$http_port/health
  deadline=$((SECONDS + ${UP_TIMEOUT:-90}))
  local next_look=$((SECONDS + 3)) refused=""
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    # A refused configuration never heals, however often the restart policy tries: stop
    # waiting as soon as the log says so.
    if [ "$SECONDS" -ge "$next_look" ]; then
      next_look=$((SECONDS + 3))
      if "${compose[@]}" logs --tail 20 flashsale 2>&1 | grep -q 'refusing to listen'; then refused=1; fi
    fi
    if [ -n "$refused" ] || [ "$SECONDS" -ge "$deadline" ]; then
      if [ -n "$refused" ]; then
        log "FAILED: the service refuses its configuration (below); the stack is left up for \`just down\`."
      else
        log "FAILED: $url did not answer within ${UP_TIMEOUT:-90} s; the stack is left up for \`just down\`."
      fi
      "${compose[@]}" ps >&2 || true
      log "last lines of the flashsale log:"
      "${compose[@]}" logs --tail 40 flashsale >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  mkdir -p "$(dirname "$env_file")"
  (
    umask 077
    {
      echo "# Written by deploy/compose/stack.sh up (just up); removed by just down."
      echo "BASE_URL=http://127.0.0.1:$http_port"
      echo "DATABASE_URL=postgres://flashsale:flashsale@127.0.0.1:$pg_port/flashsale"
      # A key of your own stays in your environment only, never in a file.
      if [ -z "${ADMIN_API_KEY:-}" ]; then echo "ADMIN_API_KEY=$(dev_admin_key)"; fi
    } > "$env_file"
  )
  log "running: http://127.0.0.1:$http_port (Swagger UI at /docs); psql and the stress scripts read $env_file"
}

down() {
  local cmd compose
  cmd=$(compose_cmd)
  read -ra compose <<<"$cmd"
  "${compose[@]}" down "$@"
  rm -f "$env_file"
}

case ${1:-} in
  available) find_compose >/dev/null ;;
  up) up ;;
  down) shift; down "$@" ;;
  *) echo "usage: $0 available|up|down [compose down args]" >&2; exit 2 ;;
esac
