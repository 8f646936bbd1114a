#!/usr/bin/env bash
# Checks the invariants of one sale, or of every sale, straight in Postgres with psql and the
# checks of stress/invariants.sql (the statement the audit route runs).
#
#   stress/verify-invariants.sh [SKU_OR_ID]     (no argument: every sale, archived ones too)
#
# The database, the first that applies:
#   DATABASE_URL;
#   PG_HOST, PG_PORT, PG_USER, PG_PASSWORD, PG_DB when any of them is set (defaults
#     localhost, 5432, flashsale, flashsale, flashsale: the compose stack's);
#   the compose stack's database after `just up` (.data/compose.env, stress/lib/compose-env.sh);
#   the embedded cluster running under DATA_DIR (.data/pg).
# Prints a report: one sale, every check with PASS/FAIL and its numbers; every sale, a line per
# sale and the failed checks with their numbers. The last line is `ALL INVARIANTS PASSED (...)`
# or `INVARIANTS FAILED: ...` naming each failed sale and its checks. Exits 0 when every
# invariant holds, 1 when one is broken (or the named sale does not exist), 2 when it cannot
# reach the database.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
sale=${1:-}

if [ -z "${DATABASE_URL:-}" ] && [ -n "${PG_HOST:-}${PG_PORT:-}${PG_USER:-}${PG_PASSWORD:-}${PG_DB:-}" ]; then
  export PGPASSWORD=${PG_PASSWORD:-flashsale}
  target=(-h "${PG_HOST:-localhost}" -p "${PG_PORT:-5432}" -U "${PG_USER:-flashsale}" -d "${PG_DB:-flashsale}")
  where="${PG_USER:-flashsale}@${PG_HOST:-localhost}:${PG_PORT:-5432}/${PG_DB:-flashsale} (PG_*)"
else
  # shellcheck source=SCRIPTDIR/lib/compose-env.sh
  . "$here/lib/compose-env.sh"
  compose_env_file=""
  compose_env_load "$root"
  if [ -n "${DATABASE_URL:-}" ]; then
    target=("$DATABASE_URL")
    # The URL without its password.
    where="$(sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$DATABASE_URL") (${compose_env_file:-DATABASE_URL})"
  else
    pid_file="${DATA_DIR:-$root/.data}/pg/postmaster.pid"
    [ -f "$pid_file" ] || { echo "no DATABASE_URL, no PG_*, no compose stack (just up) and no embedded cluster at $pid_file" >&2; exit 2; }
    port=$(sed -n 4p "$pid_file")
    target=(-h 127.0.0.1 -p "$port" -U postgres -d flashsale)
    where="postgres@127.0.0.1:$port/flashsale (the embedded cluster under ${DATA_DIR:-$root/.data})"
  fi
fi
if ! PGCONNECT_TIMEOUT=5 psql "${target[@]}" -XAtqc 'select 1' >/dev/null; then
  echo "cannot reach the database at $where" >&2
  exit 2
fi

# The audit statement of stress/invariants.sql, run once per sale in one session.
audit=$(sed -n '/^-- flashsale:audit:begin$/,/^-- flashsale:audit:end$/{/^-- flashsale:audit:/d;p;}' "$here/invariants.sql")
[ -n "$audit" ] || { echo "no audit statement between the flashsale:audit markers of $here/invariants.sql" >&2; exit 2; }
if [ -n "$sale" ]; then single=true; else single=false; fi

echo "POST-TEST INVARIANT VERIFICATION"
echo "PostgreSQL: $where"
echo "Sales:      ${sale:-every sale}"
echo
status=0
report=$(psql "${target[@]}" -X -q -v ON_ERROR_STOP=1 -v sale="$sale" -v single="$single" -v audit="$audit" <<'SQL'
\pset footer off
CREATE TEMP TABLE targets AS
SELECT s.id, s.sku, s.archived_at IS NOT NULL AS archived, s.created_at
  FROM sales s WHERE NOT :single
UNION ALL
-- One sale: the reference resolved as the service does (an id, archived too, or the sku of a
-- live sale); the nil id when nothing matches, so its sale_exists check fails.
SELECT COALESCE(r.id, '00000000-0000-0000-0000-000000000000'::uuid), :'sale', COALESCE(r.archived, false), now()
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (SELECT id, archived_at IS NOT NULL AS archived FROM sales
                      WHERE id::text = lower(:'sale') OR (sku = :'sale' AND archived_at IS NULL)
                      ORDER BY id::text = lower(:'sale') DESC LIMIT 1) r ON true
 WHERE :single;
CREATE TEMP TABLE audited (n serial, sale uuid, check_name text, passed boolean, detail text);
\o /dev/null
SELECT format('SELECT set_config(''flashsale.audit_sale'', %L, false); '
              'INSERT INTO audited (sale, check_name, passed, detail) SELECT %L::uuid, a.* FROM (%s) a',
              id, id, :'audit')
  FROM targets ORDER BY created_at, id
\gexec
\o
\if :single
SELECT a.check_name AS "check", CASE WHEN a.passed THEN 'PASS' ELSE 'FAIL' END AS result, a.detail
  FROM audited a ORDER BY a.n;
\else
SELECT t.sku, t.id, CASE WHEN t.archived THEN 'archived' ELSE '' END AS archived,
       CASE WHEN bool_and(a.passed) THEN 'PASS' ELSE 'FAIL' END AS result, count(*) AS checks,
       COALESCE(string_agg(a.check_name, ', ' ORDER BY a.n) FILTER (WHERE NOT a.passed), '') AS failed
  FROM targets t JOIN audited a ON a.sale = t.id
 GROUP BY t.sku, t.id, t.archived, t.created_at ORDER BY t.created_at, t.id;
SELECT count(*) FILTER (WHERE NOT passed) > 0 AS any_failed FROM audited \gset
\if :any_failed
\echo
\echo 'Failed checks:'
SELECT t.sku, a.check_name AS "failed check", a.detail
  FROM audited a JOIN targets t ON t.id = a.sale WHERE NOT a.passed ORDER BY a.n;
\endif
\endif
SELECT count(DISTINCT sale) AS sales, count(*) AS checks, count(*) FILTER (WHERE NOT passed) = 0 AS passed,
       COALESCE((SELECT string_agg(format('%s (%s): %s', x.sku, x.id, x.failed), '; ' ORDER BY x.created_at, x.id)
                   FROM (SELECT t.sku, t.id, t.created_at, string_agg(a.check_name, ', ' ORDER BY a.n) AS failed
                           FROM audited a JOIN targets t ON t.id = a.sale WHERE NOT a.passed
                          GROUP BY t.sku, t.id, t.created_at) x), '') AS failures
  FROM audited \gset
\echo
\if :passed
\echo 'ALL INVARIANTS PASSED (':sales' sale(s), ':checks' checks)'
\else
\echo 'INVARIANTS FAILED:' :failures
\endif
SQL
) || status=$?
printf '%s\n' "$report"
[ "$status" = 0 ] || { echo "INVARIANTS FAILED: psql exited $status"; exit 2; }
case $(tail -n 1 <<<"$report") in
  "ALL INVARIANTS PASSED"*) exit 0 ;;
  *) exit 1 ;;
esac
