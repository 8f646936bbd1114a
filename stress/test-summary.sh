#!/usr/bin/env bash
# Fails when stress/lib/report.js (every scenario's handleSummary) stops printing each
# threshold with its measured value, the summary table or readable durations, in the
# terminal or in report.html. Runs k6 on stress/test-summary.js: no service, a second or two.
#
#   stress/test-summary.sh        (K6_CMD, a k6 on PATH or .venv's, as stress/run-stress.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=SCRIPTDIR/lib/k6.sh
. "$here/lib/k6.sh"
k6=$(resolve_k6 "$root")
out=$(mktemp -d /tmp/flashsale-summary-test-XXXXXX)
trap 'rm -rf "$out"' EXIT

status=0
# shellcheck disable=SC2086  # K6_CMD may be a command with arguments
REPORT_DIR=$out SCENARIO_NAME=summary-test $k6 run --quiet --no-usage-report --address 127.0.0.1:0 \
  "$here/test-summary.js" >"$out/stdout.txt" 2>"$out/stderr.txt" || status=$?

failures=0
expect() {  # file text
  if ! grep -qF -- "$2" "$1"; then
    printf 'FAIL: %s lacks: %s\n' "$(basename "$1")" "$2"
    failures=$((failures + 1))
  fi
}
# k6 exits 99 when a threshold fails: journey_server_errors fails on purpose.
if [ "$status" != 99 ]; then
  printf 'FAIL: k6 exited %s, want 99 (one threshold fails on purpose)\n' "$status"
  failures=$((failures + 1))
fi
for file in "$out/stdout.txt" "$out/report.html"; do
  expect "$file" 'count==100'
  expect "$file" 'count=100'
  expect "$file" 'p(95)=104.98ms'
  expect "$file" 'p(50)=1.52s'
  expect "$file" 'rate=100.00%'
  expect "$file" 'count=2'
  expect "$file" 'total VUs'
  expect "$file" 'attempts'
  expect "$file" '1,050'
  expect "$file" 'by 1,000 buyers'
  expect "$file" 'successful purchases'
  expect "$file" '2 min 3 s'
  expect "$file" '1.52 s'
  expect "$file" 'PASS: confirmed orders 100 + remaining 0 + held 0 = 100, the starting quantity'
done
expect "$out/stdout.txt" '✓ count==100 count=100'
expect "$out/stdout.txt" '✓ p(95)<1000 p(95)=104.98ms'
expect "$out/stdout.txt" '✗ count==0 count=2'
expect "$out/stdout.txt" '✓ count==0 count=0'
expect "$out/stdout.txt" 'total VUs ............... 1'
expect "$out/stdout.txt" 'sold out ..............     900'
expect "$out/stdout.txt" 'timeout ...............       0'
expect "$out/stdout.txt" 'expired hold ..........       3'
expect "$out/stdout.txt" 'API error .............       2'
if grep -q 'got .*want' "$out/stderr.txt"; then
  grep 'got .*want' "$out/stderr.txt"
  failures=$((failures + 1))
fi
if [ "$failures" != 0 ]; then
  echo "--- k6 stdout"; cat "$out/stdout.txt"; echo "--- k6 stderr"; tail -20 "$out/stderr.txt"
  echo "test-summary: $failures failure(s)"
  exit 1
fi
echo "test-summary: PASS (every threshold printed with its measured value, in the terminal and report.html)"
