"""The stock guarantee: every change of ``products.stock`` happens here, in one transaction,
under the rows' locks.

Locking discipline (the same in every function, so two transactions can never wait on each
other in a cycle): product rows are locked with ``SELECT ... FOR UPDATE ORDER BY id``
first, then the order's hold. PostgreSQL applies the lock after the sort, so rows are
locked in ascending id order: crossed orders ([a, b] and [b, a]) queue up instead of
deadlocking. Any number of service processes can run these functions concurrently: the
database, not the process, serializes them. The reconciler (:mod:`products.reconcile`)
locks holds only, ``SKIP LOCKED``, so it never waits on a lock; it releases a hold with
:func:`release`, in a transaction of its own, after its batch's hold locks are gone.

Idempotency: one :class:`OrderHold` per ``order_ref`` (primary key). It is read *after*
the product locks are taken, so a redelivered or concurrent replay of the same order sees
the first one's committed hold and never decrements twice. :func:`release` leaves a
``released`` hold behind, even for an order that reserved nothing (a fence): a reservation
for that order arriving later (a stale message, a slow retry) changes nothing.

Two transactions creating the same hold at once (a reserve racing a release of the same
order) collide on the primary key; the loser raises IntegrityError and is retried by the
caller (:func:`with_hold_retry`), after which it sees the winner's hold.
"""

from decimal import Decimal

from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import IntegrityError

from common.metrics import STOCK_UNITS_RELEASED, STOCK_UNITS_RESERVED, count_on_commit
from products.exceptions import InsufficientStock, OrderTotalTooLarge, ProductNotFound
from products.models import HoldStatus, OrderHold, Product, Reservation

# The largest total an order can record: orders.total is NUMERIC(14, 2).
MAX_ORDER_TOTAL = Decimal("999999999999.99")


def locking(*columns):
    """``SELECT columns`` of the products ``:product_ids`` ``FOR UPDATE``, in id order: the
    one place the lock order of the module docstring is written. Built once per use site
    (building a statement per call was a tenth of a reservation's Python)."""
    return (
        select(*columns)
        .where(Product.id.in_(bindparam("product_ids", expanding=True)))
        .order_by(Product.id)
        .with_for_update()
    )


LOCK_PRODUCTS = locking(Product)
LOCK_STOCK_ROWS = locking(Product.id, Product.name, Product.price, Product.stock)
# The hold's row lock alone, read as a plain row: the common reservation has no hold yet
LOCK_HOLD_ROW = (
    select(OrderHold.status).where(OrderHold.order_ref == bindparam("order_ref")).with_for_update()
)


def lock_products(session, product_ids):
    """``{id: Product}`` for ``product_ids``, each row locked FOR UPDATE, in id order."""
    products = session.scalars(LOCK_PRODUCTS, {"product_ids": sorted(set(product_ids))})
    return {product.id: product for product in products}


def lock_stock_rows(session, product_ids):
    """:func:`lock_products` as plain rows (id, name, price, stock): the reservation only
    reads them, and skipping the ORM objects saves most of the Python around the lock."""
    rows = session.connection().execute(  # Core: no ORM execution around the statement
        LOCK_STOCK_ROWS, {"product_ids": sorted(set(product_ids))}
    )
    return {row.id: row for row in rows}


def lock_hold(session, order_ref):
    """The hold of ``order_ref`` locked FOR UPDATE, or None, in one round trip: for
    :func:`release`, which expects a hold (a reservation expects none: :func:`locked_hold`)."""
    return session.get(OrderHold, order_ref, with_for_update=True, populate_existing=True)


def locked_hold(session, order_ref):
    """The hold of ``order_ref`` locked FOR UPDATE, or None: the lock taken by a Core
    statement, and the ORM object (with its lines) loaded only when there is a hold."""
    row = session.connection().execute(LOCK_HOLD_ROW, {"order_ref": order_ref}).first()
    if row is None:
        return None
    return session.get(OrderHold, order_ref, populate_existing=True)  # locked above


def describe(hold, products):
    """The wire form of ``hold``: ``{"order_ref", "status", "lines": [...]}``."""
    lines = [
        {"product_id": line.product_id, "quantity": line.quantity, "unit_price": line.unit_price}
        for line in hold.lines
    ]
    return wire_form(hold.order_ref, hold.status, lines, products)


def wire_form(order_ref, status, lines, products):
    """``{"order_ref", "status", "lines": [{"product_id", "name", "quantity",
    "unit_price"}]}``; a line's name is None if its product is not in ``products``."""
    return {
        "order_ref": order_ref,
        "status": status,
        "lines": [
            {
                **line,
                "name": products[line["product_id"]].name
                if line["product_id"] in products
                else None,
            }
            for line in lines
        ],
    }


# The hold, its lines and the decrements in one round trip, after the locks and checks
# of reserve(). The arrays are in ascending product id order, one element per line.
TAKE_STOCK = text("""
    WITH hold AS (
        INSERT INTO order_holds (order_ref, status) VALUES (:order_ref, :status)
    ), held_lines AS (
        INSERT INTO reservations (order_ref, product_id, quantity, unit_price)
        SELECT :order_ref, line.product_id, line.quantity, line.unit_price
        FROM unnest(CAST(:product_ids AS integer[]), CAST(:quantities AS integer[]),
                    CAST(:unit_prices AS numeric[]))
             WITH ORDINALITY AS line(product_id, quantity, unit_price, n)
        ORDER BY line.n
    )
    UPDATE products SET stock = products.stock - line.quantity
    FROM unnest(CAST(:product_ids AS integer[]), CAST(:quantities AS integer[]))
         AS line(product_id, quantity)
    WHERE products.id = line.product_id
""")


def reserve(session, order_ref, quantities):
    """Take ``quantities`` (``{product_id: quantity}``, ascending ids) out of stock for
    ``order_ref``: all lines or none.

    Returns the hold (see :func:`describe`). If ``order_ref`` already has one, returns it
    unchanged, whatever its status (``released`` means the order was fenced or cancelled:
    nothing is reserved). Raises ProductNotFound naming every unknown id,
    InsufficientStock naming every short line (requested and available), or
    OrderTotalTooLarge when the total at current prices exceeds :data:`MAX_ORDER_TOTAL`;
    nothing changes then. The caller commits.

    Round trips: the product locks, the hold lock, one statement for every write.
    """
    products = lock_stock_rows(session, quantities)
    hold = locked_hold(session, order_ref)
    if hold is not None:
        return describe(hold, products)

    missing = [product_id for product_id in quantities if product_id not in products]
    if missing:
        raise ProductNotFound.for_ids(missing)

    shortages = [
        {"product_id": product_id, "requested": quantity, "available": products[product_id].stock}
        for product_id, quantity in quantities.items()
        if products[product_id].stock < quantity
    ]
    if shortages:
        raise InsufficientStock.for_shortages(shortages)

    total = sum(products[pid].price * quantity for pid, quantity in quantities.items())
    if total > MAX_ORDER_TOTAL:
        raise OrderTotalTooLarge.for_total(total, MAX_ORDER_TOTAL)

    lines = [
        {"product_id": product_id, "quantity": quantity, "unit_price": products[product_id].price}
        for product_id, quantity in quantities.items()
    ]
    count_on_commit(session, STOCK_UNITS_RESERVED, sum(quantities.values()))
    session.connection().execute(
        TAKE_STOCK,
        {
            "order_ref": order_ref,
            "status": HoldStatus.RESERVED,
            "product_ids": [line["product_id"] for line in lines],
            "quantities": [line["quantity"] for line in lines],
            "unit_prices": [line["unit_price"] for line in lines],
        },
    )
    return wire_form(order_ref, HoldStatus.RESERVED, lines, products)


def release(session, order_ref, cause="release"):
    """Give back the stock held for ``order_ref`` and leave the hold ``released``;
    ``cause`` labels the units given back in ``shop_stock_units_released_total``
    (``release``: an order cancelled or compensated; ``reconciler``).

    Idempotent: a second call changes nothing. For an ``order_ref`` with no hold, records
    a released hold with no lines (a fence, see the module docstring). Returns the hold.
    The caller commits.
    """
    product_ids = session.scalars(
        select(Reservation.product_id).where(Reservation.order_ref == order_ref)
    ).all()
    products = lock_products(session, product_ids) if product_ids else {}
    hold = lock_hold(session, order_ref)
    if hold is None:
        hold = OrderHold(order_ref=order_ref, status=HoldStatus.RELEASED, lines=[])
        session.add(hold)
    elif hold.status != HoldStatus.RELEASED:
        for line in hold.lines:
            products[line.product_id].stock += line.quantity
        hold.status = HoldStatus.RELEASED
        count_on_commit(
            session, STOCK_UNITS_RELEASED.labels(cause), sum(line.quantity for line in hold.lines)
        )
    session.flush()
    return describe(hold, products)


def with_hold_retry(get_session, operation, *args):
    """Run ``operation(session, *args)`` in a committed transaction, once more if it lost a
    race to create the same hold (IntegrityError on ``order_holds``)."""
    for attempt in (1, 2):
        try:
            with get_session() as session:
                return operation(session, *args)
        except IntegrityError:
            if attempt == 2:
                raise
