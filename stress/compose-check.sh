#!/usr/bin/env bash
# The container and the compose files, run for real with podman on a machine that has no
# Docker engine and reaches no registry (the CI's):
#
#   1. prepares podman (Debian's podman + runc, stress/compose/containers.conf) and
#      podman-compose (PyPI, in .venv) when missing;
#   2. builds the images: debian:bookworm-slim with debootstrap from the mirror apt uses,
#      postgres:15 from Debian's postgresql-15 (stress/compose/postgres/), both kept for the
#      next run; the flashsale image from target/release/flashsale (Dockerfile target
#      runtime-prebuilt, through docker-compose.yml's build section);
#   3. checks that deploy/compose/production.yml refuses missing and weak secrets, and
#      serves with real ones (buyer identity on, /metrics behind its token);
#   4. brings docker-compose.yml up with deploy/compose/stack.sh (what `just up` runs), the
#      service started LATE_POSTGRES (5) seconds before Postgres: waits for /health and
#      writes the compose.env the stress scripts read;
#   5. runs the k6 purchase-load scenario and the invariant check against it, with no
#      setting but that file;
#   6. brings everything down (always, also on failure), and prints the time of each phase.
#
#   stress/compose-check.sh            (just compose-check builds the binary first)
#
# Knobs: VUS (200) and INITIAL_STOCK (100) of the load; DEBIAN_MIRROR (the mirror apt
# uses); UP_TIMEOUT (90 s). The stacks run under project names of their own, on free
# ports, so a stack of `just up` is left alone. Needs root for apt (or the packages
# installed); the binary must exist (CI builds it; `cargo build --release`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"

binary=target/release/flashsale
venv=$root/.venv
base_image=docker.io/library/debian:bookworm-slim
pg_image=docker.io/library/postgres:15
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/compose/containers.conf}
export COMPOSE_CMD=$venv/bin/podman-compose
# Images and projects of the check, apart from what a developer runs (`flashsale:dev`).
export FLASHSALE_IMAGE=localhost/flashsale:compose-check FLASHSALE_BUILD_TARGET=runtime-prebuilt
dev_project=flashsale-check
prod_project=flashsale-check-production

log() { printf '[compose-check] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
random_hex() { python3 -c "import secrets; print(secrets.token_hex($1))"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- phases and their times -------------------------------------------------------------
phase_names=()
phase_times=()
phase_start=""
started=$EPOCHREALTIME
phase() {
  phase_end
  phase_names+=("$1")
  phase_start=$EPOCHREALTIME
  printf '\n--> %s\n' "$1" >&2
}
phase_end() {
  [ -n "$phase_start" ] || return 0
  phase_times+=("$(awk -v a="$phase_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')")
  phase_start=""
}
report_times() {
  phase_end
  local i
  printf '\ncompose check, seconds per phase:\n' >&2
  for i in "${!phase_times[@]}"; do printf '  %-40s %7s\n' "${phase_names[$i]}" "${phase_times[$i]}" >&2; done
  printf '  %-40s %7s\n' total "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')" >&2
}

# --- always leave nothing running ----------------------------------------------------------
work=$(mktemp -d /tmp/flashsale-compose-check-XXXXXX)
dev_up=""
compose_dev() { COMPOSE_PROJECT_NAME=$dev_project "$COMPOSE_CMD" "$@"; }
compose_prod() { COMPOSE_PROJECT_NAME=$prod_project "$COMPOSE_CMD" -f deploy/compose/production.yml "$@"; }
# The production file needs its secrets even to show logs or go down; any value does then.
compose_prod_any() {
  POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-x} ADMIN_API_KEY=x BUYER_TOKEN_SECRET=${BUYER_TOKEN_SECRET:-x} \
    METRICS_TOKEN=${METRICS_TOKEN:-x} compose_prod "$@"
}
teardown() {
  local status=$?
  if [ -x "$COMPOSE_CMD" ] && command -v podman >/dev/null 2>&1; then
    # stack.sh prints the log when the stack does not come up; after that, this does.
    if [ "$status" != 0 ] && [ -n "$dev_up" ]; then
      log "last lines of the flashsale log:"
      compose_dev logs --tail 40 flashsale >&2 2>&1 || true
    fi
    phase "down (volumes too)"
    compose_prod_any down -v >/dev/null 2>&1 || true
    DATA_DIR=$work COMPOSE_PROJECT_NAME=$dev_project deploy/compose/stack.sh down -v >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  report_times
  if [ "$status" = 0 ]; then log "passed"; else log "FAILED (exit $status)"; fi
  exit "$status"
}
trap teardown EXIT

# Two checks at once would share the projects' names: the second waits its turn.
mkdir -p "$root/.data"
exec 9>"$root/.data/compose-check.lock"
flock 9

# --- 1. what podman needs ----------------------------------------------------------------
phase "prepare (packages, podman-compose)"
[ -x "$binary" ] || die "$binary is missing: run cargo build --release (just compose-check does)"
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "install ${missing[*]} (apt-get install ${missing[*]}) or run as root"
  log "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! "$COMPOSE_CMD" --version >/dev/null 2>&1; then
  log "installing podman-compose 1.6.0 from PyPI into $venv"
  python3 -m venv "$venv" >/dev/null
  "$venv/bin/pip" install -q podman-compose==1.6.0
fi
# Left over by a run that was killed before its teardown: start clean.
compose_prod_any down -v >/dev/null 2>&1 || true
compose_dev down -v >/dev/null 2>&1 || true

# --- 2. images -----------------------------------------------------------------------------
# A registry image of that name (a developer's machine) is used as it is; only the
# stand-ins built here are rebuilt, when their recipe changes.
phase "base image (debootstrap, once)"
if podman image exists "$base_image"; then
  log "$base_image is here (kept from an earlier run)"
else
  # shellcheck disable=SC2016  # $(RELEASE) and $(REPO_URI) are apt's placeholders, not the shell's
  mirror=${DEBIAN_MIRROR:-$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 2>/dev/null \
    | awk '$1 == "bookworm" { print $2; exit }')}
  mirror=${mirror:-http://deb.debian.org/debian/}
  log "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  tar -C "$work/rootfs" --exclude='./var/cache/apt/archives/*.deb' -c . \
    | podman import --change 'CMD ["bash"]' --change 'LABEL flashsale.stand-in=debootstrap' - "$base_image" >/dev/null
  rm -rf "$work/rootfs"
fi

phase "postgres image (once per recipe)"
recipe=$(cat "$here/compose/postgres/Dockerfile" "$here/compose/postgres/entrypoint.sh" | sha256sum | cut -c1-16)
built=$(podman image inspect --format '{{index .Labels "flashsale.stand-in"}}' "$pg_image" 2>/dev/null || echo absent)
if [ "$built" = "$recipe" ]; then
  log "$pg_image stand-in is up to date"
elif [ "$built" = "" ] || [ "$built" = "<no value>" ]; then
  log "$pg_image is a registry image: used as it is"
else
  podman build -q --label "flashsale.stand-in=$recipe" -t "$pg_image" "$here/compose/postgres" >/dev/null
fi

phase "flashsale image (host binary)"
compose_dev build flashsale >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; die "image build failed"; }

# --- 3. the production example refuses what it must ---------------------------------------
phase "production example"
prod_port=$(free_port)
if (unset POSTGRES_PASSWORD ADMIN_API_KEY BUYER_TOKEN_SECRET METRICS_TOKEN; compose_prod config) >"$work/prod.log" 2>&1; then
  die "production.yml was accepted without its secrets"
fi
grep -q "POSTGRES_PASSWORD" "$work/prod.log" || { cat "$work/prod.log" >&2; die "production.yml did not name the missing secret"; }
# The secrets of this throw-away stack are made here and never printed.
POSTGRES_PASSWORD=$(random_hex 24)
BUYER_TOKEN_SECRET=$(random_hex 32)
METRICS_TOKEN=$(random_hex 32)
strong_key=$(random_hex 32)
export POSTGRES_PASSWORD BUYER_TOKEN_SECRET METRICS_TOKEN FLASHSALE_PUBLISH=127.0.0.1:$prod_port
if ADMIN_API_KEY=short-key compose_prod run --rm --no-deps flashsale >"$work/prod.log" 2>&1; then
  die "the service started with a 9-byte admin key"
fi
grep -q "refusing to listen on 0.0.0.0" "$work/prod.log" || { tail -20 "$work/prod.log" >&2; die "no refusal in the service's output"; }
log "refused: no secrets (compose), a short admin key (the service)"
ADMIN_API_KEY=$strong_key compose_prod up -d >"$work/prod.log" 2>&1 || { tail -20 "$work/prod.log" >&2; die "production up failed"; }
deadline=$((SECONDS + ${UP_TIMEOUT:-90}))
until curl -fsS -o /dev/null --max-time 2 "http://$FLASHSALE_PUBLISH/health" 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    compose_prod_any logs --tail 40 flashsale >&2 || true
    die "production stack not healthy"
  fi
  sleep 0.5
done
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$FLASHSALE_PUBLISH/api/v1/sales/no-such-sale/purchases" \
  -H 'Content-Type: application/json' -d '{"userId":"anyone"}')
[ "$status" = 401 ] || die "a purchase without a buyer token answered $status, not 401"
status=$(curl -s -o /dev/null -w '%{http_code}' "http://$FLASHSALE_PUBLISH/metrics")
[ "$status" = 401 ] || die "/metrics without its token answered $status, not 401"
log "healthy with real secrets; 401 for a purchase without a buyer token and for /metrics without its token"
compose_prod_any down -v >/dev/null 2>&1
unset POSTGRES_PASSWORD BUYER_TOKEN_SECRET METRICS_TOKEN FLASHSALE_PUBLISH strong_key

# --- 4. the development stack, as `just up` starts it --------------------------------------
phase "up: the service first, Postgres ${LATE_POSTGRES:-5} s later"
export FLASHSALE_PUBLISH_PORT POSTGRES_PUBLISH_PORT
FLASHSALE_PUBLISH_PORT=$(free_port)
POSTGRES_PUBLISH_PORT=$(free_port)
# No variable of the caller's (CI exports BASE_URL and DATA_DIR for its own service) may
# steer the stack or the stress run: only compose.env, as after `just up`.
unset BASE_URL DATABASE_URL ADMIN_API_KEY BUYER_TOKEN_SECRET METRICS_TOKEN
export DATA_DIR=$work
# A Postgres later than the service, on purpose: the service must wait for it or be
# restarted until it answers (podman-compose would not hold it back anyway).
compose_dev up -d --no-deps flashsale >"$work/late.log" 2>&1 || { tail -20 "$work/late.log" >&2; die "could not start the service alone"; }
sleep "${LATE_POSTGRES:-5}"
COMPOSE_PROJECT_NAME=$dev_project deploy/compose/stack.sh up
dev_up=1
# What it went through, for the log: its restarts, and its failed tries by its own account.
restarts=$(podman inspect --format '{{.RestartCount}}' "${dev_project}_flashsale_1" 2>/dev/null || echo '?')
tries=$(compose_dev logs flashsale 2>&1 | grep -cE 'does not answer|Failed to connect' || true)
log "the service came up after a late Postgres ($restarts restarts, $tries failed connection attempts logged)"
# shellcheck source=SCRIPTDIR/lib/compose-env.sh
(. "$here/lib/compose-env.sh"; compose_env_load "$root"
 [ "${BASE_URL:-}" = "http://127.0.0.1:$FLASHSALE_PUBLISH_PORT" ] && [ -n "${DATABASE_URL:-}" ]) \
  || die "the stress scripts would not find the stack from $work/compose.env"

# --- 5. load and invariants ----------------------------------------------------------------
phase "k6 purchase-load + invariants"
# WEBHOOKS=0: the runner's receiver listens on the host's loopback, which the container
# cannot reach.
WEBHOOKS=0 VUS=${VUS:-200} INITIAL_STOCK=${INITIAL_STOCK:-100} "$here/run-stress.sh" purchase-load
