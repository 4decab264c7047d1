"""Bounded responses (issue 9): heavy reads must not starve order placement.

The probe: a customer with 1,000 orders of 100 lines each, and ten clients looping
``GET /api/customers/<id>/orders?limit=1000`` on the same gateways as the order load.
Unbounded, one such read was 8.4 MB, every reader's worker held its whole page at once,
the orders processes grew past 1 GB and orders timed out behind the reads. With the page
budget (``PAGE_MAX_LINES`` lines a page), each read holds at most that many lines; the
orders must all get a definite answer within their bound, every read a 200 of at most
``PAGE_MAX_LINES`` lines, and the orders processes stay small.

The 1,000 orders are inserted straight into the test databases, as what the shop would
hold had they been placed: confirmed orders in the orders database *and* their confirmed
holds in the products database (on 100 products of their own, with no stock left), so
``check_books`` holds over every order, theirs included, unchanged.

Bounded: the readers stop with the load (or after READ_SECONDS); about a minute in all,
the stack's start and stop included."""

import contextlib
import time

import eventlet
import pytest
import requests
from sqlalchemy import text

from common.settings import settings_of
from tests.faults.conftest import DEFINITE, FAST_RECOVERY

HEAVY_ORDERS = 1000
LINES_PER_ORDER = 100
READERS = 10
READ_SECONDS = 60  # the readers' own bound, should the load outlast it
RSS_BOUND_MB = 300  # per orders process; one idles at ~80 MB
HEALTH_BOUND_SECONDS = 5.0  # /health makes no RPC: only a starved gateway is this slow


def seed_heavy_orders(engines, customer_id):
    """HEAVY_ORDERS confirmed orders of LINES_PER_ORDER lines for ``customer_id``, with
    their confirmed holds, in a few INSERT ... SELECT statements. Returns their ids."""
    refs = "'heavy-' || n"
    with engines["products"].begin() as conn:
        product_ids = conn.scalars(
            text(
                "INSERT INTO products (name, price, stock) "
                "SELECT 'heavy product ' || n, 1.00, 0 FROM generate_series(1, :lines) n "
                "RETURNING id"
            ),
            {"lines": LINES_PER_ORDER},
        ).all()
        conn.execute(
            text(
                f"INSERT INTO order_holds (order_ref, status) SELECT {refs}, 'confirmed' "
                "FROM generate_series(1, :orders) n"
            ),
            {"orders": HEAVY_ORDERS},
        )
        conn.execute(
            text(
                f"INSERT INTO reservations (order_ref, product_id, quantity, unit_price) "
                f"SELECT {refs}, p, 1, 1.00 FROM generate_series(1, :orders) n, unnest(:products) p"
            ),
            {"orders": HEAVY_ORDERS, "products": product_ids},
        )
    with engines["orders"].begin() as conn:
        ids = conn.scalars(
            text(
                f"INSERT INTO orders (order_ref, customer_id, status, total, requested, "
                f"idempotency_key) "
                f"SELECT {refs}, :customer, 'confirmed', :lines, "
                "(SELECT jsonb_agg(jsonb_build_object('id', p, 'quantity', 1) ORDER BY p) "
                "   FROM unnest(:products) p), "
                f"{refs} FROM generate_series(1, :orders) n ORDER BY n RETURNING id"
            ),
            {
                "customer": customer_id,
                "lines": LINES_PER_ORDER,
                "orders": HEAVY_ORDERS,
                "products": product_ids,
            },
        ).all()
        conn.execute(
            text(
                "INSERT INTO order_lines (order_id, product_id, product_name, quantity, unit_price) "
                "SELECT o.id, p, 'heavy product ' || p, 1, 1.00 "
                "FROM orders o, unnest(:products) p WHERE o.customer_id = :customer "
                "ORDER BY o.id, p"
            ),  # an order's lines together, as an order writes them
            {"customer": customer_id, "products": product_ids},
        )
    return sorted(ids)


def rss_mb(pid):
    """The resident set of process ``pid`` in MB, or None if it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class HeavyReaders:
    """READERS clients, each walking the customer's orders page after page (following
    ``Link``, then from the first page again) until stopped; every answer is recorded."""

    def __init__(self, urls, customer_id):
        self.firsts = [f"{url}/api/customers/{customer_id}/orders?limit=1000" for url in urls]
        self.reads = []  # (status or None, bytes, seconds, lines)
        self.walks = []  # the ids of each walk from the first page, in the order they came
        self.http = requests.Session()
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=READERS))
        self.stopped = False
        self._threads = []

    def read(self, n):
        first = url = self.firsts[n % len(self.firsts)]
        walked = []
        deadline = time.monotonic() + READ_SECONDS
        while not self.stopped and time.monotonic() < deadline:
            if url == first and walked:
                self.walks.append(walked)
                walked = []
            started = time.monotonic()
            try:
                response = self.http.get(url, timeout=30)
                page = response.json() if response.status_code == 200 else []
            except (requests.RequestException, ValueError):
                self.reads.append((None, 0, time.monotonic() - started, 0))
                url = first
                continue
            lines = sum(len(order["lines"]) for order in page)
            self.reads.append(
                (response.status_code, len(response.content), time.monotonic() - started, lines)
            )
            walked.extend(order["id"] for order in page)
            url = response.links["next"]["url"] if "next" in response.links else first
        if walked:
            self.walks.append(walked)  # stopped mid-walk

    def start(self):
        self._threads = [eventlet.spawn(self.read, n) for n in range(READERS)]

    def stop(self):
        self.stopped = True
        for thread in self._threads:
            thread.wait()
        self.http.close()


class Watch:
    """Samples, every ``interval`` seconds until stopped, the RSS of the orders processes
    and the latency of ``/health`` on every gateway."""

    def __init__(self, stack, interval=0.25):
        self.stack = stack
        self.pids = {name: stack.pid(name) for name in ("orders-0", "orders-1")}
        self.urls = stack.urls
        self.interval = interval
        self.rss = {name: [] for name in self.pids}
        self.restarts = []  # the orders processes that died meanwhile
        self.health = []  # (status or None, seconds)
        self.stopped = False
        self._threads = []

    def sample_rss(self):
        while not self.stopped:
            for name, pid in list(self.pids.items()):
                rss = rss_mb(pid)
                if rss is not None:
                    self.rss[name].append(rss)
                    continue
                if pid not in self.restarts:
                    self.restarts.append(pid)
                with contextlib.suppress(ValueError):  # not restarted yet: "0", or an error
                    self.pids[name] = self.stack.pid(name) or pid
            eventlet.sleep(self.interval)

    def probe_health(self, url):
        while not self.stopped:
            started = time.monotonic()
            try:
                status = requests.get(f"{url}/health", timeout=30).status_code
            except requests.RequestException:
                status = None
            self.health.append((status, time.monotonic() - started))
            eventlet.sleep(self.interval)

    def start(self):
        self._threads = [eventlet.spawn(self.sample_rss)] + [
            eventlet.spawn(self.probe_health, url) for url in self.urls
        ]

    def stop(self):
        self.stopped = True
        for thread in self._threads:
            thread.wait()


@pytest.fixture
def page_max_lines(base_config):
    return settings_of(base_config).page_max_lines


def test_order_placement_keeps_answering_while_heavy_reads_run(
    stack, shop, load, clean_databases, check_books, page_max_lines
):
    api = stack.urls[0]
    heavy = requests.post(
        f"{api}/api/customers", json={"name": "heavy", "email": "heavy@example.com"}
    ).json()["id"]
    heavy_ids = seed_heavy_orders(clean_databases, heavy)

    started = time.monotonic()  # one read alone first: the probe's size and time
    alone = requests.get(f"{api}/api/customers/{heavy}/orders?limit=1000", timeout=30)
    alone_seconds = time.monotonic() - started
    alone_lines = sum(len(o["lines"]) for o in alone.json()) if alone.status_code == 200 else 0

    watch = Watch(stack)
    watch.start()
    eventlet.sleep(1)  # the orders processes' RSS before the readers
    rss_before = {name: samples[-1] for name, samples in watch.rss.items()}
    readers = HeavyReaders(stack.urls, heavy)
    readers.start()
    eventlet.sleep(1)  # the readers are at it before the first order
    load_started = time.monotonic()
    load.start()
    load.wait()
    load_seconds = time.monotonic() - load_started
    readers.stop()
    eventlet.sleep(1)
    watch.stop()

    rss_peak = {name: max(samples) for name, samples in watch.rss.items()}
    order_seconds = [seconds for _, _, seconds in load.answers.values()]
    read_statuses = {status for status, _, _, _ in readers.reads}
    summary = (
        f"one read alone: {alone.status_code}, {len(alone.content) / 1e6:.2f} MB, "
        f"{alone_lines} lines in {alone_seconds:.2f} s; "
        f"{len(readers.reads)} reads under load (statuses {sorted(read_statuses, key=str)}), "
        f"max {max((s for _, s, _, _ in readers.reads), default=0) / 1e6:.2f} MB, "
        f"max {max((t for _, _, t, _ in readers.reads), default=0):.2f} s, "
        f"walks of {sorted(len(walk) for walk in readers.walks)} orders; "
        f"orders: {len(load.answers)} answered in {load_seconds:.1f} s, "
        f"statuses {sorted(load.statuses_seen, key=str)}, max {max(order_seconds):.2f} s; "
        f"RSS MB before {rss_before}, peak {rss_peak}, after "
        f"{ {name: samples[-1] for name, samples in watch.rss.items()} }; "
        f"/health max {max(seconds for _, seconds in watch.health):.2f} s; "
        f"orders processes that died: {watch.restarts} (logs in {stack.run_dir}/logs)"
    )
    print(summary)

    # Every order got a definite answer within its bound: no 503 / 504, no dropped call.
    bound = FAST_RECOVERY["ORDERS_RPC_TIMEOUT"]
    assert load.indefinite() == [], summary
    assert load.statuses_seen <= DEFINITE, summary
    assert max(order_seconds) < bound, summary
    # Every read answered 200 with at most PAGE_MAX_LINES lines...
    assert alone.status_code == 200 and readers.reads and read_statuses == {200}, summary
    assert max(lines for _, _, _, lines in readers.reads) <= page_max_lines, summary
    # ... and following Link walked the orders in order, each exactly once, no gap.
    assert readers.walks, summary
    assert all(walk == heavy_ids[: len(walk)] for walk in readers.walks), summary
    # What a read can make an orders process hold is bounded; the gateways kept answering.
    assert watch.restarts == [], summary
    assert max(rss_peak.values()) < RSS_BOUND_MB, summary
    assert {status for status, _ in watch.health} == {200}, summary
    assert max(seconds for _, seconds in watch.health) < HEALTH_BOUND_SECONDS, summary
    check_books()
