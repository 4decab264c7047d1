"""Errors the orders service raises (imported by its callers so they deserialize).

Besides these, ``create_order`` lets the errors of the services it calls through
unchanged: CustomerNotFound, ProductNotFound, InsufficientStock, ServiceUnavailable,
GatewayTimeout.
"""
from common.errors import NotFound

# Imported for their side effect: registering the errors create_order passes through.
import customers.exceptions  # noqa: F401
import products.exceptions  # noqa: F401


class OrderNotFound(NotFound):
    error = "order_not_found"
    description = "No order has this id."

    @classmethod
    def for_id(cls, order_id):
        return cls(f"order {order_id} not found", {"order_id": order_id})
