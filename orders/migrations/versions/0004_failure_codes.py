"""orders.failure names its error by code only: drop "exc_path" (the class import path)

A failure record is ``{"error", "message", "details", "status"}``; the service rebuilds
the error from its ``error`` code (common.errors.error_class), so moving or renaming a
class no longer turns stored failures into a bare ShopError. The downgrade writes back
the class paths the code before this revision expects (frozen here, never imported).

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = "0004"
down_revision = "0003"
# docs/DEPLOY.md, "Migrations: expand, then contract": removes the exc_path that older code
# reads from a stored failure (before the rule)
PHASE = "contract"
branch_labels = None
depends_on = None

# error code -> the class path stored before this revision (where each class lived then).
FORMER_PATHS = {
    "bad_request": "common.errors.BadRequest",
    "unauthorized": "common.errors.Unauthorized",
    "forbidden": "common.errors.Forbidden",
    "not_found": "common.errors.NotFound",
    "method_not_allowed": "common.errors.MethodNotAllowed",
    "conflict": "common.errors.Conflict",
    "request_timeout": "common.errors.RequestTimeout",
    "payload_too_large": "common.errors.PayloadTooLarge",
    "unsupported_media_type": "common.errors.UnsupportedMediaType",
    "uri_too_long": "common.errors.UriTooLong",
    "headers_too_large": "common.errors.HeadersTooLarge",
    "client_closed_request": "common.errors.ClientClosedRequest",
    "validation_error": "common.errors.ValidationError",
    "internal_error": "common.errors.InternalError",
    "service_unavailable": "common.errors.ServiceUnavailable",
    "timeout": "common.errors.GatewayTimeout",
    "idempotency_key_reused": "common.idempotency.IdempotencyKeyReused",
    "invalid_idempotency_key": "common.idempotency.InvalidIdempotencyKey",
    "customer_not_found": "customers.exceptions.CustomerNotFound",
    "email_taken": "customers.exceptions.EmailAlreadyRegistered",
    "product_not_found": "products.exceptions.ProductNotFound",
    "insufficient_stock": "products.exceptions.InsufficientStock",
    "order_total_too_large": "products.exceptions.OrderTotalTooLarge",
    "order_not_found": "orders.exceptions.OrderNotFound",
    "order_not_cancellable": "orders.exceptions.OrderNotCancellable",
    "order_failed": "orders.exceptions.OrderFailed",
}


def upgrade() -> None:
    op.execute("UPDATE orders SET failure = failure - 'exc_path' WHERE failure ? 'exc_path'")


def downgrade() -> None:
    values = ", ".join(f"('{code}', '{path}')" for code, path in FORMER_PATHS.items())
    # A code not listed keeps no path: the former code then rebuilt it as a ShopError.
    op.execute(
        "UPDATE orders o SET failure = o.failure || jsonb_build_object('exc_path', m.path) "
        f"FROM (VALUES {values}) AS m(code, path) "
        "WHERE o.failure IS NOT NULL AND o.failure ->> 'error' = m.code"
    )
