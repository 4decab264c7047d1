"""The order saga: how an order moves through its lifecycle.

Every function here works on an :class:`Order` row that the caller has locked (or just
inserted) in an open transaction, and that the caller commits afterwards. Holding the row
lock across the RPCs serializes everything that may move one order (the first attempt, a
client retry with the same Idempotency-Key, the recovery job, a cancel), so two of them
can never decide differently.

Safety of each step when repeated:

* the customer check is read-only (a local, event-fed view, else ``customers.get_customer``);
* ``products.reserve_stock(order_ref, ...)`` is idempotent on ``order_ref`` and answers
  ``released`` once the order was fenced, so a stale or replayed call reserves nothing;
* ``products.release_stock(order_ref)`` is idempotent and fences the order;
* a cancel is a saga of its own, with a durable intent: the order is committed
  ``cancelling`` (:func:`begin_cancel`) before products gives its stock back, then marked
  ``cancelled`` (:func:`finish_cancel`, under the row lock again). If anything interrupts
  it in between (the process killed, its database transaction lost, a restore landing
  between the two commits), the order says so: a retry of the cancel, or recovery, runs
  :func:`finish_cancel` again (the release is idempotent);
* the status changes are guarded by the row lock; an order leaves ``pending`` once per
  attempt: a ``failed`` order (it never held stock: its reservation was fenced after an
  answer went missing) is placed again by a retry with its key (:func:`reopen`), under a
  new ``order_ref``, so a transient fault never burns an Idempotency-Key.
"""

import uuid
from decimal import Decimal

from sqlalchemy.exc import SQLAlchemyError

from common.errors import (
    InsufficientStock,
    NotFound,
    OrderFailed,
    OrderNotCancellable,
    ServiceUnavailable,
    ShopError,
    ValidationError,
    error_class,
)
from orders.models import OrderLine, OrderStatus

# Answers that refuse an order for good (nothing was reserved): CustomerNotFound,
# ProductNotFound, InsufficientStock, ValidationError.
DEFINITE_REFUSALS = (NotFound, InsufficientStock, ValidationError)


def error_record(exc):
    """``exc`` as stored in ``orders.failure``, rebuildable by :func:`stored_error`:
    ``{"error", "message", "details", "status"}``. The error is named by its stable code,
    never by its class path (renaming or moving a class changes nothing stored)."""
    if not isinstance(exc, ShopError):
        exc = ServiceUnavailable(f"unexpected error: {type(exc).__name__}")
    return {**exc.to_dict(), "status": exc.status}


def stored_error(record):
    """The ShopError ``record`` describes: the contract class of its code."""
    return error_class(record["error"])(record["message"], record.get("details"))


def advance(order, check_customer, products):
    """Drive a ``pending`` order as far as it can go now. ``check_customer(id)`` raises
    CustomerNotFound for an unknown customer.

    Ends ``confirmed``, ``rejected`` (definite refusal, stored in ``failure``), ``failed``
    (the order had been fenced) or still ``pending`` (an answer was missing: the error is
    stored in ``failure``). Returns True if this call saw stock reserved for the order.
    Raises what the order's own database raises (its transaction is lost, the caller rolls
    back): only the answers of other services are stored as the order's outcome.
    """
    try:
        check_customer(order.customer_id)
        hold = products.reserve_stock(order.order_ref, order.requested)
    except DEFINITE_REFUSALS as exc:
        order.status, order.failure = OrderStatus.REJECTED, error_record(exc)
        return False
    except SQLAlchemyError:
        raise  # the order's own database failed (the local customer check): nothing to store
    except Exception as exc:  # noqa: BLE001 - any other answer leaves the outcome unknown
        order.failure = error_record(exc)
        return False
    if hold["status"] == "released":
        fail(order, "fenced")
        return False
    confirm(order, hold["lines"])
    return True


def confirm(order, reserved_lines):
    order.lines = [
        OrderLine(
            product_id=line["product_id"],
            product_name=line["name"],
            quantity=line["quantity"],
            unit_price=Decimal(line["unit_price"]),
        )
        for line in reserved_lines
    ]
    order.total = sum((line.unit_price * line.quantity for line in order.lines), Decimal("0"))
    order.status, order.failure = OrderStatus.CONFIRMED, None


def fail(order, cause):
    """Mark ``order`` failed: it holds no stock and its ``order_ref`` is fenced. The stored
    failure names its ``cause``: the code of the error that left it pending (``timeout``,
    ``service_unavailable``...), or ``fenced`` (its reservation found the fence)."""
    order.status = OrderStatus.FAILED
    order.failure = error_record(
        OrderFailed(
            f"order {order.id} could not be completed ({cause}); nothing is held for it: "
            "retry with the same Idempotency-Key to place it again",
            {"order_id": order.id, "cause": cause},
        )
    )


def reopen(order):
    """Make a ``failed`` order ``pending`` again, under a new ``order_ref`` (the old one is
    fenced at products: nothing can be reserved under it any more). A failed order never
    held stock, so placing it again cannot sell twice; the client's key keeps one order."""
    order.order_ref = uuid.uuid4().hex
    order.status, order.failure = OrderStatus.PENDING, None


def recover(order, products):
    """Resolve a ``pending`` order whose first attempt is over: confirm it if its stock is
    reserved, otherwise fence it at products (release) and mark it failed. Raises when
    products does not answer (the order stays pending for the next run)."""
    hold = products.get_reservation(order.order_ref)
    if hold is not None and hold["status"] in ("reserved", "confirmed"):
        confirm(order, hold["lines"])
        return
    products.release_stock(order.order_ref)
    fail(order, (order.failure or {}).get("error", "unknown"))


def begin_cancel(order):
    """Record the intent to cancel ``order``: a ``confirmed`` order becomes ``cancelling``
    (the caller commits that before any stock is given back). Returns whether the cancel
    still has to be finished (:func:`finish_cancel`): False for an order already
    ``cancelled``. Raises OrderNotCancellable (409) for any other status."""
    if order.status == OrderStatus.CANCELLED:
        return False
    if order.status == OrderStatus.CONFIRMED:
        order.status = OrderStatus.CANCELLING
    elif order.status != OrderStatus.CANCELLING:
        raise OrderNotCancellable(
            f"order {order.id} is {order.status}; only a confirmed order can be cancelled",
            {"order_id": order.id, "status": order.status},
        )
    return True


def finish_cancel(order, products):
    """Give a ``cancelling`` order's stock back (``products.release_stock``, idempotent:
    done before, it gives nothing twice) and mark it ``cancelled``. Raises what products
    raises: the order stays ``cancelling`` for a retry or the next recovery."""
    products.release_stock(order.order_ref)
    order.status = OrderStatus.CANCELLED


def outcome_error(order):
    """The error a client gets for an order that is not confirmed (None if it is, or was
    and is being or has been cancelled)."""
    if order.status in (OrderStatus.CONFIRMED, OrderStatus.CANCELLING, OrderStatus.CANCELLED):
        return None
    record = order.failure or error_record(ServiceUnavailable())
    if order.status == OrderStatus.PENDING:
        record = {
            **record,
            "message": record["message"]
            + "; the order is pending: retry with the same Idempotency-Key",
            "details": {**record["details"], "order_id": order.id, "order_status": order.status},
        }
    return stored_error(record)
