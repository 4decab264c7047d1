"""Wire formats of the customers service."""

from marshmallow import Schema, ValidationError, fields, post_load, validate

from common.schemas import NOT_BLANK, storable_text

MAX_EMAIL_LENGTH = 254  # customers.email is VARCHAR(254)


def fits_once_lowercased(email):
    """Emails are stored lower-cased, and lower-casing can lengthen a string ("İ" becomes
    two code points): check the length of what will be stored."""
    if len(email.lower()) > MAX_EMAIL_LENGTH:
        raise ValidationError(f"Longer than maximum length {MAX_EMAIL_LENGTH}.")


class CreateCustomerSchema(Schema):
    """``create_customer`` input; unknown fields are rejected."""

    name = fields.String(
        required=True, validate=[validate.Length(min=1, max=200), NOT_BLANK, storable_text]
    )
    email = fields.Email(required=True, validate=[fits_once_lowercased, storable_text])

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
