"""Backup under an order load and point-in-time restore (issue 23, scripts/pg_backup.py).

A private PostgreSQL primary archiving its WAL to a private pgBackRest repository
(its own cluster on a free port, never the default one on 5432; stopped by pid whatever
happens) holds the three services' databases, created and migrated as `make setup` /
`make migrate` do. The real stack runs on it. While keyed orders are being placed, a
full backup is taken; orders go on; just before the target time T some orders are left
spanning the restore point between the orders and products databases on purpose; orders
go on after T. The stack is stopped, the primary restored to T, the stack started again.

What a restore to T must give, and what the services' own recovery must settle:

- every order answered 201 before T is there, confirmed, with its id; no order sent
  after T is; ids handed out after T are never given to another order;
- an order spanning T, whose hold was committed in products but whose order row was
  not yet committed in orders (the window of every order in flight at T; made here on
  purpose too, a hold with no order): the hold is released by products' reconciler;
- a pending order with its hold: orders' recovery confirms it with the held lines;
- a pending order with no hold: recovery fences it and marks it failed; the client's
  retry with its Idempotency-Key places it again;
- a cancel spanning T (the order committed ``cancelling``, its stock released in
  products, the order not yet marked cancelled: the saga's durable intent, see
  orders/flow.py): orders' recovery finishes it, no client retry needed; the order ends
  cancelled;
- after recovery, before any client retries, the books balance (units sold = confirmed
  units, stock never negative, nothing pending or cancelling); a client retrying an order
  lost with the restore (a 201 after T) with its Idempotency-Key gets it placed again:
  one order per key.

Bounded: the load runs about 15 s; the stack is started twice; 80 s here.
"""

import datetime
import json
import time
import uuid

import eventlet
import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from common import admin
from common.idempotency import fingerprint
from common.registry import SERVICES
from scripts.pg_backup import private_archived_primary
from tests.faults.conftest import FAST_RECOVERY, StoppableLoad, create_shop
from tests.harness import books, books_balance, stack_on_vhost

PROCESSES = {"customers": 1, "products": 1, "orders": 1}
AFTER_BACKUP_SECONDS = 3  # the load goes on this long after the backup, before T
AFTER_T_SECONDS = 3  # and this long after T
SETTLE_SECONDS = 60


class TimedLoad(StoppableLoad):
    """A StoppableLoad that records, per key, the wall-clock times its last attempt was
    sent and answered (the restore target is a wall-clock time)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = {}

    def send(self, key):
        if self.stopped:
            return
        started = time.time()
        super().send(key)
        self.sent[key] = (started, time.time())


@pytest.fixture(scope="module")
def primary():
    with private_archived_primary(prefix="shop-pitr-test-") as running:
        yield running


@pytest.fixture(scope="module")
def db_uris(primary):
    """Each service's database on the primary, created (its role owning it) and
    migrated as `make migrate` does with the URIs `make backup-up` prints."""
    admin_uri = primary.server.uri("postgres")
    uris = primary.uris()
    for service, uri in uris.items():
        admin.create_database(uri, admin_uri)
        admin.migrate(service, uri)
    return uris


@pytest.fixture(scope="module")
def engines(primary, db_uris):
    """Superuser engines on the three databases; no pooled connection survives a restore."""
    made = {
        service: create_engine(primary.server.uri(f"shop_{service}"), poolclass=NullPool)
        for service in SERVICES
    }
    yield made
    for engine in made.values():
        engine.dispose()


@pytest.fixture
def stack(request, rabbit_manager, db_uris, tmp_path_factory):
    with stack_on_vhost(
        request,
        rabbit_manager,
        db_uris,
        str(tmp_path_factory.mktemp("pitr-stack")),
        "shop_pitr",
        PROCESSES,
        gateway_processes=1,
        **FAST_RECOVERY,
    ) as running:
        yield running


def rows(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def orders_by_key(engines):
    return {
        key: (order_id, status)
        for key, order_id, status in rows(
            engines["orders"],
            "SELECT idempotency_key, id, status FROM orders WHERE idempotency_key IS NOT NULL",
        )
    }


def insert_pending_order(engines, customer_id, requested, ref=None, key=None):
    """An order committed ``pending`` now (as one whose reservation answer went missing):
    orders' recovery takes it once it is ``RECOVERY_AGE`` old, after T. Its order_ref."""
    ref = ref or uuid.uuid4().hex
    quantities = {line["id"]: line["quantity"] for line in requested}
    with engines["orders"].begin() as conn:
        conn.execute(
            text(
                "INSERT INTO orders (order_ref, customer_id, status, requested, "
                "idempotency_key, request_fingerprint, created_at, updated_at) "
                "VALUES (:ref, :customer_id, 'pending', CAST(:requested AS jsonb), :key, "
                ":fingerprint, now(), now())"
            ),
            {
                "ref": ref,
                "customer_id": customer_id,
                "requested": json.dumps(requested),
                "key": key,
                "fingerprint": fingerprint({"customer_id": customer_id, "products": quantities}),
            },
        )
    return ref


def make_spans(stack, engines, customer_id, product_ids, confirmed_ref):
    """The states spanning T, made just before it: a hold with no order; the first two
    steps of a cancel (the confirmed order ``confirmed_ref`` committed ``cancelling``, then
    its stock released, the order not marked cancelled); a pending order with its hold; a
    pending order (keyed) with no hold. Each is made well within ``RECOVERY_AGE`` (the
    hold: ``HOLD_CONFIRM_AGE``) of T, so that the running stack's jobs cannot settle it
    before T."""
    hold_only, pending_held = f"span-{uuid.uuid4().hex}", uuid.uuid4().hex
    pending_bare_body = {
        "customer_id": customer_id,
        "products": [{"id": product_ids[2], "quantity": 1}],
    }
    with ClusterRpcProxy({"AMQP_URI": stack.env["AMQP_URI"]}, timeout=10) as cluster:
        for ref, product_id, quantity in ((hold_only, 0, 3), (pending_held, 1, 2)):
            lines = [{"id": product_ids[product_id], "quantity": quantity}]
            assert cluster.products.reserve_stock(ref, lines)["status"] == "reserved"
        with engines["orders"].begin() as conn:  # cancel_order's first transaction
            conn.execute(
                text(
                    "UPDATE orders SET status = 'cancelling', updated_at = now() "
                    "WHERE order_ref = :ref AND status = 'confirmed'"
                ),
                {"ref": confirmed_ref},
            )
        assert cluster.products.release_stock(confirmed_ref)["status"] == "released"
    insert_pending_order(
        engines, customer_id, [{"id": product_ids[1], "quantity": 2}], pending_held
    )
    insert_pending_order(engines, customer_id, pending_bare_body["products"], key="span-pending")
    return {
        "hold_only": hold_only,
        "pending_held": pending_held,
        "pending_bare_body": pending_bare_body,
        "cancel": confirmed_ref,
    }


def wait_for(condition, message, timeout=SETTLE_SECONDS):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{message}: {condition.__doc__ or ''}"
        eventlet.sleep(0.5)
    return result


def test_point_in_time_restore_under_load(stack, primary, engines):
    customer_id, stock_added = create_shop(stack.urls[0], products=5, stock=2000)
    product_ids = sorted(stock_added)
    load = TimedLoad(stack.urls, customer_id, product_ids, count=100_000, concurrency=8, pace=0.02)
    load.start()
    try:
        eventlet.sleep(1)
        backup_started = time.time()
        label = primary.backup()
        backup_ended = time.time()
        eventlet.sleep(AFTER_BACKUP_SECONDS)
        confirmed_early = next(key for key, (status, _, _) in load.answers.items() if status == 201)
        (cancel_ref,) = rows(
            engines["orders"],
            "SELECT order_ref FROM orders WHERE idempotency_key = :key",
            key=confirmed_early,
        )[0]
        spans = make_spans(stack, engines, customer_id, product_ids, cancel_ref)
        eventlet.sleep(0.2)
        target = datetime.datetime.now(datetime.UTC)
        eventlet.sleep(AFTER_T_SECONDS)
    finally:
        load.stop()
    assert label.endswith("F"), label  # the first backup is a full one
    during_backup = [
        key
        for key, (started, answered) in load.sent.items()
        if backup_started < started and answered < backup_ended and load.answers[key][0] == 201
    ]
    assert during_backup, "no order was placed while the backup ran"
    t = target.timestamp()
    before = {
        key: body["id"]
        for key, (status, body, _) in load.answers.items()
        if status == 201 and load.sent[key][1] < t
    }
    sent_after = {key for key, (started, _) in load.sent.items() if started > t}
    answered_after = {
        key
        for key, (status, _, _) in load.answers.items()
        if status == 201 and load.sent[key][1] > t
    }
    assert before and sent_after, (len(before), len(sent_after))
    assert load.statuses_seen <= {201, 503, 504, None}, load.statuses_seen
    top_ids = {
        service: rows(engines[service], f"SELECT max(id) FROM {table}")[0][0]
        for service, table in (("orders", "orders"), ("products", "products"))
    }

    stack.stop()
    restore_started = time.monotonic()
    report = primary.restore(target.isoformat(sep=" "))
    restore_seconds = time.monotonic() - restore_started
    assert any("recovery stopping before" in line for line in report), report

    # The restored instant, before any service runs.
    restored = orders_by_key(engines)
    assert {key: restored.get(key) for key in before} == {
        key: (order_id, "cancelling" if key == confirmed_early else "confirmed")
        for key, order_id in before.items()
    }
    assert not set(restored) & sent_after, sorted(set(restored) & sent_after)[:5]
    # lost: a 201 after T for an order committed after T (sent after T, or in flight at T)
    lost = sorted(answered_after - set(restored))
    orphan_holds = rows(
        engines["products"],
        "SELECT order_ref FROM order_holds WHERE status = 'reserved'",
    )
    refs_in_orders = {ref for (ref,) in rows(engines["orders"], "SELECT order_ref FROM orders")}
    spanning = [ref for (ref,) in orphan_holds if ref not in refs_in_orders]
    assert spans["hold_only"] in spanning
    assert dict(
        rows(
            engines["products"],
            "SELECT order_ref, status FROM order_holds WHERE order_ref = ANY(:refs)",
            refs=[spans["pending_held"], spans["cancel"]],
        )
    ) == {spans["pending_held"]: "reserved", spans["cancel"]: "released"}
    span_orders = rows(
        engines["orders"],
        "SELECT CASE order_ref WHEN :held THEN 'held' WHEN :cancel THEN 'cancel' ELSE 'bare' "
        "END, status FROM orders WHERE order_ref IN (:held, :cancel) "
        "OR idempotency_key = 'span-pending'",
        held=spans["pending_held"],
        cancel=spans["cancel"],
    )
    assert dict(span_orders) == {"held": "pending", "bare": "pending", "cancel": "cancelling"}
    # Every confirmed order has its hold: the half-done cancel says so (it is cancelling).
    stock_left, held, sold = books(engines)
    assert set(sold) - set(held) == set()
    assert not [key for key in set(sold) | set(held) if key.startswith(f"{spans['cancel']}:")]

    stack.start()
    settled_at = time.monotonic()

    def spans_settled():
        """the spanning hold released, the pending orders confirmed / failed, the
        cancel finished, no hold without its order, nothing pending or cancelling"""
        hold_status = rows(
            engines["products"],
            "SELECT order_ref, status FROM order_holds WHERE order_ref = ANY(:refs)",
            refs=[spans["hold_only"], spans["pending_held"]],
        )
        statuses = dict(rows(engines["orders"], "SELECT order_ref, status FROM orders"))
        pending = [ref for ref, status in statuses.items() if status in ("pending", "cancelling")]
        live_orphans = rows(
            engines["products"],
            "SELECT order_ref FROM order_holds WHERE status = 'reserved'",
        )
        return (
            dict(hold_status).get(spans["hold_only"]) == "released"
            and statuses.get(spans["pending_held"]) == "confirmed"
            and orders_by_key(engines)["span-pending"][1] == "failed"
            and statuses.get(spans["cancel"]) == "cancelled"
            and not pending
            and not [ref for (ref,) in live_orphans if ref not in statuses]
        )

    wait_for(spans_settled, "the services' recovery did not settle the spanning orders")
    settle_seconds = time.monotonic() - settled_at

    # The books balance by the services' recovery alone: no client has retried anything.
    assert books_balance(engines, stock_added) == []
    (cancel_order_id,) = rows(
        engines["orders"], "SELECT id FROM orders WHERE order_ref = :ref", ref=spans["cancel"]
    )[0]
    cancelled = requests.post(f"{stack.urls[0]}/api/orders/{cancel_order_id}/cancel", timeout=20)
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")  # as it was

    # Clients retry what the restore lost (and any answer a 503 / 504), with their keys.
    for key in lost:
        load.answers[key] = (None, None, 0.0)
    load.settle()
    assert {key: load.answers[key][0] for key in lost} == {key: 201 for key in lost}
    again = requests.post(
        f"{stack.urls[0]}/api/orders",
        json=spans["pending_bare_body"],
        headers={"Idempotency-Key": "span-pending"},
        timeout=20,
    )
    assert (again.status_code, again.json()["status"]) == (201, "confirmed"), again.text
    product = requests.post(
        f"{stack.urls[0]}/api/products",
        json={"name": "after", "price": "1", "stock": 1},
        timeout=20,
    ).json()
    lost_ids = [load.answers[key][1]["id"] for key in lost]
    assert min(lost_ids) > top_ids["orders"], "an order id handed out before the restore was reused"
    assert product["id"] > top_ids["products"]

    final = orders_by_key(engines)
    for key, (status, body, _) in load.answers.items():
        assert status == 201, (key, status, body)
        expected = "cancelled" if key == confirmed_early else "confirmed"
        assert final[key] == (body["id"], expected), key
    assert (
        rows(
            engines["orders"],
            "SELECT idempotency_key FROM orders WHERE idempotency_key IS NOT NULL "
            "GROUP BY idempotency_key HAVING count(*) > 1",
        )
        == []
    )
    assert books_balance(engines, {**stock_added, product["id"]: 1}) == []
    print(
        f"\nbackup {label} in {backup_ended - backup_started:.1f} s under load "
        f"({len(during_backup)} orders placed meanwhile); {len(before)} orders before T, "
        f"{len(lost)} answered 201 after it and lost; restore to T in {restore_seconds:.1f} s; "
        f"{len(spanning)} holds spanning T ({len(spanning) - 1} from the load); "
        f"recovery settled {settle_seconds:.1f} s after the start; report: {report}"
    )
