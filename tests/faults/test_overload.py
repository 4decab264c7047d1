"""Overload (issue 22): 16x the connections the shop serves at 1x, against the bounds.

Before admission control, every request waited for a gateway worker however many were
ahead of it: at 16x, orders were answered after 15 s and a product read (bound: 5 s)
after as long. Now each gateway works on at most ``ADMISSION_WRITES`` orders at once;
the others wait at most ``ADMISSION_QUEUE_SECONDS`` and are shed with an early 503
(``reason: overloaded``, ``Retry-After``), and reads have a lane of their own.

The load: ``CLIENTS`` (16 x 12) keyed clients placing orders back to back on three
gateway processes, with a reader in a process of its own fetching a product and
``/health`` alongside. Checked:
every order answer within its bound counted from when it was sent, every 503 early and
saying why, every read a 200 within the read bound, then the books after settling (each
shed order re-sent with its key until it has a definite answer)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tests.faults.conftest import FAST_RECOVERY, OrderLoad, create_shop

BASE_CLIENTS = 12
CLIENTS = 16 * BASE_CLIENTS
ORDERS = 2500
STOCK = 10_000
QUEUE_SECONDS = 1.0
# A client's measure includes its own green-thread scheduling under 200 clients: slack.
CLIENT_SLACK = 1.0
ORDER_BOUND = FAST_RECOVERY["ORDERS_RPC_TIMEOUT"]
READ_BOUND = FAST_RECOVERY["RPC_TIMEOUT"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shop(stack):
    """A customer and three products with stock for the whole load."""
    return create_shop(stack.urls[0], products=3, stock=STOCK, prefix="p")


@pytest.fixture
def load(stack, shop):
    """The keyed order clients. A keep-alive connection the gateway closed after
    ``HTTP_IDLE_TIMEOUT`` (its right) can be picked from the client's pool at that very
    moment: the send fails before any answer ("Remote end closed connection"). A client
    with an Idempotency-Key may send again, and this one does, once, at once (urllib3's
    retry of a dropped connection); every other failure still counts."""
    customer_id, stock_added = shop
    load = OrderLoad(
        stack.urls, customer_id, sorted(stock_added), count=ORDERS, concurrency=CLIENTS, pace=0
    )
    stale_connection_retry = Retry(
        total=1,
        connect=0,
        read=1,
        status=0,
        allowed_methods=None,
        respect_retry_after_header=False,  # a 503 is an answer here, recorded as such
    )
    load.http.mount(
        "http://", HTTPAdapter(pool_maxsize=CLIENTS * 2, max_retries=stale_connection_retry)
    )
    return load


class Reader:
    """``tests/faults/reader.py`` in a process of its own, reading alongside the load;
    ``stop()`` returns its reads as (what, status, seconds)."""

    def __init__(self, url, product_id):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.reader", url, str(product_id)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def stop(self):
        out, _ = self.process.communicate(b"", timeout=READ_BOUND + 30)
        assert self.process.returncode == 0, self.process.returncode
        return [tuple(json.loads(line)) for line in out.splitlines()]


@pytest.fixture
def reader(stack, shop):
    """The reader of the shop's first product on the second gateway port; killed if the
    test ends before stopping it."""
    _, stock_added = shop
    reader = Reader(stack.urls[1], min(stock_added))
    yield reader
    if reader.process.poll() is None:
        reader.process.kill()
        reader.process.wait()


def test_16x_overload_sheds_early_and_keeps_every_bound(load, reader, check_books):
    started = time.monotonic()
    load.start()
    load.wait()
    seconds = time.monotonic() - started
    reads = reader.stop()

    statuses = [status for status, _ in load.attempts]
    served = [s for status, s in load.attempts if status == 201]
    print(
        f"\n{CLIENTS} clients: {len(served)} orders in {seconds:.1f} s "
        f"({len(served) / seconds:.0f}/s), {statuses.count(503)} shed, "
        f"p99 of admitted {sorted(served)[int(len(served) * 0.99)]:.2f} s, "
        f"reads {len(reads)}, slowest {max(s for *_, s in reads):.2f} s"
    )
    # no 504 (nothing waited out its bound), and every request answered
    assert set(statuses) <= {201, 503}, (set(statuses), load.connection_failures, load.aborted)
    assert statuses.count(503) > 0, "the load never exceeded what the shop serves"
    assert max(served) < ORDER_BOUND + CLIENT_SLACK
    for waited, retry_after, reason in load.unavailable:
        assert (reason, retry_after) == ("overloaded", "1")
        assert waited < QUEUE_SECONDS + CLIENT_SLACK
    assert sum(what == "health" for what, *_ in reads) >= 10, reads
    assert {status for _, status, _ in reads} == {200}
    assert max(s for what, _, s in reads if what == "product") < READ_BOUND
    assert max(s for what, _, s in reads if what == "health") < 1.0

    load.settle()
    check_books()
