"""Keyset pagination on the primary key, shared by every list RPC.

A page is ``limit`` rows with ``id > after`` in id order; the caller gets the rows and the
cursor of the next page (``None`` on the last one). Cost is one index range scan whatever
the page number, unlike OFFSET.

A page can also be cut by a budget (:func:`budget_page`): the orders list counts lines, so
what one request makes a process load, hold and serialize is bounded whatever ``limit``.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from marshmallow import Schema, fields, validate
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from common.db import MAX_INT4
from common.errors import ValidationError
from common.schemas import load
from common.settings import settings_of


class PageSchema(Schema):
    limit = fields.Integer(load_default=None, validate=validate.Range(min=1))
    after = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_INT4))


PAGE_SCHEMA = PageSchema()  # built once: a Schema() deep-copies its fields


def page_params(config: Mapping[str, Any], limit: Any = None, after: Any = None) -> tuple[int, int]:
    """Validated ``(limit, after)``; ``limit`` defaults to ``PAGE_DEFAULT_LIMIT`` and may
    not exceed ``PAGE_MAX_LIMIT`` (:mod:`common.settings`). Strings such as ``"10"`` are accepted."""
    raw = {key: value for key, value in (("limit", limit), ("after", after)) if value is not None}
    settings = settings_of(config)
    max_limit = settings.page_max_limit
    params = load(PAGE_SCHEMA, raw)
    if params["limit"] is not None and params["limit"] > max_limit:
        raise ValidationError(
            f"limit may not exceed {max_limit}", {"limit": [f"Must be at most {max_limit}."]}
        )
    if params["limit"] is None:
        params["limit"] = min(settings.page_default_limit, max_limit)
    return params["limit"], params["after"]


def keyset_page(
    session: Session, model: Any, limit: int, after: int, *criteria: ColumnElement[bool]
) -> tuple[Sequence[Any], int | None]:
    """``(rows, next_after)`` for one page of ``model`` filtered by ``criteria``."""
    rows = session.scalars(
        select(model).where(model.id > after, *criteria).order_by(model.id).limit(limit + 1)
    ).all()
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].id
    return rows, None


def budget_page(
    weighted: Sequence[tuple[int, int]], limit: int, budget: int
) -> tuple[list[int], int | None]:
    """Cut one page of candidates ``[(id, weight), ...]`` (in id order, ``limit + 1`` at
    most, as a keyset query with ``LIMIT limit + 1`` gives them) to at most ``limit`` rows
    and at most ``budget`` in total weight: ``(ids kept, next_after)``.

    The first row is always kept, whatever its weight, so a page is never empty while
    rows remain. ``next_after`` is the last kept id when any candidate was left out (by
    the limit or by the budget), else ``None``: the next page starts right after it."""
    kept = [row_id for row_id, _ in weighted[: _fitting(weighted, limit, budget)]]
    return kept, kept[-1] if len(kept) < len(weighted) else None


def budget_batches(weighted: Sequence[tuple[int, int]], budget: int) -> Iterator[list[int]]:
    """The ids of ``[(id, weight), ...]`` in consecutive batches of at most ``budget`` in
    total weight (a row weighing more comes alone)."""
    while weighted:
        count = _fitting(weighted, len(weighted), budget)
        yield [row_id for row_id, _ in weighted[:count]]
        weighted = weighted[count:]


def _fitting(weighted, limit, budget):
    """How many leading rows of ``weighted`` fit in ``limit`` rows and ``budget`` (at
    least one, if any)."""
    count, spent = 0, 0
    for _, weight in weighted:
        if count == limit or (count and spent + weight > budget):
            break
        count += 1
        spent += weight
    return count
