#!/usr/bin/env python3
"""Live streams against polling, on one instance (run by stress/stream-bench.sh).

    stream-bench.py BASE_URL SERVICE_PID DATABASE_URL [--buyers N] [--public M]

1. BUYERS buyers join a queued sale that opens later (they wait in its pre-queue).
2. Idle: nobody polls or listens for PHASE seconds: the service's own background queries,
   subtracted from the next two figures.
   Polling: every buyer polls its status at the service's own hint (pollAfterMs) for
   PHASE seconds; the database's transactions per second are counted (pg_stat_database).
3. Streams: every buyer opens its live stream instead; the service's RSS before and after
   gives the memory per stream; the database's transactions per second are counted over
   PHASE seconds with the streams open.
4. The sale opens: every buyer is admitted (in ticks of 500) and the delay from each
   hold's grant (holdExpiresAt - holdSeconds, database clock) to its `held` message on the
   buyer's stream is measured: p50, p99, max.
5. PUBLIC public sale streams are opened at once on an instant sale (how many one instance
   holds, and their memory); one purchase then fans out to all of them, timed.

Only the standard library: asyncio sockets speaking HTTP/1.1 and SSE.
"""
import argparse
import asyncio
import datetime as dt
import json
import subprocess
import time
import urllib.parse
import uuid

HOLD_SECONDS = 600


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("pid", type=int)
    parser.add_argument("database_url")
    parser.add_argument("--buyers", type=int, default=5000)
    parser.add_argument("--public", type=int, default=10000)
    parser.add_argument("--phase", type=float, default=15.0)
    parser.add_argument("--admin-key", default="dev-admin-key")
    return parser.parse_args()


ARGS = parse_args()
URL = urllib.parse.urlparse(ARGS.base)
HOST, PORT = URL.hostname, URL.port or 80


def rss_mb():
    with open(f"/proc/{ARGS.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def transactions():
    out = subprocess.run(
        ["psql", ARGS.database_url, "-Atc",
         "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"],
        capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


async def request(method, path, body=None, admin=False):
    """One request on its own connection; returns (status, parsed JSON or None)."""
    reader, writer = await asyncio.open_connection(HOST, PORT)
    data = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close",
            f"Content-Length: {len(data)}"]
    if body is not None:
        head.append("Content-Type: application/json")
    if admin:
        head.append(f"Authorization: Bearer {ARGS.admin_key}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in header.lower():
        payload = dechunk(payload)
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, None


def dechunk(payload):
    out, rest = b"", payload
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


class Stream:
    """An open SSE stream: messages arrive into `messages` as (monotonic time, event, data)."""

    def __init__(self, path):
        self.path = path
        self.messages = []
        self.event = asyncio.Event()
        self.task = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(HOST, PORT, limit=1 << 20)
        self.writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await self.writer.drain()
        status = await self.reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"{self.path}: {status!r}")
        while (await self.reader.readline()) not in (b"\r\n", b""):
            pass
        self.task = asyncio.create_task(self.read())

    async def read(self):
        text = ""
        try:
            while True:
                size = int((await self.reader.readline()).strip() or b"0", 16)
                if size == 0:
                    return
                text += (await self.reader.readexactly(size + 2))[:-2].decode()
                while "\n\n" in text:
                    block, text = text.split("\n\n", 1)
                    event, data = "message", None
                    for line in block.split("\n"):
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data = json.loads(line[5:].strip())
                    if data is not None:
                        self.messages.append((time.monotonic(), time.time(), event, data))
                        self.event.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    def close(self):
        if self.task:
            self.task.cancel()
        self.writer.close()


async def bounded(tasks, limit):
    semaphore = asyncio.Semaphore(limit)

    async def run(task):
        async with semaphore:
            return await task

    return await asyncio.gather(*(run(task) for task in tasks))


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


async def poll_phase(sku, users, seconds):
    """Each buyer polls at the service's hint for `seconds`; returns requests made."""
    done = 0
    stop = time.monotonic() + seconds

    async def poller(user):
        nonlocal done
        await asyncio.sleep(2 * (hash(user) % 1000) / 1000)  # spread the first polls
        while time.monotonic() < stop:
            status, body = await request("GET", f"/api/v1/sales/{sku}/queue/{user}")
            done += 1
            hint = (body or {}).get("pollAfterMs", 2000) / 1000
            await asyncio.sleep(hint)

    await asyncio.gather(*(poller(user) for user in users))
    return done


async def buyer_phase(n):
    sku = f"streams-{uuid.uuid4().hex[:8]}"
    lead = 60 + n / 100 + ARGS.phase
    starts = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=lead)
    status, _ = await request("POST", "/api/v1/admin/sales", {
        "sku": sku, "name": "stream bench", "stock": n, "checkout": "queued",
        "holdSeconds": HOLD_SECONDS, "startsAt": starts.isoformat(),
        "endsAt": (starts + dt.timedelta(hours=1)).isoformat(), "queueCapacity": n,
    }, admin=True)
    assert status == 201, status
    users = [f"sb-{i}" for i in range(n)]
    began = time.monotonic()
    joined = await bounded([request("POST", f"/api/v1/sales/{sku}/queue", {"userId": u}) for u in users], 200)
    assert all(s == 202 for s, _ in joined), {s for s, _ in joined}
    print(f"buyers: {n} joined the pre-queue in {time.monotonic() - began:.1f} s", flush=True)

    t0, x0 = time.monotonic(), transactions()
    await asyncio.sleep(ARGS.phase)
    t1, x1 = time.monotonic(), transactions()
    idle_qps = (x1 - x0) / (t1 - t0)
    print(f"idle: nobody polling or listening: database {idle_qps:,.1f} transactions/s "
          "(the service's own background work)", flush=True)

    t0, x0 = time.monotonic(), transactions()
    polls = await poll_phase(sku, users, ARGS.phase)
    t1, x1 = time.monotonic(), transactions()
    poll_qps, poll_rps = (x1 - x0) / (t1 - t0), polls / (t1 - t0)
    print(f"polling: {n} buyers at the service's hint: {poll_rps:,.0f} requests/s, "
          f"database {poll_qps:,.0f} transactions/s in all, {max(poll_qps - idle_qps, 0):,.0f} above idle "
          f"({max(poll_qps - idle_qps, 0) / n:.3f} per buyer per second)", flush=True)

    rss_before = rss_mb()
    streams = [Stream(f"/api/v1/sales/{sku}/queue/{u}/events") for u in users]
    began = time.monotonic()
    await bounded([s.open() for s in streams], 500)
    await asyncio.gather(*(s.event.wait() for s in streams))
    await asyncio.sleep(2)
    rss_after = rss_mb()
    print(f"streams: {n} open in {time.monotonic() - began:.1f} s; service RSS {rss_before:.1f} -> "
          f"{rss_after:.1f} MB = {1024 * (rss_after - rss_before) / n:.1f} KB per stream", flush=True)
    t0, x0 = time.monotonic(), transactions()
    await asyncio.sleep(ARGS.phase)
    t1, x1 = time.monotonic(), transactions()
    stream_qps = (x1 - x0) / (t1 - t0)
    print(f"streams: {n} buyers listening: database {stream_qps:,.1f} transactions/s in all, "
          f"{max(stream_qps - idle_qps, 0):,.1f} above idle (polling: {poll_qps:,.0f} in all)", flush=True)

    wait = max(0.0, (starts - dt.datetime.now(dt.timezone.utc)).total_seconds())
    print(f"waiting {wait:.0f} s for the opening", flush=True)
    deadline = time.monotonic() + wait + 120
    delays = []
    for stream in streams:
        while time.monotonic() < deadline:
            held = [m for m in stream.messages if m[2] == "held"]
            if held:
                _, wall, _, data = held[0]
                granted = dt.datetime.fromisoformat(data["holdExpiresAt"].replace("Z", "+00:00")) \
                    - dt.timedelta(seconds=HOLD_SECONDS)
                delays.append(wall - granted.timestamp())
                break
            stream.event.clear()
            try:
                await asyncio.wait_for(stream.event.wait(), timeout=max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
    missing = n - len(delays)
    print(f"admission -> held on the stream, {len(delays)} buyers ({missing} never heard): "
          f"p50 {1000 * percentile(delays, 50):.0f} ms, p95 {1000 * percentile(delays, 95):.0f} ms, "
          f"p99 {1000 * percentile(delays, 99):.0f} ms, max {1000 * max(delays, default=float('nan')):.0f} ms",
          flush=True)
    for stream in streams:
        stream.close()
    return missing == 0 and percentile(delays, 99) < 1.0


async def public_phase(m):
    sku = f"public-{uuid.uuid4().hex[:8]}"
    status, _ = await request("POST", "/api/v1/admin/sales",
                              {"sku": sku, "name": "public streams", "stock": 10}, admin=True)
    assert status == 201, status
    await asyncio.sleep(1.5)  # the sale becomes active
    rss_before = rss_mb()
    streams = [Stream(f"/api/v1/sales/{sku}/events") for _ in range(m)]
    began = time.monotonic()
    results = await bounded([s.open() for s in streams], 500)
    del results
    await asyncio.gather(*(s.event.wait() for s in streams))
    await asyncio.sleep(2)
    rss_after = rss_mb()
    print(f"public: {m} streams open on one instance in {time.monotonic() - began:.1f} s; service RSS "
          f"{rss_before:.1f} -> {rss_after:.1f} MB = {1024 * (rss_after - rss_before) / m:.1f} KB per stream",
          flush=True)
    for stream in streams:
        stream.event.clear()
    bought = time.monotonic()
    status, _ = await request("POST", f"/api/v1/sales/{sku}/purchases", {"userId": "public-buyer"})
    assert status == 201, status
    answered = time.monotonic()
    arrivals = []
    for stream in streams:
        try:
            await asyncio.wait_for(stream.event.wait(), timeout=10)
            arrivals.append(stream.messages[-1][0] - answered)
        except asyncio.TimeoutError:
            pass
    print(f"public: one purchase reached {len(arrivals)}/{m} streams: after the purchase answered, "
          f"p50 {1000 * percentile(arrivals, 50):.0f} ms, p99 {1000 * percentile(arrivals, 99):.0f} ms, "
          f"last {1000 * max(arrivals, default=float('nan')):.0f} ms (the purchase took "
          f"{1000 * (answered - bought):.0f} ms)", flush=True)
    for stream in streams:
        stream.close()
    return len(arrivals) == m


async def main():
    ok = True
    if ARGS.buyers:
        ok &= await buyer_phase(ARGS.buyers)
    if ARGS.public:
        ok &= await public_phase(ARGS.public)
    print("stream-bench:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
