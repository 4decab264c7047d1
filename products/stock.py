"""The stock guarantee: every change of ``products.stock`` happens here, in one transaction,
under the rows' locks.

Locking discipline (the same in every function, so two transactions can never wait on each
other in a cycle): product rows are locked with ``SELECT ... FOR UPDATE ORDER BY id`` before
anything else is read or written. PostgreSQL applies the lock after the sort, so rows are
locked in ascending id order: crossed orders ([a, b] and [b, a]) queue up instead of
deadlocking. Any number of service processes can run these functions concurrently: the
database, not the process, serializes them.

Idempotency: a reservation is keyed on ``(order_ref, product_id)`` (unique constraint). The
check for an existing reservation runs *after* the locks are taken, so a redelivered or
concurrent replay of the same ``order_ref`` sees the first one's committed rows and never
decrements twice.
"""
from sqlalchemy import func, select

from products.exceptions import InsufficientStock, ProductNotFound
from products.models import Product, Reservation, ReservationStatus


def lock_products(session, product_ids):
    """``{id: Product}`` for ``product_ids``, each row locked FOR UPDATE, in id order."""
    rows = session.scalars(
        select(Product)
        .where(Product.id.in_(sorted(product_ids)))
        .order_by(Product.id)
        .with_for_update()
    )
    return {product.id: product for product in rows}


def reservation_of(session, order_ref, products):
    """The reservation recorded for ``order_ref`` (``None`` if there is none)."""
    reservations = session.scalars(
        select(Reservation)
        .where(Reservation.order_ref == order_ref)
        .order_by(Reservation.product_id)
    ).all()
    if not reservations:
        return None
    released = all(r.status == ReservationStatus.RELEASED for r in reservations)
    return {
        "order_ref": order_ref,
        "status": ReservationStatus.RELEASED if released else ReservationStatus.RESERVED,
        "lines": [
            {
                "product_id": r.product_id,
                "name": products[r.product_id].name if r.product_id in products else None,
                "quantity": r.quantity,
                "unit_price": r.unit_price,
            }
            for r in reservations
        ],
    }


def reserve(session, order_ref, quantities):
    """Take ``quantities`` (``{product_id: quantity}``) out of stock for ``order_ref``:
    all lines or none.

    Returns the reservation (see :func:`reservation_of`). If ``order_ref`` already has one,
    returns it unchanged. Raises ProductNotFound naming every unknown id, or
    InsufficientStock naming every short line (requested and available); nothing changes
    then. The caller commits.
    """
    products = lock_products(session, quantities)
    existing = reservation_of(session, order_ref, products)
    if existing is not None:
        return existing

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

    for product_id, quantity in quantities.items():
        product = products[product_id]
        product.stock -= quantity
        session.add(
            Reservation(
                order_ref=order_ref,
                product_id=product_id,
                quantity=quantity,
                unit_price=product.price,
            )
        )
    session.flush()
    return reservation_of(session, order_ref, products)


def release(session, order_ref):
    """Give back the stock of ``order_ref``'s reservation; idempotent (a second call, or a
    call for an unknown ``order_ref``, changes nothing).

    Returns the reservation afterwards, ``None`` if ``order_ref`` never reserved anything.
    The caller commits.
    """
    product_ids = session.scalars(
        select(Reservation.product_id).where(Reservation.order_ref == order_ref)
    ).all()
    if not product_ids:
        return None
    products = lock_products(session, product_ids)
    held = session.scalars(
        select(Reservation)
        .where(
            Reservation.order_ref == order_ref,
            Reservation.status == ReservationStatus.RESERVED,
        )
        .with_for_update()
    ).all()
    for reservation in held:
        products[reservation.product_id].stock += reservation.quantity
        reservation.status = ReservationStatus.RELEASED
        reservation.released_at = func.now()
    session.flush()
    return reservation_of(session, order_ref, products)
