"""Orders service: the order lifecycle over the customers and products services.

``create_order`` runs the saga of :mod:`orders.flow` inside one transaction of the orders
database that holds the new (or replayed) order's row lock:

1. insert the order ``pending`` (or, with an Idempotency-Key already used, lock that one);
2. check the customer: in the local view of known customers (fed by customers'
   ``customer_created`` events), else over RPC (``customers.get_customer``);
3. reserve every line's stock in one products transaction (``products.reserve_stock``,
   keyed on the order's ``order_ref``), which returns each unit price as it was then;
4. record the outcome (confirmed with lines and total, rejected, or still pending when an
   answer was missing) and commit.

If the commit fails after stock was reserved, the reservation is released. If the process
dies before the commit, the transaction (and the order row) vanishes and products' own
reconciler gives the stock back (orders does not know the ``order_ref``). A pending order
is resolved by a client retry with the same key, or by :meth:`recover_pending_orders`.

``cancel_order`` is a saga with a durable intent (:func:`orders.flow.begin_cancel`): the
order is committed ``cancelling`` before products gives its stock back, and a cancel cut
short is finished by its retry or by the same recovery timer.
"""

import logging
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, ClassVar

import eventlet
from nameko.events import event_handler
from sqlalchemy import bindparam, exists, func, select, text
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from common.db import Database, database_errors_as_unavailable, is_valid_id
from common.idempotency import checked_key, ensure_same_request, fingerprint
from common.metrics import IDEMPOTENT_REPLAYS, ORDERS, ORDERS_RECOVERED, count_on_commit
from common.pagination import budget_batches, budget_page, page_params
from common.rpc import BoundedRpcProxy, rpc
from common.schemas import load, quantities_by_product
from common.service import ShopService
from common.settings import settings_of
from common.ticks import retried_at_next_tick
from common.timer import config_timer
from orders import flow
from orders.exceptions import OrderNotFound
from orders.models import Base, KnownCustomer, Order, OrderLine, OrderStatus
from orders.schemas import CreateOrderSchema, OrderSchema

log = logging.getLogger(__name__)

# Schemas are built once: a marshmallow Schema() deep-copies its declared fields, which was
# a tenth of a reservation's CPU when done per call (docs/BENCHMARKS.md, issue 14).
order_schema = OrderSchema()
create_order_schema = CreateOrderSchema()
# order_states' word for an order whose placing transaction is still open
IN_FLIGHT_STATE = "in_flight"
# list_orders loads and serializes a page this many lines at a time (see there).
LOAD_BATCH_LINES = 500


def settled_labels(order):
    """``(status, reason)`` of ``shop_orders_total`` for an order that reached a final
    status: the reason is the error code of a rejected or failed order, else empty."""
    reason = (
        (order.failure or {}).get("error", "")
        if order.status in (OrderStatus.REJECTED, OrderStatus.FAILED)
        else ""
    )
    return order.status, reason


def remember(session, customer_id):
    session.execute(insert(KnownCustomer).values(id=customer_id).on_conflict_do_nothing())


def IN_FLIGHT_LOCK(order_ref):  # noqa: N802 - a SQL expression, named as one
    """``pg_advisory_xact_lock`` on ``order_ref``: held by the transaction placing the order
    until it commits or rolls back (see :meth:`OrdersService.order_states`). A new order
    takes the same key in ``shop_insert_order`` (orders migration 0006);
    ``test_an_order_being_placed_is_in_flight_until_its_transaction_ends`` holds them
    together."""
    return func.pg_advisory_xact_lock(func.hashtextextended(order_ref, 0))


# order_refs among :refs whose placing transaction is still open (their lock is taken)
IN_FLIGHT = text("""
    SELECT ref FROM unnest(CAST(:refs AS text[])) AS ref
    WHERE NOT pg_try_advisory_xact_lock_shared(hashtextextended(ref, 0))
""")


def lock_in_flight(session, order_ref):
    """Mark ``order_ref`` in flight for the rest of ``session``'s transaction: until it
    ends, ``order_states`` reports it ``in_flight`` rather than unknown, so products'
    reconciler never gives back the stock of an order that may still commit. A new
    order takes it in ``shop_insert_order`` (:data:`NewOrder.INSERT`); a retry, here."""
    session.execute(select(IN_FLIGHT_LOCK(order_ref)))


@dataclass
class NewOrder:
    """An order this call has just inserted, as plain attributes rather than an ORM object:
    the common path of ``create_order`` writes it with two Core statements, each a call of
    a server-side function (the insert, then the lines and the final update in one),
    instead of the ORM's unit of work, which was a third of the orders process's CPU per
    order (docs/BENCHMARKS.md, issue 14). It has what :mod:`orders.flow` reads and sets,
    and what ``OrderSchema`` dumps."""

    id: int
    order_ref: str
    customer_id: int
    status: str
    requested: list
    idempotency_key: str | None
    request_fingerprint: str | None
    created_at: datetime
    updated_at: datetime
    total: Decimal | None = None
    failure: dict | None = None
    lines: list[OrderLine] = field(default_factory=list)

    # Two server-side functions (orders migration 0006), so PostgreSQL plans their
    # statements once per connection rather than on every order; the calls are built once,
    # their values bound per call (building statements per call was a fifth of the orders
    # process's Python around an order: docs/BENCHMARKS.md, issue 14).
    INSERT: ClassVar = text("""
        SELECT id, created_at, updated_at, known FROM shop_insert_order(
            :order_ref, :customer_id, :status, :requested, :idempotency_key,
            :request_fingerprint)
    """).bindparams(bindparam("requested", type_=JSONB))
    # The outcome in one round trip: the lines (none unless confirmed; the arrays hold one
    # element per line, in order) and the order's status, total and failure.
    RECORD: ClassVar = text("""
        SELECT shop_record_order(
            :order_id, :status, :total, :failure, CAST(:product_ids AS integer[]),
            CAST(:product_names AS text[]), CAST(:quantities AS integer[]),
            CAST(:unit_prices AS numeric[]))
    """).bindparams(bindparam("failure", type_=JSONB))

    @classmethod
    def insert(cls, connection, key, request, customer_id, requested):
        """Insert the order ``pending``; returns ``(order, known)`` where ``known`` says
        whether the local view knows the customer (read by the same statement). Raises
        IntegrityError if ``key`` was used before."""
        values = {
            "order_ref": uuid.uuid4().hex,
            "customer_id": customer_id,
            "status": OrderStatus.PENDING,
            "requested": requested,
            "idempotency_key": key,
            "request_fingerprint": request,
        }
        row = connection.execute(cls.INSERT, values).one()
        order = cls(id=row.id, created_at=row.created_at, updated_at=row.updated_at, **values)
        return order, row.known

    def record(self, connection):
        """Write what :func:`orders.flow.advance` decided, in one statement: its lines, its
        status, total and failure (``updated_at`` as the database sets it)."""
        self.updated_at = connection.execute(
            self.RECORD,
            {
                "order_id": self.id,
                "status": self.status,
                "total": self.total,
                "failure": self.failure,
                "product_ids": [line.product_id for line in self.lines],
                "product_names": [line.product_name for line in self.lines],
                "quantities": [line.quantity for line in self.lines],
                "unit_prices": [line.unit_price for line in self.lines],
            },
        ).scalar_one()


class OrdersService(ShopService):
    name = "orders"

    db = Database(Base)
    customers = BoundedRpcProxy("customers")
    products = BoundedRpcProxy("products")

    @rpc
    def create_order(
        self, payload: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Place an order from ``{"customer_id", "products": [{"id", "quantity"}]}``.

        Returns the confirmed order: ``{"id", "customer_id", "status", "total", "lines":
        [{"product_id", "name", "quantity", "unit_price"}], "created_at", ...}``.
        Raises ValidationError (422) and InvalidIdempotencyKey (400) storing nothing;
        CustomerNotFound / ProductNotFound (404), InsufficientStock (409, naming each short
        product, requested and available) or OrderTotalTooLarge (422, at current prices):
        the order is ``rejected``, nothing reserved;
        OrderFailed (409): the order was fenced (``details.cause``); ServiceUnavailable
        (503) or GatewayTimeout (504): the order is ``pending`` (``details.order_id``).
        Idempotent with ``idempotency_key``: a retry gets the first outcome (same order,
        same error), resumes a pending order, places a failed one again (it held nothing:
        a transient fault never burns the key), and is a 422 IdempotencyKeyReused if the
        request differs. Without a key each call is a new order.
        """
        key = checked_key(idempotency_key)
        data = load(create_order_schema, payload)
        quantities = quantities_by_product(data["requested"])
        # "products": the body's field name, as the fingerprints already stored were made
        request = fingerprint({"customer_id": data["customer_id"], "products": quantities})
        requested = [{"id": product_id, "quantity": q} for product_id, q in quantities.items()]
        with database_errors_as_unavailable():
            order, error = self._place(key, request, data["customer_id"], requested)
        if error is not None:
            raise error
        return order

    def _place(self, key, request, customer_id, requested):
        """Insert (or find by key) and advance the order in one committed transaction.
        Returns ``(order dumped, the error to answer with or None)``.

        The row is inserted before anything else: that claims the key, so a twin in
        flight waits on it and a retry finds it before any stock is held. (The gateway
        gives every HTTP request a key, so this is the path of every order.)"""
        for replay in (False, True):
            with self._attempt(replay) as tx:
                result = self._place_once(tx, replay, key, request, customer_id, requested)
                if result is not None:
                    return result
        raise AssertionError("unreachable: a replay either returns or raises")

    def _attempt(self, replay):
        """What one attempt of :meth:`_place` runs on: a replay, on an ORM session (it
        loads and changes an ``Order``; closed at the worker's teardown); a new order, on a
        Core connection (:class:`NewOrder`'s statements), whose first statement begins the
        transaction: without an ORM session around it, about 0.1 ms of CPU less per order
        (docs/BENCHMARKS.md, issue 24). Both end a transaction with ``commit()`` or
        ``rollback()``; the connection goes back to the pool when the block ends, rolling
        back whatever is still open."""
        return nullcontext(self.db.get_session()) if replay else self.db.engine.connect()

    def _place_once(self, tx, replay, key, request, customer_id, requested):
        """One attempt of :meth:`_place` in ``tx``, the ORM session or Core connection of
        :meth:`_attempt`: its result, or None when the INSERT found ``key`` used before
        (the caller replays)."""
        reserved = False
        try:
            if replay:  # the key exists: lock that order (waits for a twin in flight)
                order = tx.scalars(
                    select(Order).where(Order.idempotency_key == key).with_for_update()
                ).one()
                ensure_same_request(key, order.request_fingerprint, request)
                if order.status == OrderStatus.FAILED:  # a transient fault: place it again
                    flow.reopen(order)
                if order.status == OrderStatus.PENDING:
                    lock_in_flight(tx, order.order_ref)
                known = None
            else:  # the common case first: one INSERT, no lookup
                # the key was used before: IntegrityError, replay
                order, known = NewOrder.insert(tx, key, request, customer_id, requested)
            was_pending = order.status == OrderStatus.PENDING
            if was_pending:
                reserved = flow.advance(
                    order,
                    partial(self._check_customer, tx, known=known),
                    self.products,
                )
                if replay:
                    tx.flush()
                else:
                    order.record(tx)
            result = order_schema.dump(order), flow.outcome_error(order)
            # read before the commit: afterwards the ORM would reload the row (and
            # leave a transaction open, rolled back at teardown)
            settled = was_pending and order.status != OrderStatus.PENDING
            counted = (
                ORDERS.labels(*settled_labels(order))
                if settled
                else (IDEMPOTENT_REPLAYS.labels(self.name) if replay and not was_pending else None)
            )
            tx.commit()
            if counted is not None:
                counted.inc()
            return result
        except IntegrityError:
            tx.rollback()
            if reserved:  # not the key: something failed after the reservation
                self._release_quietly(order.order_ref)
            if replay or key is None or reserved:
                raise
            return None
        except Exception:
            tx.rollback()
            if reserved:
                self._release_quietly(order.order_ref)
            raise

    @rpc
    def get_order(self, order_id: int) -> dict[str, Any]:
        """The order with ``order_id``, its status and lines (``failure`` says why it is not
        confirmed). Raises OrderNotFound (404). Read-only."""
        with self.db.reading() as session:
            return order_schema.dump(self._get(session, order_id))

    @rpc
    def cancel_order(self, order_id: int) -> dict[str, Any]:
        """Cancel a confirmed order and give its stock back: the saga of
        :func:`orders.flow.begin_cancel` and :func:`orders.flow.finish_cancel`.

        Two transactions, each under the order's row lock: the first commits the order
        ``cancelling`` (the durable intent), the second releases its stock at products and
        marks it ``cancelled``. Returns the order, ``status: cancelled``. Raises
        OrderNotFound (404), OrderNotCancellable (409: the order is neither confirmed nor
        being cancelled), ServiceUnavailable (503) / GatewayTimeout (504) when products
        could not release or the database failed: the order is then ``cancelling`` (or
        still ``confirmed`` if the first commit failed), and a retry, or the recovery
        timer once it is ``RECOVERY_AGE`` old, finishes it. Idempotent: cancelling a
        ``cancelling`` order finishes it, a ``cancelled`` one returns it unchanged.
        """
        with database_errors_as_unavailable():
            with self.db.get_session() as session:  # commits the intent
                order = self._get(session, order_id, lock=True)
                if not flow.begin_cancel(order):
                    return order_schema.dump(order)
            with self.db.get_session() as session:
                order = self._get(session, order_id, lock=True)
                if order.status == OrderStatus.CANCELLING:  # else a retry or recovery did it
                    flow.finish_cancel(order, self.products)
                    session.flush()
                    count_on_commit(session, ORDERS.labels(*settled_labels(order)))
                return order_schema.dump(order)

    @rpc
    def list_orders(
        self,
        customer_id: int,
        limit: int | str | None = None,
        after: int | str | None = None,
    ) -> dict[str, Any]:
        """One page of ``customer_id``'s orders in id order, each with its lines:
        ``{"items", "next_after"}``. Raises CustomerNotFound (404), ValidationError (422).
        Read-only.

        A page holds at most ``limit`` orders and at most ``PAGE_MAX_LINES`` lines (the
        first order always fits), so what one call loads, holds and sends is bounded
        whatever the customer has; ``next_after`` is then the last order returned.

        An order counts the products it asked for (``requested``, read from the order row
        itself): its lines never outnumber them (one line per product asked for, a pending
        order's included once confirmed) and a rejected order's ``failure`` can name each
        of them. Counting the lines rows instead would read every line of the ``limit + 1``
        candidates (100,000 for 1,000 orders of 100 lines) to answer 2,000. Lines are then
        loaded only for the orders kept."""
        limit, after = page_params(self.config, limit, after)
        max_lines = settings_of(self.config).page_max_lines
        # One autocommit connection: the customer check's write (remember) is one
        # idempotent statement, committed by itself.
        with self.db.reading() as session:
            self._check_customer(session, customer_id)
            weighted = session.execute(
                select(Order.id, func.jsonb_array_length(Order.requested))
                .where(Order.customer_id == customer_id, Order.id > after)
                .order_by(Order.id)
                .limit(limit + 1)
            ).all()
            ids, next_after = budget_page(weighted, limit, max_lines)
            # Green threads share the process: loaded and serialized a batch of lines
            # at a time, yielding in between, a page (~70 ms of CPU for 2,000 lines) never
            # holds the process in one go while an order placement waits for its turn.
            items = []
            for batch in budget_batches(weighted[: len(ids)], LOAD_BATCH_LINES):
                orders = session.scalars(
                    select(Order)
                    .where(Order.id.in_(batch))
                    .order_by(Order.id)
                    .options(defer(Order.requested))  # not answered; up to 100 items each
                ).all()
                for order in orders:
                    items.append(order_schema.dump(order))
                    eventlet.sleep(0)
            return {"items": items, "next_after": next_after}

    @rpc
    def order_states(self, order_refs: list[str]) -> dict[str, str]:
        """``{order_ref: status}`` for the orders among ``order_refs`` (at most 1000):
        the committed ones' status, ``in_flight`` for one whose placing transaction is
        still open (it may yet commit); refs absent from the answer never committed and
        never will. Read-only (used by products' reconciler).

        Every transaction placing an order holds an advisory lock on its ``order_ref``
        (:func:`lock_in_flight`) from before its reservation until it ends. The locks are
        tried first, each statement in its own snapshot: a ref whose lock is free then has
        its transaction over (committed: the next statement sees its row; rolled back:
        never). So an orphan (the process died, or lost its database, before the commit)
        is known as one as soon as PostgreSQL ends its transaction, not an age later."""
        refs = [str(ref) for ref in order_refs][:1000]
        with self.db.reading() as session:  # autocommit: each statement its own snapshot
            in_flight = set(session.scalars(IN_FLIGHT, {"refs": refs}))
            rows = session.execute(
                select(Order.order_ref, Order.status).where(Order.order_ref.in_(refs))
            )
            states = {ref: status for ref, status in rows}
        return {**{ref: IN_FLIGHT_STATE for ref in in_flight}, **states}

    @config_timer("RECOVERY_INTERVAL")
    @retried_at_next_tick(log, "recovery of pending and cancelling orders")
    def recover_pending_orders(self):
        """Finish what an interrupted call left behind, for orders untouched for
        ``RECOVERY_AGE`` seconds: resolve ``pending`` orders (:func:`orders.flow.recover`),
        then finish ``cancelling`` ones (:func:`orders.flow.finish_cancel`). Stops at the
        first failure (e.g. products down, or its own database unavailable: one warning,
        see :mod:`common.ticks`) and tries again at the next tick."""
        age = timedelta(seconds=settings_of(self.config).recovery_age)
        if self._recover(OrderStatus.PENDING, age, flow.recover):
            self._recover(OrderStatus.CANCELLING, age, flow.finish_cancel)

    def _recover(self, status, age, settle):
        """``settle(order, products)`` each order in ``status`` untouched for ``age``, oldest
        first, at most 100 a tick, one transaction and row lock each; rows another process
        (or a client's retry) is working on are skipped. Returns False if one failed (it
        is logged; the order stays as it was for the next tick)."""
        for _ in range(100):
            with self.db.get_session() as session:
                order = session.scalars(
                    select(Order)
                    .where(Order.status == status, Order.updated_at < func.now() - age)
                    .order_by(Order.updated_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if order is None:
                    return True
                try:
                    settle(order, self.products)
                except Exception as exc:  # noqa: BLE001 - retried at the next tick
                    log.warning("recovery of order %s postponed: %s", order.id, exc)
                    return False
                count_on_commit(session, ORDERS.labels(*settled_labels(order)))
                count_on_commit(session, ORDERS_RECOVERED.labels(order.status))
                log.info("recovered order %s: %s", order.id, order.status)
        return True

    @event_handler("customers", "customer_created")
    def remember_customer(self, payload):
        """Keep the local view of existing customers (idempotent: a redelivered event
        changes nothing)."""
        with self.db.get_session() as session:
            remember(session, payload["id"])

    def _check_customer(self, session, customer_id, known=None):
        """Raise CustomerNotFound unless the customer exists: the local view first (no
        RPC; ``known`` when the caller has already looked), else customers.get_customer
        (whose answer is then remembered)."""
        if known is None:  # one statement, on a session or a Core connection alike
            known = is_valid_id(customer_id) and session.scalar(
                select(exists().where(KnownCustomer.id == customer_id))
            )
        if known:
            return
        self.customers.get_customer(customer_id)  # CustomerNotFound for a bad id too
        remember(session, customer_id)

    def _get(self, session, order_id, lock=False):
        order = None
        if is_valid_id(order_id):
            order = session.get(Order, order_id, with_for_update=lock or None)
        if order is None:
            raise OrderNotFound.for_id(order_id)
        return order

    def _release_quietly(self, order_ref):
        """Compensate an order whose commit failed; a failure here is logged (products'
        reconciler gives the stock back later), the original error wins."""
        try:
            self.products.release_stock(order_ref)
        except Exception:
            log.exception("could not release the stock of order_ref %s", order_ref)
