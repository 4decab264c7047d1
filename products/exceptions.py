"""Errors the products service raises (imported by its callers so they deserialize)."""
from common.errors import Conflict, NotFound, ValidationError


class ProductNotFound(NotFound):
    error = "product_not_found"
    description = "No product has this id."

    @classmethod
    def for_ids(cls, product_ids):
        ids = ", ".join(map(str, product_ids))
        noun = "product" if len(product_ids) == 1 else "products"
        return cls(f"{noun} {ids} not found", {"product_ids": list(product_ids)})


class InsufficientStock(Conflict):
    """``details["products"]``: ``[{"product_id", "requested", "available"}, ...]``."""

    error = "insufficient_stock"
    description = "Not enough stock for this order."

    @classmethod
    def for_shortages(cls, shortages):
        text = "; ".join(
            f"product {s['product_id']}: requested {s['requested']}, available {s['available']}"
            for s in shortages
        )
        return cls(f"not enough stock ({text})", {"products": shortages})


class OrderTotalTooLarge(ValidationError):
    """The order's total at current prices is beyond what an order can record
    (``details["products"]``: the limit and the total)."""

    error = "order_total_too_large"
    description = "The order's total at current prices exceeds the maximum an order can hold."

    @classmethod
    def for_total(cls, total, limit):
        return cls(
            f"the order's total {total} exceeds the maximum {limit}",
            {"products": [f"The total at current prices, {total}, exceeds {limit}."]},
        )
