#!/usr/bin/env python3
"""One line per scenario from k6's --summary-export JSON: verdict, request rate, latency;
and the webhook delivery line of that run, when there is one."""
import json
import os
import sys

name, folder, status = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with open(os.path.join(folder, "summary.json")) as f:
        metrics = json.load(f)["metrics"]
except (OSError, ValueError, KeyError):
    print(f"{name:16} {'FAIL' if status != '0' else 'PASS'}  (no k6 summary)")
    sys.exit(0)

duration = metrics.get("http_req_duration", {})
reqs = metrics.get("http_reqs", {})
extra = []
for key in ("purchase_success", "purchase_sold_out", "purchase_duplicate", "purchase_rate_limited",
            "purchase_error", "journey_purchased", "journey_sold_out", "journey_hold_expired",
            "journey_abandoned", "journey_gave_up"):
    if key in metrics:
        extra.append(f"{key.split('_', 1)[1]}={int(metrics[key].get('count', 0))}")
invariants = "invariants PASS"
try:
    with open(os.path.join(folder, "invariants.txt")) as f:
        if "all PASS" not in f.read():
            invariants = "invariants FAIL"
except OSError:
    invariants = "invariants ?"
webhooks = ""
try:
    with open(os.path.join(folder, "webhooks.txt")) as f:
        webhooks = "\n" + " " * 18 + f.read().strip()
except OSError:
    pass
print(
    f"{name:16} {'PASS' if status == '0' else 'FAIL'}  "
    f"{reqs.get('count', 0):>7} reqs {reqs.get('rate', 0):8.1f}/s  "
    f"p50 {duration.get('med', 0):7.1f} ms  p95 {duration.get('p(95)', 0):7.1f} ms  "
    f"p99 {duration.get('p(99)', 0):7.1f} ms  {invariants}  {' '.join(extra)}{webhooks}"
)
