# shellcheck shell=bash
# Sourced (bash) by stress/run-stress.sh, stress/verify-invariants.sh and `just psql`.
#
# compose_env_load ROOT: after `just up` started the compose stack, deploy/compose/stack.sh
# left ${DATA_DIR:-ROOT/.data}/compose.env with the stack's BASE_URL, DATABASE_URL and
# development ADMIN_API_KEY. This exports them, each only where the caller set nothing, so
# psql, the invariant check and the stress runner reach the compose database with no
# setting. It leaves everything alone (the embedded cluster stays the fallback) when
# DATABASE_URL is already set, when BASE_URL names another service, or when the file's
# database does not answer (a stack stopped without `just down`). When it takes them, it
# sets compose_env_file (not exported) to the file's path.
compose_env_load() {
  local file=${DATA_DIR:-$1/.data}/compose.env key value url="" base="" admin=""
  [ -f "$file" ] && [ -z "${DATABASE_URL:-}" ] || return 0
  # Read as data, not sourced: only these three keys are taken.
  while IFS='=' read -r key value; do
    case $key in
      BASE_URL) base=$value ;;
      DATABASE_URL) url=$value ;;
      ADMIN_API_KEY) admin=$value ;;
    esac
  done < "$file"
  [ -n "$url" ] || return 0
  if [ -n "${BASE_URL:-}" ] && [ "${BASE_URL%/}" != "$base" ]; then return 0; fi
  if ! PGCONNECT_TIMEOUT=3 psql "$url" -XAtqc 'select 1' >/dev/null 2>&1; then
    printf 'ignoring %s: its database does not answer (stack stopped without just down?)\n' "$file" >&2
    return 0
  fi
  export DATABASE_URL=$url BASE_URL=${BASE_URL:-$base}
  if [ -n "$admin" ]; then export ADMIN_API_KEY=${ADMIN_API_KEY:-$admin}; fi
  # shellcheck disable=SC2034  # read by the caller
  compose_env_file=$file
}
