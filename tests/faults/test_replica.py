"""The stack with products reading from a real streaming replica (issue 12).

A private PostgreSQL primary and hot-standby replica (scripts/pg_replica.py: their own
clusters on free ports, never the default one on 5432, stopped by pid whatever happens)
hold the products database; customers and orders use the usual test databases. One
stack for the module (tests/harness.py), products x2, reading with
``PRODUCTS_READ_DB_URI`` set to the replica.

Where a read went is proven from each server's own statistics (scans of ``products`` in
``pg_stat_user_tables``: the replica counts the queries run on it, never the writes it
replays) and from the services' ``shop_db_reads_total``."""

import collections
import itertools
import random
import time

import eventlet
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.exc import InternalError
from sqlalchemy.pool import NullPool

from common import admin
from scripts.pg_replica import private_replica_pair
from tests.faults.conftest import FAST_RECOVERY
from tests.harness import stack_on_vhost

PROCESSES = {"customers": 1, "products": 2, "orders": 1}
DATABASE = "shop_products_test"
RETRY_SECONDS = 1
REPLICA_TIMEOUT_MS = 500
# A backend flushes its statistics when idle, at most once a second, and an idle one
# within PostgreSQL 15's PGSTAT_IDLE_INTERVAL (10 s).
STATS_SETTLE_SECONDS = 11
SCANS = text(
    "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
    "WHERE relname = 'products'"
)


@pytest.fixture(scope="module")
def pair():
    with private_replica_pair(prefix="shop-pg-test-") as running:
        yield running


@pytest.fixture(scope="module")
def servers(pair):
    """Autocommit engines on the products database of ``primary`` and ``replica``,
    created and migrated on the primary, replicated."""
    primary_uri = pair.primary.uri(DATABASE)
    admin.create_database(primary_uri)
    admin.migrate("products", primary_uri)
    pair.wait_caught_up()
    engines = {
        "primary": create_engine(primary_uri, isolation_level="AUTOCOMMIT", poolclass=NullPool),
        "replica": create_engine(
            pair.replica.uri(DATABASE), isolation_level="AUTOCOMMIT", poolclass=NullPool
        ),
    }
    yield engines
    for engine in engines.values():
        engine.dispose()


@pytest.fixture(scope="module")
def stack(request, rabbit_manager, databases, pair, servers, tmp_path_factory):
    db_uris = {**databases, "products": pair.primary.uri(DATABASE)}
    with stack_on_vhost(
        request,
        rabbit_manager,
        db_uris,
        str(tmp_path_factory.mktemp("replica-stack")),
        "shop_replica",
        PROCESSES,
        **FAST_RECOVERY,
        PRODUCTS_READ_DB_URI=pair.replica.uri(DATABASE),
        DB_REPLICA_RETRY_SECONDS=RETRY_SECONDS,
        DB_REPLICA_TIMEOUT_MS=REPLICA_TIMEOUT_MS,
    ) as running:
        yield running


@pytest.fixture
def api(stack, clean_databases, pair, servers):
    """The first gateway, in front of empty databases (the replica caught up)."""
    admin.empty_tables(servers["primary"])
    pair.wait_caught_up()
    return stack.urls[0]


def scans(engine):
    with engine.connect() as conn:
        return conn.scalar(SCANS)


def read_metrics(stack):
    """``(reads by source, summed over the products processes; [replica_up of each])``."""
    reads, up = collections.Counter(), []
    for target in stack.metrics_targets["products"]:
        body = requests.get(f"http://{target}/metrics", timeout=5).text
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == "shop_db_reads_total":
                    reads[sample.labels["source"]] += sample.value
                elif sample.name == "shop_db_replica_up":
                    up.append(sample.value)
    return reads, up


def create_products(api, count, stock=50):
    return [
        requests.post(
            f"{api}/api/products", json={"name": f"p{n}", "price": "2.5", "stock": stock}
        ).json()["id"]
        for n in range(count)
    ]


def test_reads_are_served_by_the_replica_and_only_misses_by_the_primary(stack, api, pair, servers):
    ids = create_products(api, 25)
    pair.wait_caught_up()
    time.sleep(STATS_SETTLE_SECONDS)  # whatever the creation left unflushed
    before = {name: scans(engine) for name, engine in servers.items()}
    reads_before, _ = read_metrics(stack)

    urls = itertools.cycle(stack.urls)
    for product_id in ids:  # 25 reads, each found on the replica
        assert requests.get(f"{next(urls)}/api/products/{product_id}").status_code == 200
    pages = [
        requests.get(f"{next(urls)}/api/products", params={"limit": 10, "after": after})
        for after in (0, 10, 20)
    ]  # two full pages, then the last: checked on the primary
    assert [len(page.json()) for page in pages] == [10, 10, 5]
    missing = requests.get(f"{next(urls)}/api/products/{ids[-1] + 1000}")
    assert (missing.status_code, missing.json()["error"]) == (404, "product_not_found")

    time.sleep(STATS_SETTLE_SECONDS)
    after = {name: scans(engine) for name, engine in servers.items()}
    reads_after, up = read_metrics(stack)
    # every read was tried on the replica; the primary ran only the two misses
    assert after["replica"] - before["replica"] == 25 + 3 + 1
    assert after["primary"] - before["primary"] == 2
    assert reads_after["replica"] - reads_before["replica"] == 25 + 2
    assert reads_after["fallback_miss"] - reads_before["fallback_miss"] == 2
    assert reads_after["primary"] == reads_before["primary"]
    assert up == [1.0] * PROCESSES["products"]


def test_writes_reach_the_replica_only_by_replication(stack, api, pair, servers):
    """An order's reservation is made on the primary under its row locks; the replica,
    read-only by nature, gets the new stock from the WAL and serves it afterwards."""
    product_id = create_products(api, 1, stock=10)[0]
    customer = requests.post(
        f"{api}/api/customers", json={"name": "c", "email": "c@example.com"}
    ).json()
    order = requests.post(
        f"{api}/api/orders",
        json={"customer_id": customer["id"], "products": [{"id": product_id, "quantity": 3}]},
    )
    assert order.status_code == 201, order.text
    with servers["primary"].connect() as conn:
        assert (
            conn.scalar(text("SELECT stock FROM products WHERE id = :id"), {"id": product_id}) == 7
        )
    pair.wait_caught_up()
    with servers["replica"].connect() as conn:
        assert (
            conn.scalar(text("SELECT stock FROM products WHERE id = :id"), {"id": product_id}) == 7
        )
        # nothing was written there: replay is not counted as writes, and it refuses any
        assert conn.execute(
            text(
                "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables "
                "WHERE relname = 'products'"
            )
        ).one() == (0, 0, 0)
        with pytest.raises(InternalError, match="read-only transaction"):
            conn.execute(text("UPDATE products SET stock = 0"))
    reads_before, _ = read_metrics(stack)
    assert requests.get(f"{api}/api/products/{product_id}").json()["stock"] == 7
    reads_after, _ = read_metrics(stack)
    assert reads_after["replica"] - reads_before["replica"] == 1


def test_a_product_is_readable_at_once_while_the_replica_lags(stack, api, pair, servers):
    """Replay paused: the replica lags. A new product is read on the primary (a miss
    falls back), and so is the last page; a known product's stock may be stale (the
    documented lag) until the replica catches up."""
    known = create_products(api, 1, stock=10)[0]
    customer = requests.post(
        f"{api}/api/customers", json={"name": "c", "email": "c@example.com"}
    ).json()
    pair.wait_caught_up()
    pair.replica.query("SELECT pg_wal_replay_pause()")
    try:
        created = requests.post(
            f"{api}/api/products", json={"name": "new", "price": "1", "stock": 4}
        ).json()
        order = requests.post(
            f"{api}/api/orders",
            json={"customer_id": customer["id"], "products": [{"id": known, "quantity": 2}]},
        )
        assert order.status_code == 201, order.text
        with servers["replica"].connect() as conn:
            assert (
                conn.scalar(
                    text("SELECT count(*) FROM products WHERE id = :id"), {"id": created["id"]}
                )
                == 0
            )
        reads_before, _ = read_metrics(stack)

        for url in stack.urls:  # each gateway, both products processes over time
            assert requests.get(f"{url}/api/products/{created['id']}").json() == created
            page = requests.get(f"{url}/api/products").json()
            assert [product["id"] for product in page] == [known, created["id"]]
        assert requests.get(f"{api}/api/products/{known}").json()["stock"] == 10  # stale

        reads_after, _ = read_metrics(stack)
        assert reads_after["fallback_miss"] - reads_before["fallback_miss"] == 2 * len(stack.urls)
    finally:
        pair.replica.query("SELECT pg_wal_replay_resume()")
    pair.wait_caught_up()
    assert requests.get(f"{api}/api/products/{known}").json()["stock"] == 8


class ReadLoad:
    """``concurrency`` clients reading products by id and list pages through every
    gateway until :meth:`stop`; records ``(started_at, status or None, seconds)``."""

    def __init__(self, urls, ids, concurrency=8):
        self.urls = itertools.cycle(urls)
        self.ids = ids
        self.concurrency = concurrency
        self.answers = []
        self.running = False
        self.http = requests.Session()
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency * 3))
        self.pool = eventlet.GreenPool(concurrency)

    def client(self, seed):
        rng = random.Random(seed)
        while self.running:
            url = next(self.urls)
            if rng.random() < 0.8:
                path, params = f"/api/products/{rng.choice(self.ids)}", None
            else:
                path, params = "/api/products", {"limit": 5, "after": rng.choice(self.ids)}
            started = time.monotonic()
            try:
                status = self.http.get(f"{url}{path}", params=params, timeout=10).status_code
            except requests.RequestException:
                status = None
            self.answers.append((started, status, time.monotonic() - started))
            eventlet.sleep(0.005)

    def start(self):
        self.running = True
        for seed in range(self.concurrency):
            self.pool.spawn(self.client, seed)

    def stop(self):
        self.running = False
        self.pool.waitall()

    def since(self, moment):
        return [answer for answer in self.answers if answer[0] >= moment]


def wait_until(condition, message, timeout=20, interval=0.2):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        eventlet.sleep(interval)


def test_replica_stopped_mid_load_then_back(stack, api, pair, servers):
    """The replica stops (fast shutdown, by pid) under a read load: every read is still
    answered, by the primary, none slower than the replica bound allows; it starts again
    and reads return to it within DB_REPLICA_RETRY_SECONDS, with no restart."""
    ids = create_products(api, 20)
    pair.wait_caught_up()
    load = ReadLoad(stack.urls, ids)
    load.start()
    try:
        eventlet.sleep(2)
        stopped_at = time.monotonic()
        pair.replica.stop()
        wait_until(
            lambda: read_metrics(stack)[1] == [0.0] * PROCESSES["products"],
            "every products process rests the replica",
        )
        primary_reads = read_metrics(stack)[0]["primary"]
        eventlet.sleep(3)  # reads go straight to the primary meanwhile
        assert read_metrics(stack)[0]["primary"] > primary_reads
        assert pair.replica.pid is None

        pair.replica.start()
        back_at = time.monotonic()
        wait_until(
            lambda: read_metrics(stack)[1] == [1.0] * PROCESSES["products"],
            "reads never returned to the replica",
            timeout=RETRY_SECONDS + 15,
        )
        returned_after = time.monotonic() - back_at
        replica_scans, replica_reads = scans(servers["replica"]), read_metrics(stack)[0]["replica"]
        eventlet.sleep(2)
    finally:
        load.stop()

    statuses = collections.Counter(status for _, status, _ in load.answers)
    during = load.since(stopped_at)
    print(
        f"\nreplica stopped mid-load: {dict(statuses)} over {len(load.answers)} reads; "
        f"slowest {max(seconds for _, _, seconds in load.answers):.2f}s; reads back on the "
        f"replica {returned_after:.1f}s after it started"
    )
    assert set(statuses) == {200}, statuses
    assert len(during) > 100
    assert max(seconds for _, _, seconds in during) < REPLICA_TIMEOUT_MS / 1000 + 1.5
    assert read_metrics(stack)[0]["replica"] > replica_reads  # served by the replica again
    wait_until(
        lambda: scans(servers["replica"]) > replica_scans,
        "the replica's statistics show no reads after its return",
        timeout=15,
    )
