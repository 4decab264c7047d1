"""The errors the products service raises. Defined in the contract module
:mod:`common.errors` (shared by every service and the gateway); re-exported here."""

from common.errors import InsufficientStock, OrderTotalTooLarge, ProductNotFound

__all__ = ["InsufficientStock", "OrderTotalTooLarge", "ProductNotFound"]
