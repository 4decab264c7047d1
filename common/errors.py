"""The error contract: every error a client may see, for every service and the gateway.

This module is the one place where the errors that cross a service boundary are defined
(codes, statuses, messages); every service raises them from here and every caller (the
gateway, orders calling customers and products) catches them from here, so no service
imports another service's package (tests/test_import_graph.py checks it). The errors
only the gateway answers (401/403 auth, 405, 408, 413, 414, 415, 431, 499) live in
:mod:`gateway.exceptions`.

Modelled on ``werkzeug.exceptions``: each class carries an HTTP ``status``, a stable
machine-readable ``error`` code and a default ``description``. Services raise them from
their RPC methods; Nameko serializes them onto the reply with their class path
(``common.errors.InsufficientStock``) and, because every subclass is registered with
:func:`nameko.exceptions.deserialize_to_instance` when it is defined, any process that
imports this module gets the same class back. The gateway renders any of them, and
werkzeug's own routing errors, as one JSON envelope::

    {"error": "product_not_found", "message": "...", "details": {...}}

Nameko stringifies non-string exception arguments on the wire, so ``details`` travel as a
JSON string and are decoded again in ``__init__``.

What is stored (orders' ``failure``) names an error by its code, never by its class
path: :func:`error_class` maps a code back to its class.
"""

import json
from collections.abc import Sequence
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, cast

from nameko.exceptions import deserialize_to_instance, registry

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
"""``sys.exc_info()`` of a failed call, as nameko hands it to ``worker_result``."""


class Reason(StrEnum):
    """``details["reason"]`` of a 503 (and what readiness checks report): why a dependency
    was not available. Clients and the gateway's readiness read these words; they are
    strings on the wire (a StrEnum compares equal to its value)."""

    BROKER = "broker"  # RabbitMQ unreachable, or the connection broke mid-publish
    BROKER_BLOCKED = "broker_blocked"  # RabbitMQ blocks publishers (memory or disk alarm)
    SERVICE_RESTARTING = "service_restarting"  # the callee's own broker connection broke
    DATABASE = "database"  # the service's own database failed
    JWKS = "jwks"  # the identity provider's keys could not be fetched
    SHUTTING_DOWN = "shutting_down"  # the gateway is draining (it is stopping)
    OVERLOADED = "overloaded"  # the gateway shed the request (gateway/admission.py)


class ShopError(Exception):
    """Base of every error a client may see. Never raised for bugs: those are 500s."""

    status = 500
    error = "internal_error"
    description = "The server could not complete the request."
    # HTTP headers the gateway answers this error with (WWW-Authenticate, Retry-After...);
    # they do not travel over RPC
    headers: dict[str, str] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        deserialize_to_instance(cls)

    def __init__(
        self, message: str | None = None, details: dict[str, Any] | str | None = None
    ) -> None:
        if isinstance(details, str):  # arrived over RPC, see module docstring
            details = cast(dict[str, Any], json.loads(details))
        self.message = message or self.description
        self.details: dict[str, Any] = details or {}
        super().__init__(self.message, json.dumps(self.details))

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The JSON envelope the gateway answers with."""
        return {"error": self.error, "message": self.message, "details": self.details}


deserialize_to_instance(ShopError)


# -- General errors, raised by any service (and by the gateway) -------------------------


class BadRequest(ShopError):
    status = 400
    error = "bad_request"
    description = "The request could not be understood."


class NotFound(ShopError):
    status = 404
    error = "not_found"
    description = "The requested resource does not exist."


class Conflict(ShopError):
    status = 409
    error = "conflict"
    description = "The request conflicts with the current state of the resource."


class ValidationError(ShopError):
    """Well-formed request whose content is invalid; ``details`` maps field -> messages."""

    status = 422
    error = "validation_error"
    description = "The request body is invalid."


class InternalError(ShopError):
    status = 500
    error = "internal_error"
    description = "Internal server error."


class ServiceUnavailable(ShopError):
    status = 503
    error = "service_unavailable"
    description = "A service needed for this request is unavailable; retry later."


class GatewayTimeout(ShopError):
    status = 504
    error = "timeout"
    description = "A service did not answer in time; retry later."


# -- Idempotency keys (every service's POST; common/idempotency.py) ---------------------


class IdempotencyKeyReused(ValidationError):
    error = "idempotency_key_reused"
    description = "This Idempotency-Key was already used with a different request."


class InvalidIdempotencyKey(BadRequest):
    error = "invalid_idempotency_key"
    description = "An Idempotency-Key is 1 to 100 printable ASCII characters."


# -- customers ---------------------------------------------------------------------------


class CustomerNotFound(NotFound):
    error = "customer_not_found"
    description = "No customer has this id."

    @classmethod
    def for_id(cls, customer_id: Any) -> Self:
        return cls(f"customer {customer_id} not found", {"customer_id": customer_id})


class EmailAlreadyRegistered(Conflict):
    error = "email_taken"
    description = "A customer with this email already exists."


# -- products ----------------------------------------------------------------------------


class ProductNotFound(NotFound):
    error = "product_not_found"
    description = "No product has this id."

    @classmethod
    def for_ids(cls, product_ids: Sequence[Any]) -> Self:
        ids = ", ".join(map(str, product_ids))
        noun = "product" if len(product_ids) == 1 else "products"
        return cls(f"{noun} {ids} not found", {"product_ids": list(product_ids)})


class InsufficientStock(Conflict):
    """``details["products"]``: ``[{"product_id", "requested", "available"}, ...]``."""

    error = "insufficient_stock"
    description = "Not enough stock for this order."

    @classmethod
    def for_shortages(cls, shortages: list[dict[str, Any]]) -> Self:
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
    def for_total(cls, total: object, limit: object) -> Self:
        return cls(
            f"the order's total {total} exceeds the maximum {limit}",
            {"products": [f"The total at current prices, {total}, exceeds {limit}."]},
        )


# -- orders (create_order also passes through CustomerNotFound, ProductNotFound,
#    InsufficientStock, OrderTotalTooLarge, ServiceUnavailable, GatewayTimeout) ----------


class OrderNotFound(NotFound):
    error = "order_not_found"
    description = "No order has this id."

    @classmethod
    def for_id(cls, order_id: Any) -> Self:
        return cls(f"order {order_id} not found", {"order_id": order_id})


class OrderNotCancellable(Conflict):
    error = "order_not_cancellable"
    description = "Only a confirmed order can be cancelled."


class OrderFailed(Conflict):
    error = "order_failed"
    description = (
        "The order could not be completed and holds no stock (details.cause says why); "
        "retry with the same Idempotency-Key to place it again."
    )


# -- Codes -> classes ----------------------------------------------------------------------


def _contract_classes():
    return [
        value
        for value in globals().values()
        if isinstance(value, type) and issubclass(value, ShopError) and value is not ShopError
    ]


def _by_code(classes):
    by_code: dict[str, type[ShopError]] = {}
    for cls in classes:
        if cls.error in by_code:
            raise RuntimeError(
                f"error code {cls.error!r} is both {by_code[cls.error].__name__} and {cls.__name__}"
            )
        by_code[cls.error] = cls
    return by_code


BY_CODE = _by_code(_contract_classes())
"""Every contract class by its ``error`` code (unique: checked at import)."""


def error_class(code: str) -> type[ShopError]:
    """The contract class whose ``error`` is ``code``; ShopError for an unknown code."""
    return BY_CODE.get(code, ShopError)


# Before the contract module, these classes were sent under their services' paths. A
# process of that version still sends them so during a rolling upgrade: registered here,
# its errors keep their class instead of becoming a RemoteError (a 500). Drop once no
# process older than the contract module runs.
FORMER_PATHS = {
    "customers.exceptions.CustomerNotFound": CustomerNotFound,
    "customers.exceptions.EmailAlreadyRegistered": EmailAlreadyRegistered,
    "products.exceptions.ProductNotFound": ProductNotFound,
    "products.exceptions.InsufficientStock": InsufficientStock,
    "products.exceptions.OrderTotalTooLarge": OrderTotalTooLarge,
    "orders.exceptions.OrderNotFound": OrderNotFound,
    "orders.exceptions.OrderNotCancellable": OrderNotCancellable,
    "orders.exceptions.OrderFailed": OrderFailed,
    "common.idempotency.IdempotencyKeyReused": IdempotencyKeyReused,
    "common.idempotency.InvalidIdempotencyKey": InvalidIdempotencyKey,
}
registry.update(FORMER_PATHS)


def outcome_of(exc: BaseException | None) -> str:
    """How a call ended, in one word shared by logs, metrics and traces: ``ok`` when
    ``exc`` is None, the error code of a ShopError (``insufficient_stock``...), else
    ``internal_error`` (a crash)."""
    if exc is None:
        return "ok"
    if isinstance(exc, ShopError):
        return exc.error
    return "internal_error"
