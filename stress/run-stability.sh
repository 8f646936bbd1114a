#!/usr/bin/env bash
# Runs one scenario N times (default 5) with COOLDOWN seconds between runs (default 5).
# The exit code is the number of failed runs.
#
#   stress/run-stability.sh [N] [scenario]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-5}
scenario=${2:-purchase-load}
failed=0
for i in $(seq 1 "$runs"); do
  [ "$i" = 1 ] || sleep "${COOLDOWN:-5}"
  echo "[stability] run $i/$runs: $scenario"
  if "$here/run-stress.sh" "$scenario"; then
    echo "[stability] run $i/$runs: PASS"
  else
    echo "[stability] run $i/$runs: FAIL"
    failed=$((failed + 1))
  fi
done
echo "[stability] $((runs - failed))/$runs passed"
exit "$failed"
