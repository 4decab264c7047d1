"""Wire formats of the customers service."""
from marshmallow import Schema, fields, post_load, validate

from common.schemas import NOT_BLANK, storable_text


class CreateCustomerSchema(Schema):
    """``create_customer`` input; unknown fields are rejected."""

    name = fields.String(
        required=True, validate=[validate.Length(min=1, max=200), NOT_BLANK, storable_text]
    )
    email = fields.Email(required=True, validate=[validate.Length(max=254), storable_text])

    @post_load
    def normalize(self, data, **kwargs):
        data["name"] = data["name"].strip()
        data["email"] = data["email"].lower()
        return data


class CustomerSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    email = fields.String()
    created_at = fields.DateTime()
