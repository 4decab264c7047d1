"""Wire formats of the products service."""

from decimal import Decimal

from marshmallow import Schema, ValidationError, fields, post_load, validate

from common.db import MAX_INT4
from common.schemas import NOT_BLANK, REQUESTED_LINES, RequestedLineSchema, storable_text

MAX_PRICE = Decimal("9999999999.99")  # Numeric(12, 2)


def at_most_two_decimals(value):
    if value.as_tuple().exponent < -2:
        raise ValidationError("Must have at most 2 decimal places.")


class CreateProductSchema(Schema):
    """``create_product`` input. ``price`` may be a string or a number (``"3.5"``, ``3.5``)."""

    name = fields.String(
        required=True, validate=[validate.Length(min=1, max=200), NOT_BLANK, storable_text]
    )
    price = fields.Decimal(
        required=True,
        validate=[validate.Range(min=0, max=MAX_PRICE), at_most_two_decimals],
    )
    stock = fields.Integer(strict=True, required=True, validate=validate.Range(min=0, max=MAX_INT4))

    @post_load
    def normalize(self, data, **kwargs):
        data["name"] = data["name"].strip()
        # "-0" is a valid price; store and answer it as the zero every read shows.
        data["price"] = data["price"].copy_abs() if data["price"].is_zero() else data["price"]
        return data


class ProductSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    price = fields.Decimal(places=2, as_string=True)
    stock = fields.Integer()
    created_at = fields.DateTime()


class ReserveStockSchema(Schema):
    """``reserve_stock`` input: ``{"order_ref", "requested": [{"id", "quantity"}]}``."""

    order_ref = fields.String(
        required=True, validate=[validate.Length(min=1, max=64), storable_text]
    )
    requested = fields.List(
        fields.Nested(RequestedLineSchema), required=True, validate=REQUESTED_LINES
    )


class ReservedLineSchema(Schema):
    product_id = fields.Integer()
    name = fields.String()
    quantity = fields.Integer()
    unit_price = fields.Decimal(places=2, as_string=True)


class ReservationSchema(Schema):
    """``reserve_stock`` / ``release_stock`` output: one line per product, with the unit
    price as it was when the stock was reserved."""

    order_ref = fields.String()
    status = fields.String()
    lines = fields.List(fields.Nested(ReservedLineSchema))
