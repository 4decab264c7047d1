"""Fault layer: a fresh stack per test (tests/harness.py) with short timeouts and fast
recovery, a concurrent order load in which every request carries its own
Idempotency-Key, and the checks that must hold once the fault is healed."""

import itertools
import random
import time

import eventlet
import pytest
import requests
import urllib3
from sqlalchemy import text

from tests.harness import books_balance, stack_on_vhost

PROCESSES = {"customers": 1, "products": 2, "orders": 2}
# Short bounds so faults resolve within a test (HOLD_CONFIRM_AGE: orders report an order
# in flight while its transaction is open, see config.yml).
FAST_RECOVERY = {
    "RPC_TIMEOUT": 2,
    "ORDERS_RPC_TIMEOUT": 8,
    "DB_LOCK_TIMEOUT_MS": 1000,  # the bounds nest as in config.yml: lock < statement < RPC
    "DB_STATEMENT_TIMEOUT_MS": 1500,
    "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": 5000,
    "RECOVERY_INTERVAL": 1,
    "RECOVERY_AGE": 3,
    "HOLD_CHECK_INTERVAL": 1,
    "HOLD_CONFIRM_AGE": 5,
    "HTTP_IDLE_TIMEOUT": 3,
}
DEFINITE = {201, 404, 409, 422}
SETTLE_SECONDS = 120


@pytest.fixture
def stack(request, rabbit_manager, clean_databases, test_db_uris, tmp_path_factory):
    with stack_on_vhost(
        request,
        rabbit_manager,
        test_db_uris,
        str(tmp_path_factory.mktemp("fault-stack")),
        "shop_faults",
        PROCESSES,
        **FAST_RECOVERY,
    ) as running:
        yield running


class OrderLoad:
    """``count`` orders over ``product_ids`` from ``concurrency`` clients spread over the
    gateways, each with its own Idempotency-Key; records every answer."""

    def __init__(self, urls, customer_id, product_ids, count=200, concurrency=10, pace=0.02):
        rng = random.Random(7)
        self.urls = urls
        self.pace = pace
        self.concurrency = concurrency
        self.bodies = {
            f"load-{n}": {
                "customer_id": customer_id,
                "products": [
                    {"id": pid, "quantity": rng.randint(1, 2)}
                    for pid in rng.sample(product_ids, rng.randint(1, 2))
                ],
            }
            for n in range(count)
        }
        self.answers = {}  # key -> (status or None, body or None, seconds)
        self.statuses_seen = set()  # over every attempt, retries included
        self.connection_failures = []  # "refused", "timeout" or "aborted", per failed attempt
        self.attempts = []  # (status or None, seconds) of every attempt, retries included
        self.aborted = []  # the exceptions of the attempts whose connection broke
        self.unavailable = []  # (seconds, Retry-After, details.reason) of every 503
        self.timeline = []  # (sent at, time.monotonic(); status or None) of every attempt
        self.http = requests.Session()
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency * 2))
        self._round_robin = itertools.cycle(urls)
        self._thread = None

    def send(self, key):
        url = next(self._round_robin)
        started = time.monotonic()
        try:
            response = self.http.post(
                f"{url}/api/orders",
                json=self.bodies[key],
                headers={"Idempotency-Key": key},
                timeout=20,
            )
            answer = (response.status_code, response.json())
            if response.status_code == 503:
                self.unavailable.append(
                    (
                        time.monotonic() - started,
                        response.headers.get("Retry-After"),
                        answer[1]["details"].get("reason"),
                    )
                )
        except requests.RequestException as exc:
            answer = (None, None)
            self.connection_failures.append(connection_failure_kind(exc))
            if self.connection_failures[-1] == "aborted":
                self.aborted.append(repr(exc))
        except ValueError:  # not JSON
            answer = (None, None)
        self.answers[key] = (*answer, time.monotonic() - started)
        self.attempts.append((answer[0], time.monotonic() - started))
        self.timeline.append((started, answer[0]))
        self.statuses_seen.add(answer[0])
        time.sleep(self.pace)

    def start(self):
        pool = eventlet.GreenPool(self.concurrency)
        self._thread = eventlet.spawn(lambda: list(pool.imap(self.send, self.bodies)))

    def wait(self):
        self._thread.wait()

    def outage(self):
        """What clients saw of a fault: ``{"503": n, "504": n, "no answer": n,
        "longest_answer_s": s}`` over every attempt."""
        statuses = [status for status, _ in self.attempts]
        return {
            "503": statuses.count(503),
            "504": statuses.count(504),
            "no answer": statuses.count(None),
            "longest_answer_s": round(max(seconds for _, seconds in self.attempts), 2),
        }

    def indefinite(self):
        return [key for key, (status, _, _) in self.answers.items() if status not in DEFINITE]

    def settle(self):
        """Re-send every request without a definite answer, with its same key, until
        each has one (bounded by SETTLE_SECONDS)."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.indefinite():
            assert time.monotonic() < deadline, f"never settled: {self.indefinite()[:5]}"
            pool = eventlet.GreenPool(self.concurrency)
            list(pool.imap(self.send, self.indefinite()))
            time.sleep(1)


class StoppableLoad(OrderLoad):
    """An OrderLoad that sends nothing new once :meth:`stop` is called (requests in flight
    finish and are recorded): it runs as long as the test needs, on any machine."""

    stopped = False

    def send(self, key):
        if not self.stopped:
            super().send(key)

    def stop(self):
        self.stopped = True
        self.wait()

    def settle(self):
        self.stopped = False  # the load is over: settling sends again
        super().settle()

    def served_per_second(self, start, end):
        """201s per second among the attempts sent between ``start`` and ``end``
        (``time.monotonic()``)."""
        served = [at for at, status in self.timeline if start <= at < end and status == 201]
        return len(served) / (end - start)


def connection_failure_kind(exc):
    """``"refused"`` (no server listening: the request was never sent), ``"timeout"`` (no
    answer in time) or ``"aborted"`` (the connection broke with the request sent)."""
    if isinstance(exc, requests.ConnectTimeout):
        return "refused"
    if isinstance(exc, requests.Timeout):
        return "timeout"
    reason = exc.args[0] if exc.args else None
    if isinstance(getattr(reason, "reason", None), urllib3.exceptions.NewConnectionError):
        return "refused"
    return "aborted"


def create_shop(api, products=5, stock=60, prefix="p"):
    """A customer and ``products`` products of ``stock`` units each, through the API at
    ``api``: ``(customer_id, {product_id: stock})``."""
    customer = requests.post(
        f"{api}/api/customers", json={"name": "c", "email": "c@example.com"}, timeout=10
    ).json()
    stock_added = {}
    for n in range(products):
        product = requests.post(
            f"{api}/api/products",
            json={"name": f"{prefix}{n}", "price": "1.25", "stock": stock},
            timeout=10,
        ).json()
        stock_added[product["id"]] = stock
    return customer["id"], stock_added


@pytest.fixture
def shop(stack):
    """A customer and five products of 60 units each, through the API."""
    return create_shop(stack.urls[0])


@pytest.fixture
def load(stack, shop):
    customer_id, stock_added = shop
    return OrderLoad(stack.urls, customer_id, sorted(stock_added))


@pytest.fixture
def check_books(clean_databases, shop, load):
    """After settling: no answer was ever a 500, the books balance (polled until the
    reconcilers are done), no order is pending, no key maps to two orders, and every 201
    names a confirmed order."""

    def check():
        assert load.statuses_seen <= DEFINITE | {503, 504, None}, load.statuses_seen
        assert_books(clean_databases, shop[1], load)

    return check


def assert_books(engines, stock_added, load):
    """What check_books checks once the load has settled, on the databases of
    ``engines``: balanced books (polled until the reconcilers are done), no pending or
    cancelling order, no key with two orders, every 201 naming its confirmed order."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while problems := books_balance(engines, stock_added):
        assert time.monotonic() < deadline, problems
        time.sleep(1)
    with engines["orders"].connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM orders WHERE status = 'pending'")) == 0
        # no cancel left half done either (books_balance reports one too)
        assert conn.scalar(text("SELECT count(*) FROM orders WHERE status = 'cancelling'")) == 0
        assert (
            conn.execute(
                text(
                    "SELECT idempotency_key FROM orders GROUP BY idempotency_key HAVING count(*) > 1"
                )
            ).all()
            == []
        )
        by_key = dict(conn.execute(text("SELECT idempotency_key, status FROM orders")).all())
        ids = dict(conn.execute(text("SELECT idempotency_key, id FROM orders")).all())
    for key, (status, body, _) in load.answers.items():
        if status == 201:
            assert (by_key[key], ids[key]) == ("confirmed", body["id"]), key
        else:
            assert by_key.get(key) in (None, "rejected", "failed"), (key, status, body)
