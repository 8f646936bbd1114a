#!/usr/bin/env bash
# Checks a sale's invariants straight in Postgres with psql and stress/invariants.sql.
#
#   stress/verify-invariants.sh SKU
#
# Uses DATABASE_URL, else the compose stack's database after `just up` (.data/compose.env),
# else the embedded cluster running under .data/pg. Exits non-zero when any invariant fails
# (or the sale does not exist).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
sku=${1:?usage: verify-invariants.sh SKU}
# shellcheck source=SCRIPTDIR/lib/compose-env.sh
. "$here/lib/compose-env.sh"
compose_env_load "$root"

if [ -n "${DATABASE_URL:-}" ]; then
  target=("$DATABASE_URL")
else
  pid_file="${DATA_DIR:-$root/.data}/pg/postmaster.pid"
  [ -f "$pid_file" ] || { echo "no DATABASE_URL, no compose stack (just up) and no embedded cluster at $pid_file" >&2; exit 2; }
  target=(-h 127.0.0.1 -p "$(sed -n 4p "$pid_file")" -U postgres flashsale)
fi
psql "${target[@]}" -X -q -v ON_ERROR_STOP=1 -v sku="$sku" -f "$here/invariants.sql"
