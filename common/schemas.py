"""marshmallow helpers shared by the services' schemas."""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from marshmallow import Schema, fields, validate
from marshmallow import ValidationError as MarshmallowValidationError

from common.db import MAX_INT4
from common.errors import ValidationError

NOT_BLANK = validate.Regexp(r"\s*\S", error="Must not be blank.")


def storable_text(value: str) -> None:
    """PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a lone surrogate (JSON
    allows both, e.g. "\\u0000", "\\ud800"): reject them as invalid input, not a 500."""
    if "\x00" in value or any("\ud800" <= char <= "\udfff" for char in value):
        raise MarshmallowValidationError("Must not contain NUL characters or lone surrogates.")


def load(schema: Schema, data: object) -> dict[str, Any]:
    """Validate ``data`` with ``schema``; raise a 422 :class:`ValidationError` naming every
    bad field (``details`` maps field -> list of messages) instead of marshmallow's error."""
    if not isinstance(data, dict):
        raise ValidationError("the body must be a JSON object", {"_schema": ["Not an object."]})
    try:
        return schema.load(data)
    except MarshmallowValidationError as exc:
        raise ValidationError("the request is invalid", exc.normalized_messages()) from None


class RequestedLineSchema(Schema):
    """One requested line, ``{"id": product_id, "quantity": n}``: an element of an order's
    ``requested`` (the HTTP body's ``products``, the seed's name) and of
    ``products.reserve_stock``'s ``requested``."""

    id = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=MAX_INT4))
    quantity = fields.Integer(
        strict=True, required=True, validate=validate.Range(min=1, max=MAX_INT4)
    )


def merged_quantities_fit(requested: Iterable[Mapping[str, Any]]) -> None:
    """List validator: the quantities of lines with the same product id add up (see
    :func:`quantities_by_product`), and each sum must still fit the quantity column."""
    too_big = sorted(pid for pid, q in quantities_by_product(requested).items() if q > MAX_INT4)
    if too_big:
        raise MarshmallowValidationError(
            f"The quantities of product(s) {', '.join(map(str, too_big))} add up to more "
            f"than {MAX_INT4}."
        )


# The validators of a ``requested`` list: 1 to 100 lines, merged quantities that fit.
REQUESTED_LINES: list[Callable[[Any], Any]] = [
    validate.Length(min=1, max=100),
    merged_quantities_fit,
]


def quantities_by_product(requested: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """The ``quantities`` of requested lines: ``{product_id: total quantity}`` in ascending
    id order (duplicate ids add up)."""
    quantities: dict[int, int] = {}
    for line in requested:
        quantities[line["id"]] = quantities.get(line["id"], 0) + line["quantity"]
    return dict(sorted(quantities.items()))
