"""Products service logic alone (worker_factory) on the real test database."""

import logging
from decimal import Decimal

import eventlet
import pytest
from nameko.testing.services import worker_factory
from nameko_sqlalchemy.database import Session as NamekoSession
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import sessionmaker

from common.db import ShopDatabaseWrapper
from common.errors import GatewayTimeout, ValidationError
from common.idempotency import IdempotencyKeyReused, InvalidIdempotencyKey
from common.settings import settings_of
from products.exceptions import InsufficientStock, OrderTotalTooLarge, ProductNotFound
from products.service import ProductsService


@pytest.fixture
def service(db_wrapper, base_config):
    return worker_factory(ProductsService, db=db_wrapper("products"), config=base_config)


@pytest.fixture
def stock_of(clean_databases):
    def read(product_id):
        with clean_databases["products"].connect() as conn:
            return conn.scalar(
                text("SELECT stock FROM products WHERE id = :id"), {"id": product_id}
            )

    return read


def make(service, stock, price="2.50", name="thing"):
    return service.create_product({"name": name, "price": price, "stock": stock})["id"]


@pytest.mark.parametrize(
    "price, stored",
    [("3.5", "3.50"), (3.5, "3.50"), (0.1, "0.10"), ("0", "0.00"), ("-0", "0.00"), (-0.0, "0.00")],
)
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
    reservation = service.reserve_stock(
        "ref-1", [{"id": b, "quantity": 2}, {"id": a, "quantity": 3}]
    )
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
    reservation = service.reserve_stock(
        "ref-1", [{"id": a, "quantity": 2}, {"id": a, "quantity": 3}]
    )
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
        service.reserve_stock(
            "ref-1",
            [{"id": a, "quantity": 1}, {"id": 98, "quantity": 1}, {"id": 99, "quantity": 1}],
        )
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
    "order_ref, requested",
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
def test_malformed_reservation_is_rejected(service, order_ref, requested):
    with pytest.raises(ValidationError):
        service.reserve_stock(order_ref, requested)


def test_reservation_takes_requested_by_name_and_by_its_former_name(service, stock_of):
    """``requested=`` by keyword, and ``items=`` (its name before the naming cleanup) from
    callers written against it: the same hold either way, taken once; neither is a 422
    naming the missing argument."""
    a = make(service, 10)
    first = service.reserve_stock("ref-1", requested=[{"id": a, "quantity": 2}])
    assert service.reserve_stock("ref-1", items=[{"id": a, "quantity": 2}]) == first
    assert stock_of(a) == 8
    with pytest.raises(ValidationError) as raised:
        service.reserve_stock("ref-2")
    assert set(raised.value.details) == {"requested"}


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
    assert service.release_stock("late-ref") == {
        "order_ref": "late-ref",
        "status": "released",
        "lines": [],
    }
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
    states = {
        "confirmed": "confirmed",
        "pending": "pending",
        "rejected": "rejected",
        "cancelled": "cancelled",
        "unknown": None,
    }
    for ref in states:
        reconciler.reserve_stock(ref, [{"id": a, "quantity": 1}])
    reconciler.orders.order_states.return_value = {r: s for r, s in states.items() if s}
    reconciler.reconcile_holds()
    status = {ref: reconciler.get_reservation(ref)["status"] for ref in states}
    assert status == {
        "confirmed": "confirmed",
        "pending": "reserved",
        "rejected": "released",
        "cancelled": "released",
        "unknown": "released",
    }
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


def test_reconciler_waits_while_orders_is_down(reconciler, stock_of, caplog):
    a = make(reconciler, 10)
    reconciler.reserve_stock("ref-1", [{"id": a, "quantity": 1}])
    reconciler.orders.order_states.side_effect = GatewayTimeout("orders is slow")
    reconciler.reconcile_holds()  # not raised: Nameko would log a crashed worker
    assert reconciler.get_reservation("ref-1")["status"] == "reserved"
    assert stock_of(a) == 9
    [warning] = tick_warnings(caplog)
    assert warning.getMessage() == (
        "hold reconciliation postponed to the next tick: GatewayTimeout: orders is slow"
    )
    reconciler.orders.order_states.side_effect = None  # orders is back: the next tick
    reconciler.orders.order_states.return_value = {"ref-1": "confirmed"}
    reconciler.reconcile_holds()
    assert reconciler.get_reservation("ref-1")["status"] == "confirmed"


# The reconciler at scale: holds inserted directly (no lines, no stock), created an hour
# ago, one millisecond apart in the order of ``refs``.
def insert_holds(engine, refs, age_seconds=3600):
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO order_holds (order_ref, status, created_at, updated_at) "
                "SELECT ref, 'reserved', t, t FROM unnest(CAST(:refs AS text[])) "
                "WITH ORDINALITY AS r(ref, n), "
                "LATERAL (SELECT now() - make_interval(secs => :age) + n * interval '1 ms') AS c(t)"
            ),
            {"refs": refs, "age": age_seconds},
        )


def hold_rows(engine):
    with engine.connect() as conn:
        return {
            row.order_ref: row
            for row in conn.execute(
                text("SELECT order_ref, status, created_at, updated_at FROM order_holds")
            )
        }


def tick_warnings(caplog):
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.exc_info is None for r in records)  # one line, no traceback
    return records


@pytest.fixture
def reconciler_with(db_wrapper, base_config):
    """``reconciler_with(HOLD_CHECK_BATCH=3, ...)``: a products worker with that config
    (HOLD_CONFIRM_AGE 0 unless given); every call gets its own database wrapper."""

    def make_worker(**config):
        config = {**base_config, "HOLD_CONFIRM_AGE": 0, **config}
        return worker_factory(ProductsService, db=db_wrapper("products"), config=config)

    return make_worker


def answering(states, calls=None, pause=0.0):
    """A fake ``orders.order_states``: ``states[ref]`` for each ref it knows; records each
    batch in ``calls``; ``pause`` seconds of (green) waiting, as a real RPC."""

    def order_states(refs):
        if calls is not None:
            calls.append(list(refs))
        eventlet.sleep(pause)
        return {ref: states[ref] for ref in refs if states.get(ref)}

    return order_states


def test_reconciler_works_through_every_batch_in_one_tick(reconciler_with, clean_databases):
    refs = [f"ref-{n}" for n in range(8)]
    insert_holds(clean_databases["products"], refs)
    calls = []
    worker = reconciler_with(HOLD_CHECK_BATCH=3)
    worker.orders.order_states.side_effect = answering(dict.fromkeys(refs, "confirmed"), calls)
    worker.reconcile_holds()
    assert calls == [refs[0:3], refs[3:6], refs[6:8]]  # oldest first, each hold once
    assert {row.status for row in hold_rows(clean_databases["products"]).values()} == {"confirmed"}
    worker.reconcile_holds()  # confirmed holds are never looked at again
    assert len(calls) == 3


def test_a_tick_stops_at_its_time_budget_and_the_next_one_goes_on(reconciler_with, clean_databases):
    refs = [f"ref-{n}" for n in range(6)]
    insert_holds(clean_databases["products"], refs)
    calls = []
    worker = reconciler_with(HOLD_CHECK_BATCH=2, HOLD_CHECK_INTERVAL=0.05)
    worker.orders.order_states.side_effect = answering(
        dict.fromkeys(refs, "confirmed"), calls, pause=0.06
    )  # a batch outlasts the budget
    for tick in (1, 2, 3):
        worker.reconcile_holds()
        assert len(calls) == tick
    assert calls == [refs[0:2], refs[2:4], refs[4:6]]


def test_the_batch_size_is_config_yml_s(reconciler_with, clean_databases, base_config):
    batch = settings_of(base_config).hold_check_batch  # 500
    refs = [f"ref-{n:05d}" for n in range(2 * batch + 100)]
    insert_holds(clean_databases["products"], refs)
    calls = []
    worker = reconciler_with()
    worker.orders.order_states.side_effect = answering(dict.fromkeys(refs, "confirmed"), calls)
    worker.reconcile_holds()
    assert [len(refs) for refs in calls] == [batch, batch, 100]


def test_reconciler_confirms_a_batch_in_one_statement(reconciler_with, clean_databases):
    engine = clean_databases["products"]
    refs = [f"ref-{n}" for n in range(50)]
    insert_holds(engine, refs)
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(" ".join(statement.split()))

    worker = reconciler_with()
    worker.orders.order_states.side_effect = answering(dict.fromkeys(refs, "confirmed"))
    event.listen(engine, "before_cursor_execute", record)
    try:
        worker.reconcile_holds()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    writes = [s for s in statements if not s.startswith(("SELECT", "BEGIN", "COMMIT"))]
    assert len(writes) == 1 and writes[0].startswith("UPDATE order_holds")
    worker.orders.order_states.assert_called_once()
    rows = hold_rows(engine)
    assert {row.status for row in rows.values()} == {"confirmed"}
    assert all(row.updated_at > row.created_at for row in rows.values())


def test_reconciler_releases_every_state_without_stock(reconciler_with, stock_of):
    worker = reconciler_with(HOLD_CHECK_BATCH=2)
    a = make(worker, 100)
    states = {
        "rejected": "rejected",
        "failed": "failed",
        "cancelled": "cancelled",
        "unknown": None,
        "confirmed": "confirmed",
    }
    for ref in states:
        worker.reserve_stock(ref, [{"id": a, "quantity": 3}])
    assert stock_of(a) == 85
    worker.orders.order_states.side_effect = answering(states)
    worker.reconcile_holds()
    assert {ref: worker.get_reservation(ref)["status"] for ref in states} == {
        "rejected": "released",
        "failed": "released",
        "cancelled": "released",
        "unknown": "released",
        "confirmed": "confirmed",
    }
    assert stock_of(a) == 97  # the four holds' stock is back, once


def test_pending_holds_are_left_alone_and_asked_again_an_age_later(
    reconciler_with, clean_databases
):
    engine = clean_databases["products"]
    refs = [f"ref-{n}" for n in range(5)]
    insert_holds(engine, refs)
    calls = []
    worker = reconciler_with(HOLD_CHECK_BATCH=2, HOLD_CONFIRM_AGE=60)
    worker.orders.order_states.side_effect = answering(dict.fromkeys(refs, "pending"), calls)
    worker.reconcile_holds()  # ends although every hold stays reserved
    assert calls == [refs[0:2], refs[2:4], refs[4:5]]
    assert {row.status for row in hold_rows(engine).values()} == {"reserved"}
    worker.reconcile_holds()  # checked less than HOLD_CONFIRM_AGE ago: not asked again
    assert len(calls) == 3
    with engine.begin() as conn:  # a minute later
        conn.execute(text("UPDATE order_holds SET updated_at = updated_at - interval '61 s'"))
    worker.reconcile_holds()
    assert calls[3:] == [refs[0:2], refs[2:4], refs[4:5]]


def test_two_reconcilers_never_handle_the_same_hold(reconciler_with, clean_databases, stock_of):
    """Two processes' ticks at once (two green threads, two database connections): each
    batch is locked SKIP LOCKED, and a checked hold is stamped, so no hold is asked about,
    confirmed or released twice."""
    config = {"HOLD_CHECK_BATCH": 4, "HOLD_CONFIRM_AGE": 60}
    first, second = reconciler_with(**config), reconciler_with(**config)
    a = make(first, 100)
    kinds = ["confirmed", "pending", None]  # None: unknown order, released
    states = {}
    for n in range(36):
        ref = f"ref-{n:02d}"
        first.reserve_stock(ref, [{"id": a, "quantity": 1}])
        states[ref] = kinds[n % 3]
    with clean_databases["products"].begin() as conn:  # reserved an hour ago
        conn.execute(
            text(
                "UPDATE order_holds SET created_at = created_at - interval '1 hour', "
                "updated_at = updated_at - interval '1 hour'"
            )
        )
    calls = {"first": [], "second": []}
    in_flight, most_in_flight = [], []

    def counted(order_states):
        def call(refs):  # how many batches are open (locked, waiting for orders) at once
            in_flight.append(refs)
            most_in_flight.append(len(in_flight))
            try:
                return order_states(refs)
            finally:
                in_flight.remove(refs)

        return call

    for name, worker in (("first", first), ("second", second)):
        worker.orders.order_states.side_effect = counted(answering(states, calls[name], pause=0.02))
    threads = [eventlet.spawn(worker.reconcile_holds) for worker in (first, second)]
    for thread in threads:
        thread.wait()
    asked = {name: [ref for batch in batches for ref in batch] for name, batches in calls.items()}
    assert asked["first"] and asked["second"]  # both took a share of the work
    assert max(most_in_flight) == 2  # at the same time: neither waited for the other's locks
    assert not set(asked["first"]) & set(asked["second"])
    assert sorted(asked["first"] + asked["second"]) == sorted(states)
    rows = hold_rows(clean_databases["products"])
    expected = {"confirmed": "confirmed", "pending": "reserved", None: "released"}
    assert {ref: rows[ref].status for ref in states} == {
        ref: expected[state] for ref, state in states.items()
    }
    assert stock_of(a) == 100 - 36 + 12


def database_at(url, **connect_args):
    """A products ``db`` dependency on its own engine (disposed by the caller)."""
    engine = create_engine(url, connect_args=connect_args)
    return ShopDatabaseWrapper(sessionmaker(bind=engine, class_=NamekoSession), engine)


def test_a_database_failure_is_one_warning_and_retried_at_the_next_tick(
    base_config, clean_databases, caplog
):
    """The server refuses the connection (as PostgreSQL restarting, or answering ``too
    many clients``): one warning line, nothing raised (Nameko would log a crash)."""
    insert_holds(clean_databases["products"], ["ref-1"])
    unreachable = database_at("postgresql+psycopg2://postgres@127.0.0.1:1/shop_products")
    worker = worker_factory(
        ProductsService, db=unreachable, config={**base_config, "HOLD_CONFIRM_AGE": 0}
    )
    worker.reconcile_holds()
    [warning] = tick_warnings(caplog)
    assert warning.getMessage().startswith(
        "hold reconciliation postponed to the next tick: OperationalError: "
    )
    assert (warning.job, warning.error) == ("hold reconciliation", "OperationalError")
    worker.orders.order_states.assert_not_called()
    unreachable.engine.dispose()


def test_a_busy_database_mid_batch_rolls_the_batch_back(base_config, clean_databases, caplog):
    """The database gives up on the batch's UPDATE (lock_timeout, behind a table lock taken
    here) after orders answered: one warning; nothing of the batch is kept, and the next
    tick does it."""
    engine = clean_databases["products"]
    insert_holds(engine, ["ref-1", "ref-2"])
    busy = database_at(engine.url, options="-c lock_timeout=100")
    worker = worker_factory(ProductsService, db=busy, config={**base_config, "HOLD_CONFIRM_AGE": 0})
    worker.orders.order_states.side_effect = answering(
        dict.fromkeys(["ref-1", "ref-2"], "confirmed")
    )
    with engine.connect() as locker:  # SHARE: the batch's SELECT FOR UPDATE passes, not its UPDATE
        locker.execute(text("LOCK TABLE order_holds IN SHARE MODE"))
        worker.reconcile_holds()
        locker.rollback()
    [warning] = tick_warnings(caplog)
    assert "postponed to the next tick: LockNotAvailable: " in warning.getMessage()
    worker.orders.order_states.assert_called_once()
    assert {row.status for row in hold_rows(engine).values()} == {"reserved"}
    worker.reconcile_holds()
    assert {row.status for row in hold_rows(engine).values()} == {"confirmed"}
    busy.engine.dispose()
