#!/usr/bin/env python3
"""Helpers of stress/failover.sh (standard library only):

    failover-tools.py cluster URL...                  the Patroni cluster as JSON (first REST URL that answers)
    failover-tools.py wait-cluster SECONDS MEMBERS URL...   until a leader, a sync standby and MEMBERS
                                                      running members streaming; prints "leader sync"
    failover-tools.py haproxy SOCKET COMMAND...       HAProxy admin-socket commands, one per argument
    failover-tools.py wait-route SECONDS SOCKET BACKEND SERVER   until SERVER is BACKEND's only server up
    failover-tools.py health LOG URL...               polls each URL every 200 ms, logs "ms url status" on change
    failover-tools.py sse LOG URL [HEADER]            an SSE client that reconnects with Last-Event-ID;
                                                      logs one JSON line per event and per (dis)connection
    failover-tools.py analyze PHASE_DIR EVENT_MS [BACK_MS]   judges one phase's logs (below)

`analyze` reads PHASE_DIR/k6.jsonl (the lines of stress/scenarios/failover.js),
health.log and sse-*.jsonl. EVENT_MS is when the fault began (the kill, the switchover,
the route to a replica); BACK_MS, for the read-only phase, when the route led back. It
writes acked.csv (sku,userId of every acknowledged purchase: a 201, or a 409
ALREADY_PURCHASED after an unknown outcome), summary.json (the timings), prints a report
and exits 1 when a check fails:
- no 5xx other than 503, every 503 with Retry-After, no request without an answer;
- purchases succeed after the fault (the first 201 that started after it is timed);
- every instance's /health answers 200 again after the fault;
- every live stream got an event showing a purchase made after the fault.
"""

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def now_ms():
    return int(time.time() * 1000)


def get_json(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as res:
        return json.load(res)


def cluster(urls):
    for url in urls:
        try:
            return get_json(url.rstrip("/") + "/cluster")
        except (OSError, ValueError):
            continue
    return None


def cmd_cluster(urls):
    print(json.dumps(cluster(urls)))


def cmd_wait_cluster(seconds, members, urls):
    deadline = time.time() + float(seconds)
    last = None
    while time.time() < deadline:
        state = cluster(urls)
        if state:
            running = [m for m in state["members"] if m.get("state") in ("running", "streaming")]
            leader = [m["name"] for m in running if m["role"] == "leader"]
            sync = [m["name"] for m in running if m["role"] == "sync_standby"]
            replicas = [m for m in running if m["role"] != "leader"]
            # A standby counts once it receives WAL (its lag is known).
            streaming = all(m.get("lag") not in (None, "unknown") for m in replicas)
            last = state
            if leader and sync and len(running) >= int(members) and streaming:
                print(leader[0], sync[0])
                return 0
        time.sleep(0.5)
    print(f"the cluster did not settle within {seconds} s: {json.dumps(last)}", file=sys.stderr)
    return 1


def haproxy(sock_path, command):
    """One command on HAProxy's admin socket; its answer."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sock_path)
    sock.sendall((command + "\n").encode())
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    sock.close()
    return out.decode().strip()


def cmd_haproxy(sock_path, commands):
    for command in commands:
        text = haproxy(sock_path, command)
        if text:
            print(text)


def haproxy_up(sock_path, backend):
    """The servers of BACKEND that HAProxy has UP and ready (op state 2, admin state 0)."""
    up = []
    for row in haproxy(sock_path, f"show servers state {backend}").splitlines():
        cols = row.split()
        if len(cols) > 6 and cols[1] == backend and cols[5] == "2" and cols[6] == "0":
            up.append(cols[3])
    return up


def cmd_wait_route(seconds, sock_path, backend, server):
    """Until SERVER is the only server of BACKEND that HAProxy routes to (at start HAProxy
    takes every server as up until its checks say otherwise)."""
    deadline = time.time() + float(seconds)
    up = None
    while time.time() < deadline:
        try:
            up = haproxy_up(sock_path, backend)
        except OSError:
            up = None
        if up == [server]:
            return 0
        time.sleep(0.2)
    print(f"HAProxy's {backend} routes to {up}, not only {server}", file=sys.stderr)
    return 1


def status_of(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as res:
            return res.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def cmd_health(log_path, urls):
    last = {}
    with open(log_path, "a", buffering=1) as log:
        while True:
            for url in urls:
                status = status_of(url)
                if last.get(url) != status:
                    last[url] = status
                    log.write(f"{now_ms()} {url} {status}\n")
            time.sleep(0.2)


def cmd_sse(log_path, url, header=None):
    last_id = None
    with open(log_path, "a", buffering=1) as log:
        def note(**entry):
            entry["t"] = now_ms()
            log.write(json.dumps(entry) + "\n")

        while True:
            request = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
            if header:
                name, value = header.split(":", 1)
                request.add_header(name.strip(), value.strip())
            if last_id:
                request.add_header("Last-Event-ID", last_id)
            try:
                with urllib.request.urlopen(request, timeout=20) as res:
                    note(connected=res.status)
                    event, data = "message", []
                    for raw in res:
                        line = raw.decode().rstrip("\r\n")
                        if line == "":
                            if data:
                                note(event=event, id=last_id, data="\n".join(data))
                            event, data = "message", []
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].lstrip())
                        elif line.startswith("id:"):
                            last_id = line[3:].strip()
                    note(disconnected="end of stream")
            except urllib.error.HTTPError as err:
                note(disconnected=f"HTTP {err.code}")
            except OSError as err:
                note(disconnected=str(err))
            time.sleep(0.5)


def read_lines(path):
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def cmd_analyze(phase_dir, event_ms, back_ms=None):
    event_ms = int(event_ms)
    back_ms = int(back_ms) if back_ms else None
    # Recovery is timed from the route leading back (read-only phase) or the fault.
    since = back_ms or event_ms
    meta = json.load(open(os.path.join(phase_dir, "meta.json")))
    lines = read_lines(os.path.join(phase_dir, "k6.jsonl"))
    failures = []
    summary = {"phase": meta["phase"], "requests": len(lines)}

    statuses = {}
    for line in lines:
        key = f"{line['k']} {line['s']}" + (f" {line['c']}" if line.get("c") else "")
        statuses[key] = statuses.get(key, 0) + 1
    summary["statuses"] = dict(sorted(statuses.items()))
    bad = [l for l in lines if l["s"] >= 500 and l["s"] != 503]
    if bad:
        failures.append(f"{len(bad)} answers 5xx other than 503, first: {bad[0]}")
    unanswered = [l for l in lines if l["s"] == 0]
    if unanswered:
        failures.append(f"{len(unanswered)} requests without an answer, first: {unanswered[0]}")
    no_retry = [l for l in lines if l["s"] == 503 and "ra" not in l]
    if no_retry:
        failures.append(f"{len(no_retry)} 503 without Retry-After, first: {no_retry[0]}")
    unavailable = [l for l in lines if l["s"] == 503]
    summary["answers_503"] = len(unavailable)
    # An unknown outcome is resolved by a retry that gets an answer: 201 or ALREADY_PURCHASED
    # for a purchase or a confirm, 202 for a join (joins are idempotent too).
    unknown = {(l["k"], l["u"]) for l in lines if l.get("ou")}
    resolved = {(l["k"], l["u"]) for l in lines if (l["k"], l["u"]) in unknown
                and l["s"] not in (0, 503)}
    summary["outcome_unknown"] = len(unknown)
    summary["outcome_unknown_resolved_by_retry"] = len(resolved)
    if unavailable:
        summary["first_503_s"] = round((min(l["t"] for l in unavailable) - event_ms) / 1000, 2)
        summary["last_503_s"] = round((max(l["t"] for l in unavailable) - event_ms) / 1000, 2)

    # Acknowledged: a 201, or ALREADY_PURCHASED (every buyer id is new, so that answer means
    # an earlier try of this buyer committed: one whose outcome was unknown).
    acked = set()
    for line in lines:
        if line["k"] not in ("purchase", "confirm"):
            continue
        if line["s"] == 201 or (line["s"] == 409 and line.get("c") == "ALREADY_PURCHASED"):
            sku = meta["sku"] if line["k"] == "purchase" else meta["queue_sku"]
            acked.add((sku, line["u"]))
    with open(os.path.join(phase_dir, "acked.csv"), "w") as out:
        for sku, user in sorted(acked):
            out.write(f"{sku},{user}\n")
    summary["acknowledged"] = len(acked)

    # Purchases are back with the first 201 of a request sent once the fault was seen (the
    # first refusal after it; a request in flight at the fault may still have succeeded).
    refused = [l["t"] for l in lines if l["s"] in (0, 503) and l["t"] >= since]
    seen = min(refused) if refused and not back_ms else since
    created = sorted(l["t"] for l in lines if l["k"] == "purchase" and l["s"] == 201 and l["t0"] >= seen)
    before = [l for l in lines if l["k"] == "purchase" and l["s"] == 201 and l["t"] <= event_ms]
    if not before:
        failures.append("no purchase succeeded before the fault: the load did not start in time")
    if created:
        summary["fault_to_first_201_s"] = round((created[0] - event_ms) / 1000, 2)
        if back_ms:
            summary["back_to_first_201_s"] = round((created[0] - back_ms) / 1000, 2)
    else:
        failures.append("no purchase succeeded after the fault")
    if back_ms:
        window = [l for l in lines if event_ms + 1000 <= l["t"] <= back_ms]
        refused = [l for l in window if l["s"] == 503]
        summary["route_to_replica_answers"] = len(window)
        summary["route_to_replica_503"] = len(refused)
        if not refused:
            failures.append("no 503 while the route led to a replica")
        served = [l for l in window if l["k"] in ("purchase", "join", "confirm") and l["s"] in (201, 202)]
        if served:
            failures.append(f"{len(served)} writes answered 2xx while the route led to a replica: {served[0]}")

    # /health: per instance, the first 200 after its last failure following the fault.
    health = {}
    health_path = os.path.join(phase_dir, "health.log")
    for row in open(health_path) if os.path.exists(health_path) else []:
        ms, url, status = row.split()
        health.setdefault(url, []).append((int(ms), int(status)))
    summary["health"] = {}
    for url, changes in health.items():
        after = [c for c in changes if c[0] >= event_ms]
        status_at_fault = [c for c in changes if c[0] < event_ms]
        failed = [c for c in after if c[1] != 200]
        if status_at_fault and status_at_fault[-1][1] != 200:
            failed.insert(0, status_at_fault[-1])
        final = changes[-1][1]
        entry = {"failed": bool(failed), "final": final}
        if failed:
            back = [c for c in after if c[1] == 200 and c[0] > failed[-1][0]]
            if back:
                entry["fault_to_200_s"] = round((back[0][0] - event_ms) / 1000, 2)
                if back_ms:
                    entry["back_to_200_s"] = round((back[0][0] - back_ms) / 1000, 2)
            entry["failed_s"] = round((failed[0][0] - event_ms) / 1000, 2)
        summary["health"][url] = entry
        if final != 200:
            failures.append(f"{url} answers {final}, not 200, at the end")
        if back_ms and not failed:
            failures.append(f"{url} kept answering 200 while the route led to a replica")

    # Live streams: each must show, after the fault, a purchase made after the fault.
    summary["streams"] = {}
    for name in sorted(os.listdir(phase_dir)):
        if not (name.startswith("sse-") and name.endswith(".jsonl")):
            continue
        entries = read_lines(os.path.join(phase_dir, name))
        events = [e for e in entries if "event" in e]
        drops = [e for e in entries if "disconnected" in e and e["t"] >= event_ms]
        fresh = None
        if name.startswith("sse-sale"):
            # The public sale view: `sold` above anything seen before the fault.
            sold_before = max((json.loads(e["data"]).get("sold", 0) for e in events
                               if e["t"] < event_ms and e["event"] == "sale"), default=-1)
            fresh = next((e for e in events if e["t"] > since and e["event"] == "sale"
                          and json.loads(e["data"]).get("sold", 0) > sold_before), None)
        else:
            # The admin event stream: a purchase.created that committed after the fault.
            for e in events:
                if e["t"] <= since:
                    continue
                try:
                    data = json.loads(e["data"])
                except ValueError:
                    continue
                if data.get("type") == "purchase.created" and data.get("sku") in (meta["sku"], meta["queue_sku"]) \
                        and iso_ms(data.get("occurredAt")) > since:
                    fresh = e
                    break
        entry = {"events": len(events), "reconnects_after_fault": len(drops)}
        if fresh:
            entry["fault_to_fresh_event_s"] = round((fresh["t"] - event_ms) / 1000, 2)
        else:
            failures.append(f"{name}: no event after the fault showing a new purchase")
        summary["streams"][name[:-6]] = entry

    summary["failures"] = failures
    json.dump(summary, open(os.path.join(phase_dir, "summary.json"), "w"), indent=1)
    print(json.dumps(summary, indent=1))
    return 1 if failures else 0


def iso_ms(text):
    if not text:
        return 0
    from datetime import datetime
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[1], argv[2:]
    if command == "cluster":
        return cmd_cluster(args)
    if command == "wait-cluster":
        return cmd_wait_cluster(args[0], args[1], args[2:])
    if command == "wait-route":
        return cmd_wait_route(*args)
    if command == "haproxy":
        return cmd_haproxy(args[0], args[1:])
    if command == "health":
        return cmd_health(args[0], args[1:])
    if command == "sse":
        return cmd_sse(*args)
    if command == "analyze":
        return cmd_analyze(*args)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv) or 0)
