#!/usr/bin/env python3
"""The run summary's lines for one scenario: verdict, request rate and latency, latency per
endpoint with the load generator's floor beside it, the webhook delivery line when there is
one, and where the HTML report is. Reads what stress/lib/report.js wrote (summary.json is
k6's handleSummary data, endpoints.json its per-endpoint figures)."""
import json
import os
import sys

name, folder, status = sys.argv[1], sys.argv[2], sys.argv[3]
verdict = "PASS" if status == "0" else "FAIL"
indent = " " * 18


def load(file):
    try:
        with open(os.path.join(folder, file)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


summary = load("summary.json")
if not summary or "metrics" not in summary:
    print(f"{name:16} {verdict}  (no k6 summary)")
    sys.exit(0)
metrics = summary["metrics"]


def values(metric):
    return metrics.get(metric, {}).get("values", {})


duration = values("http_req_duration")
reqs = values("http_reqs")
extra = []
for key in ("purchase_success", "purchase_sold_out", "purchase_duplicate", "purchase_rate_limited",
            "purchase_timeout", "purchase_error", "journey_purchased", "journey_sold_out", "journey_hold_expired",
            "journey_abandoned", "journey_gave_up", "journey_stream_fallbacks", "raffle_entered",
            "raffle_units_sold", "raffle_declined", "raffle_not_selected", "raffle_stream_fallbacks"):
    if key in metrics:
        extra.append(f"{key.split('_', 1)[1]}={int(values(key).get('count', 0))}")
if "multi_units_sold" in metrics:  # mixed-workload's variant drop: units from the 201s, per size
    sizes = sorted((int(metric["values"].get("count", 0)), key[len("multi_units_sold{variant:"):-1])
                   for key, metric in metrics.items() if key.startswith("multi_units_sold{variant:"))
    extra.append(f"multi_units={int(values('multi_units_sold').get('count', 0))}"
                 + (f" ({', '.join(f'{code} {units}' for units, code in sizes)})" if sizes else "")
                 + f" switches={int(values('multi_variant_switches').get('count', 0))}"
                 + f" multi_error={int(values('multi_error').get('count', 0))}")
invariants = "invariants PASS"
try:
    with open(os.path.join(folder, "invariants.txt")) as f:
        text = f.read()  # one report per sale the scenario checked
        if "ALL INVARIANTS PASSED" not in text or "INVARIANTS FAILED" in text:
            invariants = "invariants FAIL"
except OSError:
    invariants = "invariants ?"
endpoints = load("endpoints.json") or {}
streams = " (streams' waits included)" if {"queue_events", "entry_events"} & set(endpoints) else ""
print(
    f"{name:16} {verdict}  "
    f"{int(reqs.get('count', 0)):>7} reqs {reqs.get('rate', 0):8.1f}/s  "
    f"p50 {duration.get('med', 0):7.1f} ms  p95 {duration.get('p(95)', 0):7.1f} ms  "
    f"p99 {duration.get('p(99)', 0):7.1f} ms{streams}  {invariants}  {' '.join(extra)}"
)
floor = endpoints.get("floor")
for endpoint, row in endpoints.items():
    if endpoint == "floor":
        continue
    line = (f"{indent}{endpoint:14} {int(row['count']):>7}  p50 {row['med']:7.1f}  "
            f"p95 {row['p95']:7.1f}  p99 {row['p99']:7.1f} ms")
    if floor and endpoint == "queue_events":
        line += "  (the wait for the hold, not a latency)"
    print(line)
if floor:
    print(f"{indent}{'floor':14} {int(floor['count']):>7}  p50 {floor['med']:7.1f}  "
          f"p95 {floor['p95']:7.1f}  p99 {floor['p99']:7.1f} ms  "
          "(the same load against /health/live: the load generator's own share)")
try:
    with open(os.path.join(folder, "webhooks.txt")) as f:
        print(indent + f.read().strip())
except OSError:
    pass
reports = [file for file in ("report.html", "dashboard.html") if os.path.exists(os.path.join(folder, file))]
if reports:
    print(f"{indent}report: " + ", ".join(os.path.join(folder, file) for file in reports))
