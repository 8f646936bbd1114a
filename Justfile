# flashsale tasks. Install just with `cargo install just` or `pip install rust-just`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Start the service: the compose stack (docker compose, else podman-compose) up and answering /health, or else the embedded Postgres.
up:
    #!/usr/bin/env bash
    set -euo pipefail
    if deploy/compose/stack.sh available; then
        exec deploy/compose/stack.sh up
    fi
    rm -f .data/compose.env   # a stack started earlier is not this service
    echo "No Docker engine or podman-compose: running on the embedded Postgres (Ctrl-C stops both)."
    # Development: webhooks may reach receivers on this host (just stress runs one).
    WEBHOOK_ALLOWED_NETWORKS=${WEBHOOK_ALLOWED_NETWORKS:-127.0.0.0/8} exec cargo run --release

# Stop what `up` started with compose, keeping the database (`just down -v` deletes it too).
down *args:
    #!/usr/bin/env bash
    set -euo pipefail
    if deploy/compose/stack.sh available; then
        exec deploy/compose/stack.sh down {{args}}
    fi
    echo "Nothing to stop: the embedded mode stops with the service (Ctrl-C)."

# The checks CI runs: format, lints, the import graph, then the test suite.
test:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings
    scripts/import-graph.py
    cargo test

# The import graph of src/: no cycle, nothing imports a layer above it, no route imports a worker (--edges lists every import).
imports *args:
    scripts/import-graph.py {{args}}

# Regenerate the committed OpenAPI document.
openapi:
    cargo run --quiet -- openapi > openapi/openapi.json
    @echo "openapi/openapi.json regenerated"

# psql on the service's database (DATABASE_URL, else the stack of `just up`, else the running embedded cluster).
psql *args:
    #!/usr/bin/env bash
    set -euo pipefail
    . stress/lib/compose-env.sh
    compose_env_load "$PWD"
    if [ -n "${DATABASE_URL:-}" ]; then
        exec psql "$DATABASE_URL" {{args}}
    fi
    pid_file=.data/pg/postmaster.pid
    [ -f "$pid_file" ] || { echo "No embedded cluster is running (start the service first)."; exit 1; }
    exec psql -h 127.0.0.1 -p "$(sed -n 4p "$pid_file")" -U postgres flashsale {{args}}

# Check a sale's invariants straight in Postgres.
invariants sku:
    just psql -v ON_ERROR_STOP=1 -v sku={{sku}} -f stress/invariants.sql

# Run a k6 scenario (default purchase-load) against BASE_URL or a service it starts; k6 run options may follow (--out json=results.json).
stress scenario="purchase-load" *k6_options:
    stress/run-stress.sh {{scenario}} {{k6_options}}

# The container and the compose file for real: images (podman, no registry needed), up, k6 purchase-load + invariants, down.
compose-check:
    cargo build --release --quiet
    stress/compose-check.sh

# The purchase benchmark (durable Postgres, release build, pgbench baseline, k6); see docs/PERFORMANCE.md.
bench:
    stress/bench.sh

# Two instances on one Postgres, with and without 5% of buyers retrying on the other (docs/PERFORMANCE.md).
bench-two-instances binary="target/release/flashsale":
    cargo build --release --quiet
    stress/bench-two-instances.sh {{binary}}

# Queue benchmark: joins before/after the opening, purchases, floor, a pre-queue's opening, the journey; two binaries: A B B A.
bench-queue *binaries:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -z "{{binaries}}" ]; then cargo build --release --quiet; fi
    exec stress/bench-queue.sh {{binaries}}

# Variants: a 10-variant drop against one variant of the same stock and a plain sale (wrk).
bench-variants binary="target/release/flashsale":
    cargo build --release --quiet
    stress/bench-variants.sh {{binary}}

# The outbox: purchase throughput with and without a webhook endpoint, delivery lag of a 20,000-unit sale.
bench-outbox:
    stress/bench-outbox.sh

# Webhooks through a kill -9 of one of two instances, a receiver failing 30% and down for 3 s.
webhook-crash:
    stress/webhook-crash.sh

# The k6 pass through PgBouncer in transaction mode (DATABASE_POOLER=transaction; CI runs it); DIRECT=1 runs it straight on Postgres first, POOLER=none shows what breaks without pooler mode.
pgbouncer binary="":
    stress/pgbouncer-pass.sh {{binary}}

# Failover on replicated Postgres (etcd, 3 Patroni nodes, HAProxy from Debian's packages): kill -9 of the primary, a switchover, a route to a standby; FAILOVER_REDUCED=1: the kill only.
failover binary="":
    stress/failover.sh {{binary}}

# Live streams against polling on one instance: memory per stream, database load, admission -> held.
stream-bench:
    stress/stream-bench.sh

# The console in headless Chromium (needs chromium, chromium-driver and selenium) against a running service.
console-test base="http://127.0.0.1:8080" key="dev-admin-key":
    .venv/bin/python tests/browser/console_test.py {{base}} {{key}}

# Validate deploy/kubernetes/ offline against the Kubernetes schemas (strict; KUBERNETES_VERSION to change).
k8s-validate:
    deploy/kubernetes/validate.sh

# A real Prometheus (Debian's package) scrapes BASE_URL (METRICS_TOKEN as bearer when set) and must answer a PromQL query.
prometheus-check base=env_var_or_default("BASE_URL", "http://127.0.0.1:8080"):
    BASE_URL={{base}} stress/prometheus-check.sh
