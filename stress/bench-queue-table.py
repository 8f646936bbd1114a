#!/usr/bin/env python3
"""The table of stress/bench-queue.sh, from the rows it collected (one `kind key=value ...`
line per measurement) and, for the journey, the k6 summary.json that run-stress.sh wrote.

    bench-queue-table.py ROWS SETTINGS BINARY_A [BINARY_B]
"""
import datetime
import json
import os
import re
import sys

rows_file, settings, binaries = sys.argv[1], sys.argv[2], sys.argv[3:]
LOADS = [("floor", "floor: GET /health/live"), ("purchase", "instant purchases"),
         ("prequeue", "pre-queue joins"), ("postopen", "post-opening joins")]


def parse(line):
    kind, _, rest = line.strip().partition(" ")
    fields = dict(re.findall(r"(\w+)=(\S+)", rest))
    fields["_tokens"] = rest.split()
    return kind, fields


def num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def fmt(value, digits=0, width=9):
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def seconds(value, wait):
    if value in (None, "-", "", "?"):
        return f"not reached in {wait} s" if value != "?" else "?"
    return f"{float(value):.2f} s"


rows = [parse(line) for line in open(rows_file) if line.strip()]
loads = [f for k, f in rows if k == "load"]
opens = [f for k, f in rows if k == "open"]
journeys = [f for k, f in rows if k == "journey"]
dbs = [f for k, f in rows if k == "db"]
checks = [f for k, f in rows if k == "invariants"]

durability = " ".join(t for t in (dbs[0]["_tokens"] if dbs else []) if "=" in t and not t.startswith(("round", "bin")))
print(f"flashsale queue benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}, "
      f"{os.cpu_count()} cores, {durability or 'durability ?'}")
for label, binary in zip("AB", binaries):
    print(f"  {label} = {binary}")
print(f"  {settings}")

if loads:
    print("\n1. Joins and purchases, every request a new buyer (ok/s: successful answers per second, 202 for a"
          "\n   join, 201 for a purchase; in DB: the rows Postgres holds afterwards, which adds the requests"
          "\n   still in flight when wrk stopped, at most one per connection)")
    print(f"  {'round':6} {'load':26} {'ok/s':>8} {'answers/s':>9} {'ok':>8} {'in DB':>8} {'p50 ms':>8} {'p99 ms':>8}  not ok (status:count), socket errors")
    for f in loads:
        name = dict(LOADS).get(f["load"], f["load"])
        errors = f.get("errors", "0")
        other = f.get("statuses", "-") + (f", {errors} socket errors" if errors not in ("0", None) else "")
        print(f"  {f['round'] + ' ' + f['bin']:6} {name:26} {fmt(num(f.get('rate')), 0, 8)} "
              f"{fmt(num(f.get('answers')), 0, 9)} {fmt(num(f.get('ok')), 0, 8)} {fmt(num(f.get('in_db')), 0, 8)} "
              f"{fmt(num(f.get('p50')), 1, 8)} {fmt(num(f.get('p99')), 1, 8)}  {other}")
    if len(binaries) == 2:
        print("\n  means over the rounds of each binary")
        print(f"  {'load':26} {'A ok/s':>9} {'B ok/s':>9} {'B/A':>7} {'A p99':>9} {'B p99':>9}")
        for key, name in LOADS:
            def mean(label, field):
                values = [num(f.get(field)) for f in loads if f["load"] == key and f["bin"] == label]
                values = [v for v in values if v is not None]
                return sum(values) / len(values) if values else None
            a, b = mean("A", "rate"), mean("B", "rate")
            ratio = f"{b / a:6.2f}x" if a and b is not None else f"{'-':>7}"
            print(f"  {name:26} {fmt(a)} {fmt(b)} {ratio} {fmt(mean('A', 'p99'), 1)} {fmt(mean('B', 'p99'), 1)}")

if opens:
    print("\n2. Opening of a pre-queue (times from starts_at, database clock; opened: at its startsAt,"
          "\n   or starts_at moved to now() + N s by psql once the fill ended)")
    print(f"  {'round':6} {'pre-queue':>15} {'joined over':>11} {'opened':>12} {'shuffled':>9}  {'first hold':>20}  {'hold #N':>30}  holds")
    for f in opens:
        mark = f.get("mark", "?")
        nth = seconds(f.get("nth"), f.get("wait"))
        fill = f.get("fill")
        size = f.get("prequeue", "?")
        if f.get("target") and size != f["target"]:
            size += " of " + f["target"]
        print(f"  {f['round'] + ' ' + f['bin']:6} {size:>15} "
              f"{(fill + ' s') if fill not in (None, '-') else '-':>11} {f.get('opened', '?'):>12} "
              f"{seconds(f.get('shuffle'), f.get('wait')) if f.get('shuffle') not in (None, '-') else 'not yet':>9}  "
              f"{seconds(f.get('first'), f.get('wait')):>20}  {'#' + mark + ': ' + nth:>30}  {f.get('holds', '?')}")

if checks:
    verdicts = []
    for f in checks:
        failed = [t.split(":")[0] for t in f["_tokens"] if t.endswith(":FAIL")]
        verdicts.append(f"{f['round']} {f['bin']}: " + ("PASS" if not failed else "FAIL " + ",".join(failed)))
    print("\n  invariants (stress/verify-invariants.sh on every sale): " + "; ".join(verdicts))

if journeys:
    print("\n3. Queue journey (k6 queue-journey through run-stress.sh, ms; join -> hold: from sending the"
          "\n   join to learning of the hold, the scenario's journey_join_to_hold; floor: /health/live, same peak VUs)")
    print(f"  {'bin':4} {'verdict':8} {'joins':>7} {'join p50':>9} {'join p95':>9} {'->hold p50':>11} "
          f"{'p95':>9} {'p99':>9} {'floor p50':>10} {'floor p95':>10}  purchased")
    for f in journeys:
        verdict = "PASS" if f.get("status") == "0" else f"FAIL({f.get('status')})"
        folder = os.path.join(f.get("dir", "-"), "queue-journey")
        try:
            metrics = json.load(open(os.path.join(folder, "summary.json")))["metrics"]
        except (OSError, ValueError, KeyError):
            print(f"  {f['bin']:4} {verdict:8}  no k6 summary (see journey-{f['bin']}.txt)")
            continue

        def values(name):
            return metrics.get(name, {}).get("values", {})
        join, hold, floor = (values("http_req_duration{endpoint:queue_join}"), values("journey_join_to_hold"),
                             values("http_req_duration{endpoint:floor}"))
        joins = values("http_reqs{endpoint:queue_join}").get("count")
        print(f"  {f['bin']:4} {verdict:8} {fmt(joins, 0, 7)} {fmt(join.get('med'), 1)} {fmt(join.get('p(95)'), 1)} "
              f"{fmt(hold.get('med'), 1, 11)} {fmt(hold.get('p(95)'), 1)} {fmt(hold.get('p(99)'), 1)} "
              f"{fmt(floor.get('med'), 1, 10)} {fmt(floor.get('p(95)'), 1, 10)}  "
              f"{int(values('journey_purchased').get('count', 0))}")
        print(f"  {'':4} {folder}")
