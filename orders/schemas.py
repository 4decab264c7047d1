"""Wire formats of the orders service."""

from marshmallow import Schema, fields, validate

from common.db import MAX_INT4
from common.schemas import REQUESTED_LINES, RequestedLineSchema


class CreateOrderSchema(Schema):
    """``create_order`` input: ``{"customer_id", "products": [{"id", "quantity"}]}``.

    ``products`` is the seed's name for the order's requested lines: loaded as
    ``requested``, the one name they keep from here to ``products.reserve_stock`` and the
    orders table (errors still name the field ``products``)."""

    customer_id = fields.Integer(
        strict=True, required=True, validate=validate.Range(min=1, max=MAX_INT4)
    )
    requested = fields.List(
        fields.Nested(RequestedLineSchema),
        data_key="products",
        required=True,
        validate=REQUESTED_LINES,
    )


class OrderLineSchema(Schema):
    product_id = fields.Integer()
    name = fields.String(attribute="product_name")
    quantity = fields.Integer()
    unit_price = fields.Decimal(places=2, as_string=True)


class FailureSchema(Schema):
    """Why an order is not confirmed: the error envelope its client got."""

    error = fields.String()
    message = fields.String()
    details = fields.Dict()


class OrderSchema(Schema):
    """An order. ``status``: pending | confirmed | rejected | failed | cancelling |
    cancelled (``cancelling``: a cancel is under way, its stock being given back; a retry
    of the cancel or recovery makes it ``cancelled``); ``total`` is null and ``lines``
    empty until it is confirmed; ``failure`` is set on a pending, rejected or failed
    order."""

    id = fields.Integer()
    customer_id = fields.Integer()
    status = fields.String()
    total = fields.Decimal(places=2, as_string=True, allow_none=True)
    lines = fields.List(fields.Nested(OrderLineSchema))
    failure = fields.Nested(FailureSchema, allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
