"""A reader in a process of its own: ``python -m tests.faults.reader URL PRODUCT_ID``.

It GETs the product and ``/health`` every 0.2 s until its stdin closes, then prints its
reads as JSON lines ``[what, status, seconds]`` (status ``null``: no answer). In its own
process, with plain blocking ``requests`` and no eventlet, the time it measures is the
gateway's answer, not its turn among the load's hundreds of green threads (a reader in the
load's process saw 1.01 s for a ``/health`` in CI while its answers take milliseconds)."""

import json
import sys
import threading
import time

import requests

PAUSE = 0.2
READ_TIMEOUT = 30


def read_until(stopped, url, product_id):
    """Every ``PAUSE`` s until ``stopped`` is set: the product, then ``/health``."""
    http = requests.Session()
    reads = []
    while not stopped.is_set():
        for what, path in (("product", f"/api/products/{product_id}"), ("health", "/health")):
            started = time.monotonic()
            try:
                status = http.get(f"{url}{path}", timeout=READ_TIMEOUT).status_code
            except requests.RequestException:
                status = None
            reads.append((what, status, time.monotonic() - started))
        stopped.wait(PAUSE)
    return reads


def main(url, product_id):
    stopped = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stopped.set()), daemon=True).start()
    for read in read_until(stopped, url, product_id):
        print(json.dumps(read))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
