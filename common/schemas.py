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


class LineItemSchema(Schema):
    """One order line on the wire between orders and products: ``{"id", "quantity"}``."""

    id = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=MAX_INT4))
    quantity = fields.Integer(
        strict=True, required=True, validate=validate.Range(min=1, max=MAX_INT4)
    )


def merged_quantities_fit(items: Iterable[Mapping[str, Any]]) -> None:
    """List validator: the quantities of lines with the same product id add up (see
    :func:`merge_line_items`), and each sum must still fit the quantity column."""
    too_big = sorted(pid for pid, q in merge_line_items(items).items() if q > MAX_INT4)
    if too_big:
        raise MarshmallowValidationError(
            f"The quantities of product(s) {', '.join(map(str, too_big))} add up to more "
            f"than {MAX_INT4}."
        )


LINE_ITEMS: list[Callable[[Any], Any]] = [validate.Length(min=1, max=100), merged_quantities_fit]


def merge_line_items(items: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """``{product_id: total quantity}`` in ascending id order (duplicate ids add up)."""
    quantities: dict[int, int] = {}
    for item in items:
        quantities[item["id"]] = quantities.get(item["id"], 0) + item["quantity"]
    return dict(sorted(quantities.items()))
