"""The errors the orders service raises. Defined in the contract module
:mod:`common.errors` (shared by every service and the gateway); re-exported here.

Besides these, ``create_order`` lets the errors of the services it calls through
unchanged: CustomerNotFound, ProductNotFound, InsufficientStock, OrderTotalTooLarge,
ServiceUnavailable, GatewayTimeout (all in :mod:`common.errors` too, so the orders process
deserializes them without importing the other services).
"""

from common.errors import OrderFailed, OrderNotCancellable, OrderNotFound

__all__ = ["OrderFailed", "OrderNotCancellable", "OrderNotFound"]
