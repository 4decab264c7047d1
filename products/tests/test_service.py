"""Products service logic alone (worker_factory) on the real test database."""
from decimal import Decimal

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import text

from common.errors import GatewayTimeout, ValidationError
from common.idempotency import IdempotencyKeyReused, InvalidIdempotencyKey
from products.exceptions import InsufficientStock, OrderTotalTooLarge, ProductNotFound
from products.service import ProductsService


@pytest.fixture
def service(db_wrapper, base_config):
    return worker_factory(ProductsService, db=db_wrapper("products"), config=base_config)


@pytest.fixture
def stock_of(clean_databases):
    def read(product_id):
        with clean_databases["products"].connect() as conn:
            return conn.scalar(text("SELECT stock FROM products WHERE id = :id"), {"id": product_id})

    return read


def make(service, stock, price="2.50", name="thing"):
    return service.create_product({"name": name, "price": price, "stock": stock})["id"]


@pytest.mark.parametrize("price, stored", [("3.5", "3.50"), (3.5, "3.50"), (0.1, "0.10"), ("0", "0.00"), ("-0", "0.00"), (-0.0, "0.00")])
def test_price_accepts_string_or_number_and_returns_a_two_decimal_string(service, price, stored):
    product = service.create_product({"name": "ruler", "price": price, "stock": 35})
    assert product["price"] == stored
    assert product["stock"] == 35
    assert service.get_product(product["id"]) == product


@pytest.mark.parametrize(
    "payload, bad_field",
    [
        ({"name": "x", "price": "-1", "stock": 1}, "price"),
        ({"name": "x", "price": "1.001", "stock": 1}, "price"),
        ({"name": "x", "price": "NaN", "stock": 1}, "price"),
        ({"name": "x", "price": "Infinity", "stock": 1}, "price"),
        ({"name": "x", "price": "1e12", "stock": 1}, "price"),
        ({"name": "x", "price": True, "stock": 1}, "price"),
        ({"name": "x", "price": "1", "stock": -1}, "stock"),
        ({"name": "x", "price": "1", "stock": 1.5}, "stock"),
        ({"name": "x", "price": "1", "stock": "35"}, "stock"),
        ({"name": "x", "price": "1", "stock": 2**31}, "stock"),
        ({"name": "", "price": "1", "stock": 1}, "name"),
        ({"name": "a\x00b", "price": "1", "stock": 1}, "name"),  # found by schemathesis
        ({"name": "a\ud800", "price": "1", "stock": 1}, "name"),
        ({"price": "1", "stock": 1}, "name"),
    ],
)
def test_invalid_product_is_rejected_naming_the_field(service, payload, bad_field):
    with pytest.raises(ValidationError) as raised:
        service.create_product(payload)
    assert bad_field in raised.value.details
    assert service.list_products()["items"] == []


def test_get_unknown_product(service):
    with pytest.raises(ProductNotFound) as raised:
        service.get_product(42)
    assert raised.value.details == {"product_ids": [42]}


def test_reserve_decrements_every_line_and_returns_unit_prices(service, stock_of):
    a = make(service, 10, "1.25", "a")
    b = make(service, 5, "4.00", "b")
    reservation = service.reserve_stock("ref-1", [{"id": b, "quantity": 2}, {"id": a, "quantity": 3}])
    assert reservation == {
        "order_ref": "ref-1",
        "status": "reserved",
        "lines": [
            {"product_id": a, "name": "a", "quantity": 3, "unit_price": "1.25"},
            {"product_id": b, "name": "b", "quantity": 2, "unit_price": "4.00"},
        ],
    }
    assert (stock_of(a), stock_of(b)) == (7, 3)
    assert service.get_reservation("ref-1") == reservation  # what was stored, reloaded


def test_duplicate_lines_add_up(service, stock_of):
    a = make(service, 10)
    reservation = service.reserve_stock("ref-1", [{"id": a, "quantity": 2}, {"id": a, "quantity": 3}])
    assert [line["quantity"] for line in reservation["lines"]] == [5]
    assert stock_of(a) == 5


def test_replayed_reservation_does_not_decrement_twice(service, stock_of):
    a = make(service, 10)
    first = service.reserve_stock("ref-1", [{"id": a, "quantity": 4}])
    assert service.reserve_stock("ref-1", [{"id": a, "quantity": 4}]) == first
    assert stock_of(a) == 6


def test_insufficient_stock_names_each_short_line_and_changes_nothing(service, stock_of):
    a = make(service, 10)
    b = make(service, 1)
    c = make(service, 0)
    with pytest.raises(InsufficientStock) as raised:
        service.reserve_stock(
            "ref-1", [{"id": a, "quantity": 10}, {"id": b, "quantity": 2}, {"id": c, "quantity": 1}]
        )
    assert raised.value.status == 409
    assert raised.value.details == {
        "products": [
            {"product_id": b, "requested": 2, "available": 1},
            {"product_id": c, "requested": 1, "available": 0},
        ]
    }
    assert (stock_of(a), stock_of(b), stock_of(c)) == (10, 1, 0)
    assert service.get_reservation("ref-1") is None  # nothing was recorded


def test_unknown_product_names_every_missing_id_and_changes_nothing(service, stock_of):
    a = make(service, 10)
    with pytest.raises(ProductNotFound) as raised:
        service.reserve_stock("ref-1", [{"id": a, "quantity": 1}, {"id": 98, "quantity": 1}, {"id": 99, "quantity": 1}])
    assert raised.value.details == {"product_ids": [98, 99]}
    assert stock_of(a) == 10


def test_a_total_too_large_for_an_order_is_refused_and_changes_nothing(service, stock_of):
    a = make(service, 1000, "9999999999.99")
    assert service.reserve_stock("ref-1", [{"id": a, "quantity": 100}])["status"] == "reserved"
    with pytest.raises(OrderTotalTooLarge) as raised:  # 101 x 9999999999.99 > NUMERIC(14, 2)
        service.reserve_stock("ref-2", [{"id": a, "quantity": 101}])
    assert raised.value.status == 422
    assert stock_of(a) == 900
    assert service.get_reservation("ref-2") is None


@pytest.mark.parametrize(
    "order_ref, items",
    [
        ("", [{"id": 1, "quantity": 1}]),
        ("ref", []),
        ("ref", [{"id": 1, "quantity": 0}]),
        ("ref", [{"id": 1}]),
        ("ref", [{"id": "1", "quantity": 1}]),
        ("ref", "not a list"),
        ("ref", [{"id": 1, "quantity": 2**31 - 1}, {"id": 1, "quantity": 1}]),
    ],
)
def test_malformed_reservation_is_rejected(service, order_ref, items):
    with pytest.raises(ValidationError):
        service.reserve_stock(order_ref, items)


def test_release_returns_stock_once(service, stock_of):
    a = make(service, 10)
    b = make(service, 10)
    service.reserve_stock("ref-1", [{"id": a, "quantity": 3}, {"id": b, "quantity": 1}])
    released = service.release_stock("ref-1")
    assert released["status"] == "released"
    assert (stock_of(a), stock_of(b)) == (10, 10)
    service.release_stock("ref-1")
    assert (stock_of(a), stock_of(b)) == (10, 10)
    assert service.get_reservation("ref-1")["status"] == "released"


def test_a_released_order_cannot_reserve_again(service, stock_of):
    a = make(service, 10)
    service.reserve_stock("ref-1", [{"id": a, "quantity": 3}])
    service.release_stock("ref-1")
    again = service.reserve_stock("ref-1", [{"id": a, "quantity": 3}])
    assert again["status"] == "released"
    assert stock_of(a) == 10


def test_release_before_reserve_fences_the_order(service, stock_of):
    """A stale reserve_stock (redelivered, or slower than the caller's timeout) arriving
    after the order was given up reserves nothing."""
    a = make(service, 10)
    assert service.release_stock("late-ref") == {"order_ref": "late-ref", "status": "released", "lines": []}
    assert service.reserve_stock("late-ref", [{"id": a, "quantity": 3}])["status"] == "released"
    assert stock_of(a) == 10


def test_get_reservation(service):
    a = make(service, 10, "1.50", "a")
    assert service.get_reservation("ref-1") is None
    reserved = service.reserve_stock("ref-1", [{"id": a, "quantity": 2}])
    assert service.get_reservation("ref-1") == reserved


def test_idempotency_key_returns_the_first_product(service):
    payload = {"name": "p", "price": "1", "stock": 1}
    first = service.create_product(payload, "key-1")
    assert service.create_product(dict(payload), "key-1") == first
    assert len(service.list_products()["items"]) == 1
    with pytest.raises(IdempotencyKeyReused):
        service.create_product({**payload, "stock": 2}, "key-1")
    with pytest.raises(InvalidIdempotencyKey):
        service.create_product(payload, "has space")


@pytest.fixture
def reconciler(db_wrapper, base_config):
    config = {**base_config, "HOLD_CONFIRM_AGE": 0}
    return worker_factory(ProductsService, db=db_wrapper("products"), config=config)


def test_reconciler_releases_holds_of_orders_that_will_not_confirm(reconciler, stock_of):
    a = make(reconciler, 100)
    states = {"confirmed": "confirmed", "pending": "pending", "rejected": "rejected",
              "cancelled": "cancelled", "unknown": None}
    for ref in states:
        reconciler.reserve_stock(ref, [{"id": a, "quantity": 1}])
    reconciler.orders.order_states.return_value = {r: s for r, s in states.items() if s}
    reconciler.reconcile_holds()
    status = {ref: reconciler.get_reservation(ref)["status"] for ref in states}
    assert status == {"confirmed": "confirmed", "pending": "reserved", "rejected": "released",
                      "cancelled": "released", "unknown": "released"}
    assert stock_of(a) == 98
    reconciler.reconcile_holds()  # a second pass changes nothing
    assert stock_of(a) == 98
    assert sorted(reconciler.orders.order_states.call_args.args[0]) == ["pending"]


def test_reconciler_leaves_young_holds_alone(service, stock_of):
    a = make(service, 10)
    service.reserve_stock("ref-1", [{"id": a, "quantity": 1}])
    service.reconcile_holds()  # HOLD_CONFIRM_AGE from config.yml: the hold is too young
    service.orders.order_states.assert_not_called()
    assert stock_of(a) == 9


def test_price_change_after_reservation_does_not_change_its_unit_price(service, clean_databases):
    a = make(service, 10, "1.00")
    service.reserve_stock("ref-1", [{"id": a, "quantity": 1}])
    with clean_databases["products"].begin() as conn:
        conn.execute(text("UPDATE products SET price = 9 WHERE id = :id"), {"id": a})
    replay = service.reserve_stock("ref-1", [{"id": a, "quantity": 1}])
    assert Decimal(replay["lines"][0]["unit_price"]) == Decimal("1.00")


def test_list_products_pages_by_id(service):
    ids = [make(service, n) for n in range(3)]
    page = service.list_products(limit=2)
    assert [p["id"] for p in page["items"]] == ids[:2]
    assert page["next_after"] == ids[1]
    assert [p["id"] for p in service.list_products(after=ids[1])["items"]] == ids[2:]


def test_reconciler_waits_while_orders_is_down(reconciler, stock_of):
    a = make(reconciler, 10)
    reconciler.reserve_stock("ref-1", [{"id": a, "quantity": 1}])
    reconciler.orders.order_states.side_effect = GatewayTimeout("orders is slow")
    reconciler.reconcile_holds()
    assert reconciler.get_reservation("ref-1")["status"] == "reserved"
    assert stock_of(a) == 9
