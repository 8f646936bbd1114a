#!/usr/bin/env python3
"""Waits until every purchase of a sale has reached the webhook receiver and prints the
delivery lag of that run.

    stress/delivery-lag.py BASE_URL RECEIVER_URL SKU RUN_ENDED_EPOCH [TIMEOUT_SECONDS]

Reads the sale's `sold` from the admin API (ADMIN_API_KEY) and the receiver's verified
purchases for the sku from its /stats. Prints one line:

    webhooks: 100/100 purchases delivered, caught up 0.4 s after the run ended, max lag 0.9 s

(max lag = the longest time from a purchase's commit to its verified receipt). Exits 1 when
the receiver has not received every purchase within the timeout (default 120 s).
"""

import json
import os
import sys
import time
import urllib.request


def get(url, key=None):
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def refused_as_internal(base, key, webhook):
    """Whether the endpoint's deliveries fail because the service refuses internal
    addresses (WEBHOOK_ALLOWED_NETWORKS unset on a service started by hand)."""
    page = get(f"{base}/api/v1/admin/webhooks/deliveries?webhook={webhook}&limit=5", key)
    items = page.get("items", page) if isinstance(page, dict) else page
    return any("not allowed" in (item.get("lastError") or "") for item in items)


def main():
    base, receiver, sku, ended = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
    key = os.environ.get("ADMIN_API_KEY", "dev-admin-key")
    webhook = os.environ.get("WEBHOOK_ID")
    sold = get(f"{base}/api/v1/admin/sales/{sku}", key)["sold"]
    deadline = time.time() + timeout
    while True:
        stats = get(f"{receiver}/stats")
        delivered = stats["purchasesBySku"].get(sku, 0)
        if delivered >= sold or time.time() > deadline:
            break
        if delivered == 0 and webhook and refused_as_internal(base, key, webhook):
            print(
                "webhooks: the service refuses to deliver to this host's receiver (an internal "
                "address): start it with WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8, or run with WEBHOOKS=0"
            )
            sys.exit(1)
        time.sleep(0.1)
    stats = get(f"{receiver}/stats?reset-lag")
    caught_up = max(0.0, (stats["lastVerifiedAt"] or ended) - ended)
    print(
        f"webhooks: {delivered}/{sold} purchases delivered, caught up {caught_up:.1f} s after "
        f"the run ended, max lag {stats['maxLagSeconds']:.1f} s, unverified {stats['unverified']}"
    )
    sys.exit(0 if delivered >= sold and stats["unverified"] == 0 else 1)


if __name__ == "__main__":
    main()
