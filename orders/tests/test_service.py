"""Orders service logic alone: worker_factory with the customers and products proxies
replaced by mocks, on the real orders test database."""
import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from common.errors import GatewayTimeout, ServiceUnavailable, ValidationError
from customers.exceptions import CustomerNotFound
from orders.exceptions import OrderNotFound
from orders.service import OrdersService
from products.exceptions import InsufficientStock, ProductNotFound

CUSTOMER = {"id": 1, "name": "john doe", "email": "john@example.com"}


def reservation(order_ref, items):
    return {
        "order_ref": order_ref,
        "status": "reserved",
        "lines": [
            {"product_id": item["id"], "name": f"p{item['id']}", "quantity": item["quantity"],
             "unit_price": "2.50"}
            for item in items
        ],
    }


@pytest.fixture
def service(db_wrapper, base_config):
    worker = worker_factory(OrdersService, db=db_wrapper("orders"), config=base_config)
    worker.customers.get_customer.return_value = CUSTOMER
    worker.products.reserve_stock.side_effect = reservation
    return worker


def order_count(engines):
    with engines["orders"].connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM orders"))


def test_order_is_recorded_with_reserved_prices(service):
    order = service.create_order(
        {"customer_id": 1, "products": [{"id": 7, "quantity": 2}, {"id": 3, "quantity": 1}, {"id": 7, "quantity": 1}]}
    )
    assert order["status"] == "confirmed"
    assert order["total"] == "10.00"
    assert order["lines"] == [
        {"product_id": 3, "name": "p3", "quantity": 1, "unit_price": "2.50"},
        {"product_id": 7, "name": "p7", "quantity": 3, "unit_price": "2.50"},
    ]
    service.customers.get_customer.assert_called_once_with(1)
    order_ref, items = service.products.reserve_stock.call_args.args
    assert items == [{"id": 3, "quantity": 1}, {"id": 7, "quantity": 3}]
    assert service.get_order(order["id"]) == order
    service.products.release_stock.assert_not_called()


def test_unknown_customer_reserves_nothing(service, clean_databases):
    service.customers.get_customer.side_effect = CustomerNotFound.for_id(9)
    with pytest.raises(CustomerNotFound):
        service.create_order({"customer_id": 9, "products": [{"id": 1, "quantity": 1}]})
    service.products.reserve_stock.assert_not_called()
    assert order_count(clean_databases) == 0


@pytest.mark.parametrize(
    "refusal",
    [InsufficientStock.for_shortages([{"product_id": 1, "requested": 2, "available": 1}]),
     ProductNotFound.for_ids([1])],
)
def test_refused_reservation_stores_nothing_and_releases_nothing(service, clean_databases, refusal):
    service.products.reserve_stock.side_effect = refusal
    with pytest.raises(type(refusal)):
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 2}]})
    assert order_count(clean_databases) == 0
    service.products.release_stock.assert_not_called()


@pytest.mark.parametrize("failure", [GatewayTimeout("slow"), ServiceUnavailable("down")])
def test_reservation_with_unknown_outcome_is_released(service, clean_databases, failure):
    service.products.reserve_stock.side_effect = failure
    with pytest.raises(type(failure)):
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 1}]})
    order_ref = service.products.reserve_stock.call_args.args[0]
    service.products.release_stock.assert_called_once_with(order_ref)
    assert order_count(clean_databases) == 0


def test_failure_to_record_the_order_releases_its_stock(service, monkeypatch):
    def broken_flush(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("connection lost"))

    session = service.db.get_session()
    monkeypatch.setattr(service.db, "get_session", lambda: session)
    monkeypatch.setattr(session, "flush", broken_flush)
    with pytest.raises(ServiceUnavailable):
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 1}]})
    order_ref = service.products.reserve_stock.call_args.args[0]
    service.products.release_stock.assert_called_once_with(order_ref)


def test_a_failed_release_does_not_hide_the_original_error(service):
    service.products.reserve_stock.side_effect = GatewayTimeout("slow")
    service.products.release_stock.side_effect = ServiceUnavailable("down")
    with pytest.raises(GatewayTimeout):
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 1}]})


@pytest.mark.parametrize(
    "payload, bad_field",
    [
        ({"products": [{"id": 1, "quantity": 1}]}, "customer_id"),
        ({"customer_id": "1", "products": [{"id": 1, "quantity": 1}]}, "customer_id"),
        ({"customer_id": 1, "products": []}, "products"),
        ({"customer_id": 1, "products": [{"id": 1, "quantity": -1}]}, "products"),
        ({"customer_id": 1, "products": [{"id": 1, "quantity": 1.5}]}, "products"),
        ({"customer_id": 1}, "products"),
    ],
)
def test_invalid_order_is_rejected_before_any_call(service, payload, bad_field):
    with pytest.raises(ValidationError) as raised:
        service.create_order(payload)
    assert bad_field in raised.value.details
    service.customers.get_customer.assert_not_called()
    service.products.reserve_stock.assert_not_called()


@pytest.mark.parametrize("order_id", [1, 0, 2**31])
def test_unknown_order(service, order_id):
    with pytest.raises(OrderNotFound):
        service.get_order(order_id)
