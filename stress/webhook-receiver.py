#!/usr/bin/env python3
"""A small webhook receiver for flashsale: verifies every delivery with the official
`standardwebhooks` library (PyPI) and records it, for stress tests and for trying webhooks.

    pip install standardwebhooks
    python3 stress/webhook-receiver.py --port 9999 --secret whsec_... [--log deliveries.jsonl]

Answers 204 to a delivery whose signature verifies, 400 to one that does not. Options make
it misbehave on purpose: --fail-percent N answers 500 to N% of deliveries, and
--down-file PATH answers 503 while PATH exists (touch it to take the receiver "down").
`GET /stats` returns JSON: deliveries received and verified, distinct event ids, refused,
unverified, purchases per sku, the time of the last verified delivery, and the largest
purchase lag seen (receipt time minus the event's occurredAt; `/stats?reset-lag` resets it).

The secret can also come from the environment (WEBHOOK_SECRET), or be read from a file
that appears later (--secret-file: the endpoint is registered after the receiver starts).
Single-threaded asyncio with HTTP/1.1 keep-alive: a few thousand deliveries a second.
"""

import argparse
import asyncio
import datetime
import json
import os
import random
import sys
import time

from standardwebhooks.webhooks import Webhook


class Receiver:
    def __init__(self, args):
        self.args = args
        self.secret = args.secret or os.environ.get("WEBHOOK_SECRET")
        self.hook = Webhook(self.secret) if self.secret else None
        self.secret_mtime = None
        self.received = 0
        self.verified = 0
        self.refused = 0
        self.unverified = 0
        self.event_ids = set()
        self.purchases = set()
        self.purchases_by_sku = {}
        self.refused_ids = set()
        self.last_verified_at = None
        self.max_lag = 0.0
        self.log = open(args.log, "a", buffering=1) if args.log else None

    def signer(self):
        # The file may be written after the start, and again for a new endpoint: reread it
        # whenever it changes.
        path = self.args.secret_file
        if path and os.path.exists(path):
            mtime = os.stat(path).st_mtime_ns
            if mtime != self.secret_mtime:
                secret = open(path).read().strip()
                if secret:
                    self.secret_mtime = mtime
                    self.secret = secret
                    self.hook = Webhook(secret)
        return self.hook

    def stats(self):
        return {
            "received": self.received,
            "verified": self.verified,
            "distinctEvents": len(self.event_ids),
            "purchases": len(self.purchases),
            "purchasesBySku": {sku: len(ids) for sku, ids in self.purchases_by_sku.items()},
            "refused": self.refused,
            # Events refused at least once, and how many of them were later delivered with
            # the same webhook-id (a redelivery keeps it).
            "refusedEvents": len(self.refused_ids),
            "refusedEventsDeliveredLater": len(self.refused_ids & self.event_ids),
            "unverified": self.unverified,
            "lastVerifiedAt": self.last_verified_at,
            "maxLagSeconds": round(self.max_lag, 3),
        }

    def deliver(self, headers, body):
        """The status for one delivery."""
        self.received += 1
        if self.args.down_file and os.path.exists(self.args.down_file):
            self.refused += 1
            self.refused_ids.add(headers.get("webhook-id"))
            return 503
        if random.random() * 100 < self.args.fail_percent:
            self.refused += 1
            self.refused_ids.add(headers.get("webhook-id"))
            return 500
        hook = self.signer()
        try:
            if hook is None:
                raise ValueError("no secret yet")
            event = hook.verify(body, headers)
        except Exception:  # any failure to verify is a 400, and counted
            self.unverified += 1
            return 400
        now = time.time()
        self.verified += 1
        self.last_verified_at = now
        self.event_ids.add(headers.get("webhook-id"))
        if event.get("type") == "purchase.created":
            self.purchases.add(event["data"]["id"])
            self.purchases_by_sku.setdefault(event["sku"], set()).add(event["data"]["id"])
            occurred = datetime.datetime.fromisoformat(event["occurredAt"].replace("Z", "+00:00"))
            self.max_lag = max(self.max_lag, now - occurred.timestamp())
        if self.log:
            self.log.write(json.dumps({"webhookId": headers.get("webhook-id"), "event": event}) + "\n")
        return 204

    async def handle(self, reader, writer):
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                if method == "GET" and path.startswith("/stats"):
                    payload = json.dumps(self.stats()).encode()
                    status = 200
                    if "reset-lag" in path:
                        self.max_lag = 0.0
                elif method == "POST":
                    status = self.deliver(headers, body)
                    payload = b""
                else:
                    status, payload = 404, b""
                reason = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
                          500: "Internal Server Error", 503: "Service Unavailable"}[status]
                head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(payload)}\r\n"
                if payload:
                    head += "Content-Type: application/json\r\n"
                writer.write(head.encode() + b"\r\n" + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--secret", help="the endpoint's whsec_ secret (or WEBHOOK_SECRET)")
    parser.add_argument("--secret-file", help="read the secret from this file once it exists")
    parser.add_argument("--fail-percent", type=float, default=0.0)
    parser.add_argument("--down-file", help="answer 503 while this file exists")
    parser.add_argument("--log", help="append each verified delivery as a JSON line here")
    args = parser.parse_args()
    receiver = Receiver(args)
    server = await asyncio.start_server(receiver.handle, args.host, args.port, backlog=1024)
    print(f"webhook receiver on http://{args.host}:{args.port}/ (GET /stats)", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
