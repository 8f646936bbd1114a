#!/usr/bin/env python3
"""Progress of a k6 run every INTERVAL seconds, read from k6's REST API (the runner starts
k6 with --address ADDRESS): VUs, requests so far and their rate, successes and errors.

    progress.py ADDRESS [INTERVAL] [LOGFILE]

Successes: purchases (purchase_success, journey_purchased) where the scenario buys, else the
requests that did not fail. Errors: failed requests (5xx, timeouts, statuses the scenario did
not expect) and answers it did not expect (purchase_error, journey_unexpected), whichever is
larger for the purchases. Each line goes to stderr and, with LOGFILE, to that file. Ends
when k6's API stops answering after it once did (or when the runner stops it)."""
import json
import sys
import time
import urllib.request

address = sys.argv[1]
interval = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
logfile = sys.argv[3] if len(sys.argv) > 3 else None


def metrics():
    with urllib.request.urlopen(f"http://{address}/v1/metrics", timeout=5) as answer:
        data = json.load(answer)["data"]
    return {row["id"]: row["attributes"].get("sample", {}) for row in data}


def count(samples, name, key="count"):
    return samples.get(name, {}).get(key, 0) or 0


def line(samples, elapsed):
    requests = count(samples, "http_reqs")
    failed = count(samples, "http_req_failed", "passes")  # a "pass" of http_req_failed is a failure
    buys = [name for name in ("purchase_success", "journey_purchased") if name in samples]
    if buys or any(name.startswith(("purchase_", "journey_")) for name in samples):
        successes = f"purchases {sum(count(samples, name) for name in buys):,}"
    else:
        successes = f"ok {requests - failed:,}"
    errors = max(failed, count(samples, "purchase_error")) + count(samples, "journey_unexpected")
    minutes, seconds = divmod(int(elapsed), 60)
    return (f"[progress] {minutes}:{seconds:02d}  VUs {int(samples.get('vus', {}).get('value', 0)):,}  "
            f"requests {requests:,} ({count(samples, 'http_reqs', 'rate'):,.1f}/s)  {successes}  errors {errors:,}")


def main():
    started = time.monotonic()
    answered = False
    next_at = started + interval
    while True:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        try:
            samples = metrics()
        except (OSError, ValueError, KeyError):
            if answered:
                return
            continue
        answered = True
        text = line(samples, time.monotonic() - started)
        print(text, file=sys.stderr, flush=True)
        if logfile:
            with open(logfile, "a") as f:
                f.write(text + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
