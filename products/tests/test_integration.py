"""Products service in real containers over real RabbitMQ and PostgreSQL.

Two containers of the service consume the same queue, as two processes would; the row
locks in PostgreSQL, not the process, serialize the decrements.
"""

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from products.exceptions import InsufficientStock
from products.service import ProductsService


@pytest.fixture
def products(container_factory, service_config):
    for _ in range(2):
        container_factory(ProductsService, service_config).start()
    with ClusterRpcProxy(service_config, timeout=30) as cluster:
        yield cluster.products


def outcomes(replies):
    results = []
    for reply in replies:
        try:
            results.append(reply.result())
        except InsufficientStock as exc:
            results.append(exc)
    return results


def test_concurrent_reservations_never_oversell(products, clean_databases):
    product_id = products.create_product({"name": "hot", "price": "1", "stock": 20})["id"]
    replies = [
        products.reserve_stock.call_async(f"ref-{n}", [{"id": product_id, "quantity": 1}])
        for n in range(60)
    ]
    results = outcomes(replies)
    reserved = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, InsufficientStock)]
    assert (len(reserved), len(refused)) == (20, 40)
    assert products.get_product(product_id)["stock"] == 0
    with clean_databases["products"].connect() as conn:
        assert conn.scalar(text("SELECT sum(quantity) FROM reservations")) == 20


def test_concurrent_replays_of_one_order_decrement_once(products):
    product_id = products.create_product({"name": "p", "price": "1", "stock": 10})["id"]
    replies = [
        products.reserve_stock.call_async("same-ref", [{"id": product_id, "quantity": 3}])
        for _ in range(10)
    ]
    results = [reply.result() for reply in replies]
    assert all(result == results[0] for result in results)
    assert products.get_product(product_id)["stock"] == 7


def test_crossed_orders_do_not_deadlock(products):
    a = products.create_product({"name": "a", "price": "1", "stock": 25})["id"]
    b = products.create_product({"name": "b", "price": "1", "stock": 25})["id"]
    crossed = (
        [{"id": a, "quantity": 1}, {"id": b, "quantity": 1}],
        [{"id": b, "quantity": 1}, {"id": a, "quantity": 1}],
    )
    replies = [products.reserve_stock.call_async(f"ref-{n}", crossed[n % 2]) for n in range(40)]
    results = outcomes(replies)
    assert sum(isinstance(r, dict) for r in results) == 25
    assert products.get_product(a)["stock"] == products.get_product(b)["stock"] == 0
