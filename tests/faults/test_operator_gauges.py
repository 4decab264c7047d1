"""The gauges the alerting rules read that a broken dependency drives (deploy/prometheus/,
docs/ALERTS.md), each from a real products process's /metrics (its operations listener)
while the fault is on:

* ``shop_broker_blocked``: a private RabbitMQ node (tests/rabbit_node.py) raises a real
  memory alarm;
* ``shop_db_replica_lag_seconds``: a private PostgreSQL primary and streaming replica
  (scripts/pg_replica.py) whose replay is paused while the primary writes.

Never the default servers: both are private and stopped by pid whatever happens.
"""

import contextlib
import math
import time

import eventlet
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from common import admin
from products.service import ProductsService
from scripts.pg_replica import private_replica_pair
from scripts.processes import free_port
from tests.rabbit_node import private_rabbit_cluster

DATABASE = "shop_products_lag_test"
QUIET = {"HOLD_CHECK_INTERVAL": 3600}  # no reconciler tick (there is no orders service)
# The probe measures every 5 s (common/replica_lag.py) and a scrape reads what it saw.
LAG_DEADLINE = 20
ALARM_DEADLINE = 10  # BrokerWatch hears connection.blocked within a probe (0.5 s)
STOP_TIMEOUT = 30


def gauge(ops, name):
    """The products process's sample ``name{service="products"}`` (None: absent)."""
    body = requests.get(f"http://{ops}/metrics", timeout=5).text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("service") == "products":
                return sample.value
    return None


def wait_until(condition, message, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


@pytest.fixture
def products(container_factory, service_config):
    """``with products(**config) as ops``: a ProductsService container started with
    ``config`` over ``service_config``, its operations listener at ``ops``; stopped on the
    way out, while the private server it uses still runs (a container stopping with its
    broker gone would wait for a reconnection forever)."""

    @contextlib.contextmanager
    def run(**config):
        ops = f"127.0.0.1:{free_port()}"
        config = {**service_config, **QUIET, "OPS_HTTP_ADDRESS": ops, **config}
        container = container_factory(ProductsService, config)
        container.start()
        try:
            yield ops
        finally:
            with eventlet.Timeout(STOP_TIMEOUT):
                container.stop()

    return run


def test_shop_broker_blocked_is_1_during_a_memory_alarm_only(products, tmp_path):
    with private_rabbit_cluster(str(tmp_path / "rabbit"), count=1) as broker:
        with products(AMQP_URI=broker.amqp_uri) as ops:
            wait_until(lambda: gauge(ops, "shop_broker_blocked") == 0, "no gauge at 0", 5)
            node = broker.nodes[0]
            with node.memory_alarm():
                started = time.monotonic()
                wait_until(
                    lambda: gauge(ops, "shop_broker_blocked") == 1,
                    "shop_broker_blocked never became 1 during the alarm",
                    ALARM_DEADLINE,
                )
                noticed = time.monotonic() - started
            wait_until(
                lambda: gauge(ops, "shop_broker_blocked") == 0,
                "shop_broker_blocked stayed 1 after the alarm cleared",
                ALARM_DEADLINE,
            )
    print(f"\nalarm shown by the gauge {noticed:.2f} s after the node raised it")


def test_shop_db_replica_lag_seconds_grows_while_replay_is_paused(products):
    with private_replica_pair(prefix="shop-pg-lag-test-") as pair:
        primary_uri = pair.primary.uri(DATABASE)
        admin.create_database(primary_uri)
        admin.migrate("products", primary_uri)
        pair.wait_caught_up()
        primary = create_engine(primary_uri, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        config = {
            "DB_URIS": {"products:Base": primary_uri},
            "DB_READ_URIS": {"products:Base": pair.replica.uri(DATABASE)},
        }
        with products(**config) as ops:

            def lag():
                return gauge(ops, "shop_db_replica_lag_seconds")

            wait_until(lambda: lag() == 0, "a caught-up replica does not show 0", LAG_DEADLINE)
            pair.replica.query("SELECT pg_wal_replay_pause()")
            try:
                time.sleep(1)  # the last replayed commit is now at least this old
                with primary.connect() as conn:
                    conn.execute(
                        text("INSERT INTO products (name, price, stock) VALUES ('p', 1, 1)")
                    )
                first = wait_until(
                    lambda: (value := lag()) is not None and value >= 1 and value,
                    "the replica's lag never showed while its replay was paused",
                    LAG_DEADLINE,
                )
                later = wait_until(
                    lambda: (value := lag()) is not None and value >= first + 4 and value,
                    f"the lag did not grow past {first} s while replay stayed paused",
                    LAG_DEADLINE,
                )
            finally:
                pair.replica.query("SELECT pg_wal_replay_resume()")
                primary.dispose()
            pair.wait_caught_up()
            wait_until(lambda: lag() == 0, "the lag did not return to 0 after the replay", 20)
        assert not math.isnan(later)
    print(f"\nlag while paused: {first:.1f} s, then {later:.1f} s")
