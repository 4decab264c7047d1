"""Errors the orders service raises (imported by its callers so they deserialize).

Besides these, ``create_order`` lets the errors of the services it calls through
unchanged: CustomerNotFound, ProductNotFound, InsufficientStock, ServiceUnavailable,
GatewayTimeout.
"""
from common.errors import Conflict, NotFound

# Imported for their side effect: registering the errors create_order passes through.
import customers.exceptions  # noqa: F401
import products.exceptions  # noqa: F401


class OrderNotFound(NotFound):
    error = "order_not_found"
    description = "No order has this id."

    @classmethod
    def for_id(cls, order_id):
        return cls(f"order {order_id} not found", {"order_id": order_id})


class OrderNotCancellable(Conflict):
    error = "order_not_cancellable"
    description = "Only a confirmed order can be cancelled."


class OrderFailed(Conflict):
    error = "order_failed"
    description = (
        "The order could not be completed and holds no stock; place a new order "
        "(with a new Idempotency-Key)."
    )
