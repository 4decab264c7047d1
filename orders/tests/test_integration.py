"""The order flow across real containers of all three services over real RabbitMQ and
PostgreSQL: errors cross two RPC hops and arrive as their own classes."""

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from common.errors import CustomerNotFound, InsufficientStock, ProductNotFound
from orders.service import OrdersService
from tests.harness import service_class


@pytest.fixture
def cluster(runner_factory, service_config):
    customers, products = service_class("customers"), service_class("products")
    runner_factory(service_config, customers, products, OrdersService).start()
    with ClusterRpcProxy(service_config, timeout=30) as proxy:
        yield proxy


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
