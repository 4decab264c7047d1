"""Prometheus metrics (common/metrics.py) counted by real containers of the three services
over real RabbitMQ and PostgreSQL, and served by a service's operations listener
(common/ops_http.py).

Each shop counter counts a committed change once: replays and redeliveries do not count
again. Numbers are read as deltas of this process's registry (other tests count too)."""

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from common.errors import InsufficientStock, ServiceUnavailable
from customers.service import CustomersService
from orders.service import OrdersService
from products.service import ProductsService
from tests.harness import free_port


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Deltas:
    """``deltas(name, **labels)``: how much a sample grew since the fixture started."""

    def __init__(self):
        self.before = {}

    def watch(self, name, **labels):
        self.before[(name, tuple(sorted(labels.items())))] = sample(name, **labels)

    def __call__(self, name, **labels):
        return sample(name, **labels) - self.before[(name, tuple(sorted(labels.items())))]


WATCHED = [
    ("shop_orders_total", {"status": "confirmed", "reason": ""}),
    ("shop_orders_total", {"status": "rejected", "reason": "insufficient_stock"}),
    ("shop_orders_total", {"status": "cancelled", "reason": ""}),
    ("shop_idempotent_replays_total", {"service": "orders"}),
    ("shop_idempotent_replays_total", {"service": "customers"}),
    ("shop_customers_created_total", {}),
    ("shop_stock_units_reserved_total", {}),
    ("shop_stock_units_released_total", {"cause": "release"}),
    (
        "shop_entrypoint_calls_total",
        {"service": "orders", "entrypoint": "create_order", "kind": "rpc", "outcome": "ok"},
    ),
    (
        "shop_entrypoint_calls_total",
        {
            "service": "orders",
            "entrypoint": "create_order",
            "kind": "rpc",
            "outcome": "insufficient_stock",
        },
    ),
    (
        "shop_entrypoint_duration_seconds_count",
        {"service": "orders", "entrypoint": "create_order", "kind": "rpc"},
    ),
    (
        "shop_rpc_client_calls_total",
        {"service": "orders", "target": "products", "method": "reserve_stock", "outcome": "ok"},
    ),
    (
        "shop_rpc_client_calls_total",
        {
            "service": "orders",
            "target": "products",
            "method": "reserve_stock",
            "outcome": "insufficient_stock",
        },
    ),
]


@pytest.fixture
def shop(runner_factory, service_config):
    """The three services in this process, products with its operations listener."""
    ops = f"127.0.0.1:{free_port()}"
    config = {**service_config, "RECOVERY_INTERVAL": 0, "HOLD_CHECK_INTERVAL": 0}
    runner_factory(config, CustomersService, OrdersService).start()
    runner_factory({**config, "OPS_HTTP_ADDRESS": ops}, ProductsService).start()
    deltas = Deltas()
    for name, labels in WATCHED:
        deltas.watch(name, **labels)
    with ClusterRpcProxy(config, timeout=30) as rpc:
        yield rpc, deltas, f"http://{ops}"


def test_shop_counters_count_each_committed_change_once(shop):
    rpc, delta, _ = shop
    customer = rpc.customers.create_customer({"name": "m", "email": "m@x.io"}, "key-c")
    assert rpc.customers.create_customer({"name": "m", "email": "m@x.io"}, "key-c") == customer
    product = rpc.products.create_product({"name": "p", "price": "1", "stock": 5})
    order_request = {
        "customer_id": customer["id"],
        "products": [{"id": product["id"], "quantity": 3}],
    }

    order = rpc.orders.create_order(order_request, "key-1")
    assert rpc.orders.create_order(order_request, "key-1") == order  # a replay
    with pytest.raises(InsufficientStock):
        rpc.orders.create_order(
            {**order_request, "products": [{"id": product["id"], "quantity": 9}]}
        )
    rpc.orders.cancel_order(order["id"])
    rpc.orders.cancel_order(order["id"])  # idempotent: nothing more is released

    assert delta("shop_customers_created_total") == 1
    assert delta("shop_idempotent_replays_total", service="customers") == 1
    assert delta("shop_orders_total", status="confirmed", reason="") == 1
    assert delta("shop_idempotent_replays_total", service="orders") == 1
    assert delta("shop_orders_total", status="rejected", reason="insufficient_stock") == 1
    assert delta("shop_orders_total", status="cancelled", reason="") == 1
    assert delta("shop_stock_units_reserved_total") == 3
    assert delta("shop_stock_units_released_total", cause="release") == 3
    # every worker counted by outcome and timed; the RPCs orders made, by outcome
    ok = {"service": "orders", "entrypoint": "create_order", "kind": "rpc"}
    assert delta("shop_entrypoint_calls_total", **ok, outcome="ok") == 2
    assert delta("shop_entrypoint_calls_total", **ok, outcome="insufficient_stock") == 1
    assert delta("shop_entrypoint_duration_seconds_count", **ok) == 3
    reserve = {"service": "orders", "target": "products", "method": "reserve_stock"}
    assert delta("shop_rpc_client_calls_total", **reserve, outcome="ok") == 1  # not on replay
    assert delta("shop_rpc_client_calls_total", **reserve, outcome="insufficient_stock") == 1


def test_a_service_serves_its_metrics_and_health_on_its_operations_listener(shop):
    rpc, _, ops = shop
    rpc.products.create_product({"name": "p", "price": "1", "stock": 5})

    health = requests.get(f"{ops}/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    scrape = requests.get(f"{ops}/metrics", timeout=5)
    assert scrape.status_code == 200
    assert scrape.headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scrape.text)
        for s in family.samples
    }
    created = (
        "shop_entrypoint_calls_total",
        (
            ("entrypoint", "create_product"),
            ("kind", "rpc"),
            ("outcome", "ok"),
            ("service", "products"),
        ),
    )
    assert samples[created] >= 1
    assert samples[("shop_workers_max", (("service", "products"),))] == 10
    assert samples[("shop_db_pool_connections", (("service", "products"), ("state", "size")))] == 10

    missing = requests.get(f"{ops}/nothing", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = requests.post(f"{ops}/metrics", timeout=5)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, HEAD"


def test_a_lock_timeout_is_counted_as_a_database_error(runner_factory, service_config, db_engines):
    """A worker that waits on a row lock past DB_LOCK_TIMEOUT_MS answers 503 and the
    products process counts one ``lock_timeout``."""
    config = {**service_config, "DB_LOCK_TIMEOUT_MS": 200, "HOLD_CHECK_INTERVAL": 0}
    runner_factory(config, ProductsService).start()
    labels = {"service": "products", "reason": "lock_timeout"}
    before = sample("shop_db_errors_total", **labels)
    with ClusterRpcProxy(config, timeout=30) as rpc:
        product = rpc.products.create_product({"name": "p", "price": "1", "stock": 5})
        with db_engines["products"].connect() as holder, holder.begin():
            holder.execute(
                text("SELECT 1 FROM products WHERE id = :id FOR UPDATE"), {"id": product["id"]}
            )
            with pytest.raises(ServiceUnavailable) as raised:
                rpc.products.reserve_stock("ref-1", [{"id": product["id"], "quantity": 1}])
    assert raised.value.details["pgcode"] == "55P03"
    assert sample("shop_db_errors_total", **labels) - before == 1
