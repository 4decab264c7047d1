"""The order flow across real containers of all three services over real RabbitMQ and
PostgreSQL: errors cross two RPC hops and arrive as their own classes; a cancel cut in
two by the loss of its database connection is finished by recovery."""

import time

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from common.errors import (
    CustomerNotFound,
    InsufficientStock,
    ProductNotFound,
    ServiceUnavailable,
)
from orders.service import OrdersService
from tests.harness import books_balance, service_class

# Recovery fast enough for a test, slow enough that the cancel's own steps are all over
# (well under a second) before it may take the order.
FAST_RECOVERY = {"RECOVERY_INTERVAL": 0.5, "RECOVERY_AGE": 4}


@pytest.fixture
def cluster_with(runner_factory, service_config):
    """``cluster_with(**settings)``: the three services in containers, with ``settings``
    over the test config; an RPC proxy to them."""
    proxies = []

    def start(**settings):
        config = {**service_config, **settings}
        customers, products = service_class("customers"), service_class("products")
        runner_factory(config, customers, products, OrdersService).start()
        proxy = ClusterRpcProxy(config, timeout=30)
        proxies.append(proxy)
        return proxy.start()

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def cluster(cluster_with):
    return cluster_with()


def test_order_flow_over_rabbitmq(cluster):
    customer = cluster.customers.create_customer({"name": "c", "email": "c@example.com"})
    product = cluster.products.create_product({"name": "p", "price": "3.5", "stock": 2})
    order = cluster.orders.create_order(
        {"customer_id": customer["id"], "products": [{"id": product["id"], "quantity": 2}]}
    )
    assert (order["status"], order["total"]) == ("confirmed", "7.00")
    assert cluster.orders.get_order(order["id"]) == order
    assert cluster.products.get_product(product["id"])["stock"] == 0

    with pytest.raises(InsufficientStock) as raised:
        cluster.orders.create_order(
            {"customer_id": customer["id"], "products": [{"id": product["id"], "quantity": 1}]}
        )
    assert raised.value.details["products"] == [
        {"product_id": product["id"], "requested": 1, "available": 0}
    ]
    with pytest.raises(ProductNotFound):
        cluster.orders.create_order(
            {"customer_id": customer["id"], "products": [{"id": 999, "quantity": 1}]}
        )
    with pytest.raises(CustomerNotFound):
        cluster.orders.create_order(
            {"customer_id": 999, "products": [{"id": product["id"], "quantity": 1}]}
        )


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, what
        eventlet.sleep(0.05)
    return result


def scalar(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def test_a_cancel_interrupted_after_the_release_is_finished_by_recovery(
    cluster_with, clean_databases
):
    """The orders process loses its database connection between the cancel's two steps:
    products has given the stock back, the order is not marked cancelled (before the
    saga it stayed confirmed, its stock gone, until a client retried). The order says
    ``cancelling``, and recovery finishes it within ``RECOVERY_AGE`` + one interval.

    To land in the window: a test transaction holds the product's row lock, so products'
    release waits on it while orders holds the order's row lock in its second transaction;
    that orders connection is then terminated, and the product lock let go."""
    cluster = cluster_with(**FAST_RECOVERY)
    engines = clean_databases
    customer = cluster.customers.create_customer({"name": "c", "email": "c@example.com"})
    product = cluster.products.create_product({"name": "p", "price": "2", "stock": 5})
    order = cluster.orders.create_order(
        {"customer_id": customer["id"], "products": [{"id": product["id"], "quantity": 2}]}
    )
    with engines["products"].connect() as locker:
        locker.execute(text("SELECT 1 FROM products WHERE id = :id FOR UPDATE"), product)
        reply = cluster.orders.cancel_order.call_async(order["id"])
        wait_for(  # products' release is waiting for the product's lock
            lambda: scalar(
                engines["products"],
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%shop_release_stock%'",
            ),
            10,
            "products' release never waited on the product lock",
        )
        assert scalar(engines["orders"], "SELECT status FROM orders") == "cancelling"
        assert scalar(  # the orders connection holding the order's row lock, killed
            engines["orders"],
            "SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a "
            "JOIN pg_locks l ON l.pid = a.pid AND l.relation = 'orders'::regclass "
            "AND l.mode = 'RowShareLock' WHERE a.state = 'idle in transaction'",
        )
        locker.rollback()
    with pytest.raises(ServiceUnavailable):  # its second commit failed
        reply.result()
    # The window: products gave the stock back, the order is not cancelled.
    order_ref = scalar(engines["orders"], "SELECT order_ref FROM orders")
    assert cluster.products.get_reservation(order_ref)["status"] == "released"
    assert cluster.orders.get_order(order["id"])["status"] == "cancelling"
    assert cluster.products.get_product(product["id"])["stock"] == 5
    assert books_balance(engines, {product["id"]: 5}) == [
        f"orders left cancelling: {[order['id']]}"
    ]

    started = time.monotonic()
    wait_for(
        lambda: cluster.orders.get_order(order["id"])["status"] == "cancelled",
        FAST_RECOVERY["RECOVERY_AGE"] + 10,
        "recovery did not finish the cancel",
    )
    assert books_balance(engines, {product["id"]: 5}) == []
    assert cluster.products.get_product(product["id"])["stock"] == 5  # given back once
    print(f"\ncancel finished by recovery {time.monotonic() - started:.1f} s after the 503")
