"""The stock guarantee: every change of ``products.stock`` happens here, each in one
statement: a server-side function (migration 0003) that locks, decides and writes, so no
row lock is ever held across a round trip to a client.

Before, a reservation took its locks in one round trip, decided in Python and wrote in a
third: a products process cut off from PostgreSQL between them (a partition) left the hot
rows locked until ``idle_in_transaction_session_timeout``, and every order on those
products waited behind it (docs/ARCHITECTURE.md, "Deadlines, admission control and
rotation"). Now the database holds a lock only while the function runs, whatever happens
to the client.

Locking discipline (the same in both functions, so two transactions can never wait on
each other in a cycle): product rows are locked with ``SELECT ... FOR UPDATE ORDER BY id``
first, then the order's hold. PostgreSQL applies the lock after the sort, so rows are
locked in ascending id order: crossed orders ([a, b] and [b, a]) queue up instead of
deadlocking. Any number of service processes can run them concurrently: the database,
not the process, serializes them. The reconciler (:mod:`products.reconcile`) locks holds
only, ``SKIP LOCKED``, so it never waits on a lock; it releases a hold with
:func:`release` after its batch's hold locks are gone.

Idempotency: one hold (``order_holds``) per ``order_ref`` (primary key). It is read
*after* the product locks are taken, so a redelivered or concurrent replay of the same
order sees the first one's committed hold and never decrements twice. :func:`release`
leaves a ``released`` hold behind, even for an order that reserved nothing (a fence): a
reservation for that order arriving later (a stale message, a slow retry) changes nothing.

Two calls creating the same hold at once (a reserve racing a release of the same order)
collide on the primary key; the loser raises IntegrityError, changes nothing, and is
retried by the caller (:func:`with_hold_retry`), after which it sees the winner's hold.

Each function is one statement on a Core connection (``connection.execute``; a session's
``execute`` serves too), called on an autocommit connection (``db.single_statements()``):
the call is its own transaction, one round trip.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from common.metrics import STOCK_UNITS_RELEASED, STOCK_UNITS_RESERVED
from products.exceptions import InsufficientStock, OrderTotalTooLarge, ProductNotFound

# The largest total an order can record: orders.total is NUMERIC(14, 2).
MAX_ORDER_TOTAL = Decimal("999999999999.99")


RESERVE = text(
    "SELECT shop_reserve_stock(:order_ref, CAST(:product_ids AS integer[]), "
    "CAST(:quantities AS integer[]), :max_total)"
)
RELEASE = text("SELECT shop_release_stock(:order_ref)")
HOLD = text(
    "SELECT status, shop_hold_lines(order_ref) AS lines FROM order_holds WHERE order_ref = :order_ref"
)


@dataclass(frozen=True)
class Outcome:
    """What :func:`reserve` or :func:`release` did: the hold in its wire form, and the
    units of stock it moved (counted once committed: :func:`with_hold_retry`)."""

    hold: dict
    units: int
    counter: Any


def wire_form(order_ref, status, lines):
    """``{"order_ref", "status", "lines": [{"product_id", "name", "quantity",
    "unit_price"}]}`` from a function's lines (unit prices as exact decimals)."""
    return {
        "order_ref": order_ref,
        "status": status,
        "lines": [{**line, "unit_price": Decimal(line["unit_price"])} for line in lines],
    }


def reserve(connection, order_ref, quantities):
    """Take ``quantities`` (``{product_id: quantity}``, ascending ids) out of stock for
    ``order_ref``: all lines or none, in one statement.

    Returns an :class:`Outcome` whose hold is ``{"order_ref", "status", "lines"}``. If
    ``order_ref`` already has a hold, returns it unchanged, whatever its status
    (``released`` means the order was fenced or cancelled: nothing is reserved). Raises
    ProductNotFound naming every unknown id, InsufficientStock naming every short line
    (requested and available), or OrderTotalTooLarge when the total at current prices
    exceeds :data:`MAX_ORDER_TOTAL`; nothing changes then.
    """
    answer = connection.execute(
        RESERVE,
        {
            "order_ref": order_ref,
            "product_ids": list(quantities),
            "quantities": list(quantities.values()),
            "max_total": MAX_ORDER_TOTAL,
        },
    ).scalar_one()
    refused = answer.get("refused")
    if refused == "product_not_found":
        raise ProductNotFound.for_ids(answer["product_ids"])
    if refused == "insufficient_stock":
        raise InsufficientStock.for_shortages(answer["shortages"])
    if refused == "order_total_too_large":
        raise OrderTotalTooLarge.for_total(Decimal(answer["total"]), MAX_ORDER_TOTAL)
    hold = wire_form(order_ref, answer["status"], answer["lines"])
    return Outcome(hold, answer["units"], STOCK_UNITS_RESERVED)


def release(connection, order_ref, cause="release"):
    """Give back the stock held for ``order_ref`` and leave the hold ``released``, in one
    statement; ``cause`` labels the units given back in
    ``shop_stock_units_released_total`` (``release``: an order cancelled or compensated;
    ``reconciler``).

    Idempotent: a second call changes nothing. For an ``order_ref`` with no hold, records
    a released hold with no lines (a fence, see the module docstring). Returns an
    :class:`Outcome`.
    """
    answer = connection.execute(RELEASE, {"order_ref": order_ref}).scalar_one()
    hold = wire_form(order_ref, answer["status"], answer["lines"])
    return Outcome(hold, answer["units"], STOCK_UNITS_RELEASED.labels(cause))


def hold_of(connection, order_ref):
    """The hold of ``order_ref`` in its wire form, or None if there is none. Read-only,
    one round trip."""
    row = connection.execute(HOLD, {"order_ref": order_ref}).first()
    return None if row is None else wire_form(order_ref, row.status, row.lines)


def with_hold_retry(opened, operation, *args):
    """Run ``operation(connection, *args)`` (:func:`reserve` or :func:`release`) on what
    ``opened()`` opens (``db.single_statements``: an autocommit connection; the
    reconciler's session, committed on exit), once more if it lost a race to create the
    same hold (IntegrityError on ``order_holds``); count the units it moved once that has
    committed. Returns the hold."""
    for attempt in (1, 2):
        try:
            with opened() as connection:
                outcome = operation(connection, *args)
        except IntegrityError:
            if attempt == 2:
                raise
            continue
        if outcome.units:
            outcome.counter.inc(outcome.units)
        return outcome.hold
    raise AssertionError("unreachable")
