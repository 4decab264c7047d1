"""Orders service logic alone: worker_factory with the customers and products proxies
replaced by mocks, on the real orders test database."""

import contextlib
import logging

import pytest
from nameko.testing.services import worker_factory
from nameko_sqlalchemy.database import Session as NamekoSession
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker

from common.db import ShopDatabaseWrapper
from common.errors import (
    CustomerNotFound,
    GatewayTimeout,
    InsufficientStock,
    ProductNotFound,
    ServiceUnavailable,
    ValidationError,
)
from common.idempotency import IdempotencyKeyReused
from orders import service as orders_service
from orders.exceptions import OrderFailed, OrderNotCancellable, OrderNotFound
from orders.service import OrdersService

CUSTOMER = {"id": 1, "name": "john doe", "email": "john@example.com"}
ORDER = {
    "customer_id": 1,
    "products": [{"id": 7, "quantity": 2}, {"id": 3, "quantity": 1}, {"id": 7, "quantity": 1}],
}


def hold(order_ref, items, status="reserved"):
    return {
        "order_ref": order_ref,
        "status": status,
        "lines": [
            {
                "product_id": item["id"],
                "name": f"p{item['id']}",
                "quantity": item["quantity"],
                "unit_price": "2.50",
            }
            for item in items
        ],
    }


@pytest.fixture
def config(base_config):
    return {**base_config, "RECOVERY_AGE": 0}


def orders_worker(db_wrapper, config):
    worker = worker_factory(OrdersService, db=db_wrapper("orders"), config=config)
    worker.customers.get_customer.return_value = CUSTOMER
    worker.products.reserve_stock.side_effect = hold
    return worker


@pytest.fixture
def service(db_wrapper, config):
    return orders_worker(db_wrapper, config)


def orders_in_db(engines):
    with engines["orders"].connect() as conn:
        return conn.execute(text("SELECT id, status, failure FROM orders ORDER BY id")).all()


def test_order_is_confirmed_with_reserved_prices(service):
    order = service.create_order(ORDER)
    assert order["status"] == "confirmed"
    assert order["total"] == "10.00"
    assert order["failure"] is None
    assert order["lines"] == [
        {"product_id": 3, "name": "p3", "quantity": 1, "unit_price": "2.50"},
        {"product_id": 7, "name": "p7", "quantity": 3, "unit_price": "2.50"},
    ]
    service.customers.get_customer.assert_called_once_with(1)
    order_ref, items = service.products.reserve_stock.call_args.args
    assert items == [{"id": 3, "quantity": 1}, {"id": 7, "quantity": 3}]
    assert service.get_order(order["id"]) == order
    service.products.release_stock.assert_not_called()


def test_unknown_customer_is_rejected_before_any_reservation(service, clean_databases):
    service.customers.get_customer.side_effect = CustomerNotFound.for_id(9)
    with pytest.raises(CustomerNotFound):
        service.create_order({"customer_id": 9, "products": [{"id": 1, "quantity": 1}]})
    service.products.reserve_stock.assert_not_called()
    [(_, status, failure)] = orders_in_db(clean_databases)
    assert (status, failure["error"]) == ("rejected", "customer_not_found")


@pytest.mark.parametrize(
    "refusal",
    [
        InsufficientStock.for_shortages([{"product_id": 1, "requested": 2, "available": 1}]),
        ProductNotFound.for_ids([1]),
    ],
)
def test_refused_reservation_rejects_the_order(service, clean_databases, refusal):
    service.products.reserve_stock.side_effect = refusal
    with pytest.raises(type(refusal)) as raised:
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 2}]})
    assert raised.value.details == refusal.details
    [(order_id, status, _)] = orders_in_db(clean_databases)
    assert status == "rejected"
    assert service.get_order(order_id)["lines"] == []
    service.products.release_stock.assert_not_called()


@pytest.mark.parametrize("failure", [GatewayTimeout("slow"), ServiceUnavailable("down")])
def test_unknown_outcome_leaves_the_order_pending(service, clean_databases, failure):
    service.products.reserve_stock.side_effect = failure
    with pytest.raises(type(failure)) as raised:
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 1}]})
    [(order_id, status, _)] = orders_in_db(clean_databases)
    assert status == "pending"
    assert raised.value.details["order_id"] == order_id
    assert "retry with the same Idempotency-Key" in raised.value.message
    service.products.release_stock.assert_not_called()  # recovery decides, under the lock


def test_a_fenced_order_fails(service, clean_databases):
    service.products.reserve_stock.side_effect = lambda ref, items: hold(ref, [], "released")
    with pytest.raises(OrderFailed):
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 1}]})
    assert [row.status for row in orders_in_db(clean_databases)] == ["failed"]


@pytest.fixture
def commit_fails_with(service):
    """``commit_fails_with(error)``: from then on, every commit on the orders database
    raises ``error`` (after the reservation), whatever the worker commits through (the
    new order's Core connection, a replay's session): an engine event, removed with the
    test."""
    engine = service.db.engine
    listeners = []

    def fail_with(error):
        def broken_commit(connection):
            raise error

        event.listen(engine, "commit", broken_commit)
        listeners.append(broken_commit)

    yield fail_with
    for listener in listeners:
        event.remove(engine, "commit", listener)


def test_failure_to_commit_releases_the_stock_and_stores_nothing(
    service, clean_databases, commit_fails_with
):
    commit_fails_with(OperationalError("COMMIT", {}, Exception("connection lost")))
    with pytest.raises(ServiceUnavailable):
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 1}]})
    order_ref = service.products.reserve_stock.call_args.args[0]
    service.products.release_stock.assert_called_once_with(order_ref)
    assert orders_in_db(clean_databases) == []


def test_an_integrity_error_after_the_reservation_releases_it(
    service, clean_databases, commit_fails_with
):
    commit_fails_with(IntegrityError("COMMIT", {}, Exception("a constraint")))
    with pytest.raises(IntegrityError):
        service.create_order(ORDER, "key-1")
    service.products.release_stock.assert_called_once_with(
        service.products.reserve_stock.call_args.args[0]
    )
    assert service.products.reserve_stock.call_count == 1  # not retried as a key replay
    assert orders_in_db(clean_databases) == []


def test_a_failed_release_does_not_hide_the_original_error(service, commit_fails_with):
    commit_fails_with(OperationalError("COMMIT", {}, Exception("connection lost")))
    service.products.release_stock.side_effect = GatewayTimeout("slow")
    with pytest.raises(ServiceUnavailable):
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 1}]})


def test_losing_the_database_mid_order_is_503_and_reserves_nothing(
    service, clean_databases, monkeypatch
):
    """PostgreSQL drops the order's connection after its INSERT (as a restart does) and the
    customer check fails on it: the order's own database failed, a retryable 503 with
    nothing stored, not an unknown outcome to store on a connection that is gone (that was
    a PendingRollbackError, a 500, found by the PostgreSQL-restart fault test)."""
    check_customer = service._check_customer

    def check_after_disconnect(same_session, customer_id, known=None):
        backend = same_session.scalar(text("SELECT pg_backend_pid()"))
        with clean_databases["orders"].connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        # the view looked up on the connection that is gone (the INSERT's answer ignored)
        return check_customer(same_session, customer_id)

    monkeypatch.setattr(service, "_check_customer", check_after_disconnect)
    with pytest.raises(ServiceUnavailable) as raised:
        service.create_order({"customer_id": 1, "products": [{"id": 1, "quantity": 1}]})
    assert raised.value.details["reason"] == "database"
    service.products.reserve_stock.assert_not_called()
    assert orders_in_db(clean_databases) == []


def test_same_key_same_order(service, clean_databases):
    first = service.create_order(ORDER, "key-1")
    assert service.create_order(ORDER, "key-1") == first
    assert service.products.reserve_stock.call_count == 1
    assert len(orders_in_db(clean_databases)) == 1


def test_same_key_other_request_is_422(service):
    service.create_order(ORDER, "key-1")
    with pytest.raises(IdempotencyKeyReused):
        service.create_order({**ORDER, "customer_id": 2}, "key-1")


def test_same_key_replays_a_refusal_without_asking_again(service):
    service.products.reserve_stock.side_effect = ProductNotFound.for_ids([1])
    for _ in range(2):
        with pytest.raises(ProductNotFound):
            service.create_order(ORDER, "key-1")
    assert service.products.reserve_stock.call_count == 1


def test_same_key_resumes_a_pending_order(service, clean_databases):
    service.products.reserve_stock.side_effect = GatewayTimeout("slow")
    with pytest.raises(GatewayTimeout):
        service.create_order(ORDER, "key-1")
    first_ref = service.products.reserve_stock.call_args.args[0]
    service.products.reserve_stock.side_effect = hold
    order = service.create_order(ORDER, "key-1")
    assert order["status"] == "confirmed"
    assert service.products.reserve_stock.call_args.args[0] == first_ref  # same reservation key
    assert len(orders_in_db(clean_databases)) == 1


def pending_order(service):
    service.products.reserve_stock.side_effect = GatewayTimeout("slow")
    with pytest.raises(GatewayTimeout) as raised:
        service.create_order(ORDER, "key-1")
    service.products.reserve_stock.side_effect = hold
    return raised.value.details["order_id"], service.products.reserve_stock.call_args.args[0]


def test_recovery_confirms_a_pending_order_whose_stock_is_reserved(service):
    order_id, order_ref = pending_order(service)
    service.products.get_reservation.return_value = hold(order_ref, [{"id": 3, "quantity": 1}])
    service.recover_pending_orders()
    assert service.get_order(order_id)["status"] == "confirmed"
    service.products.release_stock.assert_not_called()


def test_recovery_fences_and_fails_a_pending_order_without_stock(service):
    order_id, order_ref = pending_order(service)
    service.products.get_reservation.return_value = None
    service.recover_pending_orders()
    service.products.release_stock.assert_called_once_with(order_ref)
    order = service.get_order(order_id)
    assert (order["status"], order["failure"]["error"]) == ("failed", "order_failed")
    assert order["failure"]["details"]["cause"] == "timeout"  # what left it pending


def test_a_retry_places_a_failed_order_again_under_a_new_ref(service):
    """A transient fault never burns the key (issue 22): the order recovery failed held
    nothing, so the client's retry with its key places it again, same order."""
    order_id, order_ref = pending_order(service)
    service.products.get_reservation.return_value = None
    service.recover_pending_orders()
    order = service.create_order(ORDER, "key-1")
    assert (order["id"], order["status"]) == (order_id, "confirmed")
    new_ref = service.products.reserve_stock.call_args.args[0]
    assert new_ref != order_ref  # the old ref is fenced at products
    assert service.create_order(ORDER, "key-1") == order  # and now its outcome stays


def warnings_logged(caplog):
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.exc_info is None for r in records)  # one line each, no traceback
    return [r.getMessage() for r in records]


def test_recovery_waits_while_products_is_down(service, caplog):
    order_id, _ = pending_order(service)
    service.products.get_reservation.side_effect = ServiceUnavailable("down")
    service.recover_pending_orders()
    assert service.get_order(order_id)["status"] == "pending"
    assert warnings_logged(caplog) == [f"recovery of order {order_id} postponed: down"]


def test_recovery_tick_survives_its_own_database_failing(config, caplog):
    """Its database refuses connections (PostgreSQL restarting, ``too many clients``): one
    warning line, nothing raised (Nameko would log a crashed worker at every tick)."""
    engine = create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/shop_orders")
    unreachable = ShopDatabaseWrapper(sessionmaker(bind=engine, class_=NamekoSession), engine)
    worker = worker_factory(OrdersService, db=unreachable, config=config)
    worker.recover_pending_orders()
    [warning] = warnings_logged(caplog)
    assert warning.startswith(
        "recovery of pending and cancelling orders postponed to the next tick: OperationalError: "
    )
    worker.products.get_reservation.assert_not_called()
    engine.dispose()


def test_recovery_tick_survives_a_lock_timeout(service, db_wrapper, clean_databases, caplog):
    """The database gives up on the recovery's statement (lock_timeout, behind a table
    lock): one warning, and the next tick resolves the order."""
    order_id, order_ref = pending_order(service)
    engine = clean_databases["orders"]
    busy_engine = create_engine(engine.url, connect_args={"options": "-c lock_timeout=100"})
    busy = ShopDatabaseWrapper(sessionmaker(bind=busy_engine, class_=NamekoSession), busy_engine)
    worker = worker_factory(OrdersService, db=busy, config=service.config)
    worker.products.get_reservation.return_value = hold(order_ref, [{"id": 3, "quantity": 1}])
    with engine.connect() as locker:
        locker.execute(text("LOCK TABLE orders IN EXCLUSIVE MODE"))
        worker.recover_pending_orders()
        locker.rollback()
    [warning] = warnings_logged(caplog)
    assert "postponed to the next tick: LockNotAvailable: " in warning
    assert service.get_order(order_id)["status"] == "pending"
    worker.recover_pending_orders()
    assert service.get_order(order_id)["status"] == "confirmed"
    busy_engine.dispose()


def test_cancel_gives_the_stock_back_once(service):
    order = service.create_order(ORDER)
    cancelled = service.cancel_order(order["id"])
    assert cancelled["status"] == "cancelled"
    assert service.cancel_order(order["id"]) == cancelled
    service.products.release_stock.assert_called_once()


def test_a_cancel_commits_its_intent_before_products_releases(service, clean_databases):
    """The saga's first step is durable: when products is asked to release, the order is
    already committed ``cancelling`` (seen from another connection)."""
    order = service.create_order(ORDER)
    seen = []
    service.products.release_stock.side_effect = lambda ref: seen.append(
        orders_in_db(clean_databases)[0].status
    )
    assert service.cancel_order(order["id"])["status"] == "cancelled"
    assert seen == ["cancelling"]


def test_a_cancel_that_cannot_release_is_finished_by_its_retry(service):
    order = service.create_order(ORDER)
    service.products.release_stock.side_effect = GatewayTimeout("slow")
    with pytest.raises(GatewayTimeout):
        service.cancel_order(order["id"])
    cancelling = service.get_order(order["id"])
    assert cancelling["status"] == "cancelling"  # honest: the stock may be back already
    assert service.list_orders(1)["items"] == [cancelling]
    order_ref = service.products.release_stock.call_args.args[0]
    assert service.order_states([order_ref]) == {order_ref: "cancelling"}
    service.products.release_stock.side_effect = None
    cancelled = service.cancel_order(order["id"])
    assert (cancelled["id"], cancelled["status"]) == (order["id"], "cancelled")
    assert service.products.release_stock.call_count == 2  # idempotent at products
    assert service.cancel_order(order["id"]) == cancelled  # and now nothing more is asked
    assert service.products.release_stock.call_count == 2


def test_a_replay_of_a_cancelling_order_answers_it(service):
    order = service.create_order(ORDER, "key-1")
    service.products.release_stock.side_effect = ServiceUnavailable("down")
    with pytest.raises(ServiceUnavailable):
        service.cancel_order(order["id"])
    replayed = service.create_order(ORDER, "key-1")
    assert (replayed["id"], replayed["status"]) == (order["id"], "cancelling")


def test_recovery_finishes_a_cancelling_order(service, caplog):
    order = service.create_order(ORDER)
    service.products.release_stock.side_effect = ServiceUnavailable("down")
    with pytest.raises(ServiceUnavailable):
        service.cancel_order(order["id"])
    service.recover_pending_orders()  # products still down: it stays cancelling
    assert service.get_order(order["id"])["status"] == "cancelling"
    assert warnings_logged(caplog) == [f"recovery of order {order['id']} postponed: down"]
    service.products.release_stock.side_effect = None
    service.recover_pending_orders()
    assert service.get_order(order["id"])["status"] == "cancelled"
    assert [call.args for call in service.products.release_stock.call_args_list] == [
        (service.products.reserve_stock.call_args.args[0],)
    ] * 3


def test_recovery_leaves_a_cancel_younger_than_its_age(db_wrapper, config):
    worker = orders_worker(db_wrapper, {**config, "RECOVERY_AGE": 60})
    order = worker.create_order(ORDER)
    worker.products.release_stock.side_effect = ServiceUnavailable("down")
    with pytest.raises(ServiceUnavailable):
        worker.cancel_order(order["id"])
    worker.products.release_stock.side_effect = None
    worker.recover_pending_orders()  # its own call may still be finishing it
    assert worker.get_order(order["id"])["status"] == "cancelling"
    assert worker.products.release_stock.call_count == 1


def test_only_confirmed_orders_can_be_cancelled(service):
    order_id, _ = pending_order(service)
    with pytest.raises(OrderNotCancellable):
        service.cancel_order(order_id)
    assert service.get_order(order_id)["status"] == "pending"
    service.products.release_stock.assert_not_called()
    with pytest.raises(OrderNotFound):
        service.cancel_order(999)


def test_list_orders_of_a_customer(service):
    ids = [service.create_order(ORDER)["id"] for _ in range(3)]
    page = service.list_orders(1, limit=2)
    assert [o["id"] for o in page["items"]] == ids[:2]
    assert [o["id"] for o in service.list_orders(1, after=page["next_after"])["items"]] == ids[2:]
    service.customers.get_customer.side_effect = CustomerNotFound.for_id(5)
    with pytest.raises(CustomerNotFound):
        service.list_orders(5)


def order_with_lines(service, count):
    products = [{"id": n, "quantity": 1} for n in range(1, count + 1)]
    return service.create_order({"customer_id": 1, "products": products})["id"]


def walk(service, customer_id, **params):
    """Every page of the customer's orders, following ``next_after``."""
    pages, after = [], None
    while True:
        page = service.list_orders(customer_id, after=after, **params)
        pages.append(page["items"])
        if (after := page["next_after"]) is None:
            return pages


@contextlib.contextmanager
def statements_on(engine):
    """``[(sql, parameters)]`` of every statement ``engine`` runs inside the block."""
    seen = []

    def record(conn, cursor, sql, params, context, executemany):
        seen.append((sql, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_page_is_cut_by_its_line_budget(service, clean_databases, monkeypatch):
    monkeypatch.setitem(service.config, "PAGE_MAX_LINES", 5)
    ids = [order_with_lines(service, n) for n in (2, 3, 1, 4)]
    with statements_on(clean_databases["orders"]) as seen:
        page = service.list_orders(1, limit=10)
    assert [o["id"] for o in page["items"]] == ids[:2]  # 5 lines: the third is a 6th
    assert [len(o["lines"]) for o in page["items"]] == [2, 3]  # each order whole
    assert page["next_after"] == ids[1]  # the last order returned: the client follows Link
    # Lines were read (not counted) for the two orders kept only, in one statement.
    [lines_params] = [params for sql, params in seen if "order_lines.product_name" in sql]
    assert sorted(lines_params.values()) == ids[:2]
    rest = service.list_orders(1, limit=10, after=page["next_after"])
    assert [o["id"] for o in rest["items"]] == ids[2:]  # 1 + 4 lines: exactly the budget
    assert rest["next_after"] is None


def test_a_page_is_loaded_a_batch_of_lines_at_a_time(service, clean_databases, monkeypatch):
    ids = [order_with_lines(service, n) for n in (2, 2, 1, 4, 1)]
    whole = service.list_orders(1)
    monkeypatch.setattr(orders_service, "LOAD_BATCH_LINES", 4)
    with statements_on(clean_databases["orders"]) as seen:
        assert service.list_orders(1) == whole  # the same page, in the same order
    assert [o["id"] for o in whole["items"]] == ids
    batches = [sorted(params.values()) for sql, params in seen if "order_lines.product_name" in sql]
    assert batches == [ids[:2], ids[2:3], ids[3:4], ids[4:]]  # 4, 1 (+4 > 4), 4, 1 lines


def test_walking_the_pages_returns_every_order_once_in_order(service, monkeypatch):
    monkeypatch.setitem(service.config, "PAGE_MAX_LINES", 7)
    sizes = [3, 5, 1, 9, 2, 2, 6, 1, 1, 1, 4]
    ids = [order_with_lines(service, n) for n in sizes]
    pages = walk(service, 1, limit=3)
    assert [o["id"] for page in pages for o in page] == ids
    # Cut by the budget or by the limit; an order over the budget comes alone.
    assert [[len(o["lines"]) for o in page] for page in pages] == [
        [3],
        [5, 1],
        [9],
        [2, 2],
        [6, 1],
        [1, 1, 4],
    ]


def test_the_limit_still_holds_when_lines_are_few(service):
    ids = [order_with_lines(service, 1) for _ in range(5)]
    page = service.list_orders(1, limit=2)  # config.yml's budget: 2000 lines
    assert ([o["id"] for o in page["items"]], page["next_after"]) == (ids[:2], ids[1])
    assert [[o["id"] for o in page] for page in walk(service, 1, limit=2)] == [
        ids[:2],
        ids[2:4],
        ids[4:],
    ]


def test_an_order_without_lines_counts_the_lines_it_asked_for(service, monkeypatch):
    """A rejected order has no lines, but its ``failure`` names each short product."""
    monkeypatch.setitem(service.config, "PAGE_MAX_LINES", 5)
    service.products.reserve_stock.side_effect = InsufficientStock.for_shortages(
        [{"product_id": n, "requested": 1, "available": 0} for n in range(1, 5)]
    )
    with pytest.raises(InsufficientStock):
        order_with_lines(service, 4)
    service.products.reserve_stock.side_effect = hold
    confirmed = order_with_lines(service, 2)
    page = service.list_orders(1)
    [rejected] = page["items"]  # 4 + 2 lines asked for: over the budget
    assert (rejected["status"], rejected["lines"]) == ("rejected", [])
    assert len(rejected["failure"]["details"]["products"]) == 4
    rest = service.list_orders(1, after=page["next_after"])
    assert [o["id"] for o in rest["items"]] == [confirmed]


def test_order_states(service):
    order = service.create_order(ORDER)
    [(order_ref, _)] = [service.products.reserve_stock.call_args.args]
    assert service.order_states([order_ref, "unknown"]) == {order_ref: "confirmed"}
    assert order["status"] == "confirmed"


def test_an_order_being_placed_is_in_flight_until_its_transaction_ends(
    service, db_wrapper, clean_databases
):
    """While the transaction placing an order is open (here: stuck in its reservation),
    order_states says ``in_flight``: products' reconciler must not give its stock back.
    Once the transaction is gone without a commit (the process died), the ref is absent:
    an orphan, known as one at once."""
    states = []

    def reserve_while_asked(order_ref, requested):
        states.append(observer.order_states([order_ref]))  # from another worker, mid-order
        raise OperationalError("SELECT 1", {}, Exception("the process died"))

    observer = worker_factory(OrdersService, db=db_wrapper("orders"), config={"RECOVERY_AGE": 0})
    service.products.reserve_stock.side_effect = reserve_while_asked
    with pytest.raises(ServiceUnavailable):  # its transaction rolled back
        service.create_order(ORDER, "key-1")
    [order_ref] = [call.args[0] for call in service.products.reserve_stock.call_args_list]
    assert states == [{order_ref: "in_flight"}]
    assert observer.order_states([order_ref]) == {}  # never committed: an orphan


@pytest.mark.parametrize(
    "payload, bad_field",
    [
        ({"products": [{"id": 1, "quantity": 1}]}, "customer_id"),
        ({"customer_id": "1", "products": [{"id": 1, "quantity": 1}]}, "customer_id"),
        ({"customer_id": 1, "products": []}, "products"),
        ({"customer_id": 1, "products": [{"id": 1, "quantity": -1}]}, "products"),
        ({"customer_id": 1, "products": [{"id": 1, "quantity": 1.5}]}, "products"),
        ({"customer_id": 1}, "products"),
        (
            {
                "customer_id": 1,
                "products": [{"id": 1, "quantity": 2**31 - 1}, {"id": 1, "quantity": 1}],
            },
            "products",
        ),  # the merged line would not fit
    ],
)
def test_invalid_order_is_rejected_before_anything(service, clean_databases, payload, bad_field):
    with pytest.raises(ValidationError) as raised:
        service.create_order(payload)
    assert bad_field in raised.value.details
    service.customers.get_customer.assert_not_called()
    assert orders_in_db(clean_databases) == []


@pytest.mark.parametrize("order_id", [1, 0, 2**31])
def test_unknown_order(service, order_id):
    with pytest.raises(OrderNotFound):
        service.get_order(order_id)


def test_a_customer_announced_by_event_needs_no_rpc(service):
    service.remember_customer({"id": 1})
    service.remember_customer({"id": 1})  # a redelivered event changes nothing
    service.create_order(ORDER)
    service.customers.get_customer.assert_not_called()


def test_a_customer_checked_once_over_rpc_is_remembered(service):
    service.create_order(ORDER)
    service.create_order(ORDER)
    service.customers.get_customer.assert_called_once_with(1)
