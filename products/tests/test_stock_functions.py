"""The stock functions as rewritten to be planned once per connection (products 0005:
the reservation; 0006: the release and a hold's lines) must answer and write as 0004's
did. Both versions run here on the same rows, each side in a transaction rolled back
afterwards; lines are asked for in an order that is not ascending: the refusals list
their products in the order asked, a hold its lines by product id."""

import re
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from common.migrations import revision_module

VERSIONS = str(Path(__file__).resolve().parents[1] / "migrations" / "versions")
# each kind of step: its function and its arguments
CALLS = {
    "reserve": ("shop_reserve_stock", "(:ref, :ids, :quantities, :max_total)"),
    "release": ("shop_release_stock", "(:ref)"),
    "lines": ("shop_hold_lines", "(:ref)"),
}
FUNCTIONS = [function for function, _ in CALLS.values()]


def _as_0004(sql):
    """0004's function definitions and calls, renamed ``pg_temp.<name>_0004``: the
    previous release's functions, beside the current ones, for this connection only."""
    return re.sub(rf"\b({'|'.join(FUNCTIONS)})\(", r"pg_temp.\1_0004(", sql)


PREVIOUS = revision_module(VERSIONS, "0004_stock_functions_by_index.py")
PREVIOUS_FUNCTIONS = [
    _as_0004(PREVIOUS.HOLD_LINES),
    _as_0004(PREVIOUS.RESERVE),
    _as_0004(PREVIOUS.RELEASE),
]
WRITES = text("""
    SELECT (SELECT jsonb_object_agg(id, stock) FROM products),
           (SELECT jsonb_agg(jsonb_build_array(order_ref, status) ORDER BY order_ref)
              FROM order_holds),
           (SELECT jsonb_agg(jsonb_build_array(order_ref, product_id, quantity,
                                               unit_price::text) ORDER BY id)
              FROM reservations)
""")


@pytest.fixture
def catalog(clean_databases):
    """Products a-e (stock 10, 1, 0, 5, 1000; prices 1.25, 4.00, 2.50, 0.10, 9e9) and
    three holds: ``held`` (a x2), ``held-2`` (d x3, a x1) and ``confirmed`` (b x1, its
    hold confirmed). ``(connection, ids by letter)``, the connection a plain transaction."""
    with clean_databases["products"].connect() as conn:
        ids = conn.scalars(
            text(
                "INSERT INTO products (name, price, stock) VALUES "
                "('a', 1.25, 10), ('b', 4.00, 1), ('c', 2.50, 0), ('d', 0.10, 5), "
                "('e', 9999999999.99, 1000) RETURNING id"
            )
        ).all()
        by_letter = dict(zip("abcde", ids, strict=True))
        for ref, spec in (("held", "a:2"), ("held-2", "d:3 a:1"), ("confirmed", "b:1")):
            product_ids, quantities = _lines(by_letter, spec)
            conn.execute(
                text("SELECT shop_reserve_stock(:ref, :ids, :quantities, 1e9)"),
                {"ref": ref, "ids": product_ids, "quantities": quantities},
            )
        conn.execute(
            text("UPDATE order_holds SET status = 'confirmed' WHERE order_ref = 'confirmed'")
        )
        conn.commit()
        for definition in PREVIOUS_FUNCTIONS:
            conn.execute(text(definition))
        conn.commit()
        yield conn, by_letter


def _lines(ids, spec):
    """``"d:2 a:3"`` -> ([id of d, id of a], [2, 3]); an unknown letter is an id no product has."""
    pairs = [item.split(":") for item in spec.split()]
    return [ids.get(name, 900000 + ord(name)) for name, _ in pairs], [int(q) for _, q in pairs]


@pytest.mark.parametrize(
    "steps",
    [
        [("reserve", "new", "d:2 a:3")],  # reserved, lines by product id
        [("reserve", "new", "b:1")],  # the last unit
        [("reserve", "held", "a:2")],  # a replay: the first outcome
        [("reserve", "held-2", "z:1 a:2")],  # a replay, whatever is asked
        [("reserve", "new", "y:1 a:1 x:1")],  # unknown products, in the order asked
        [("reserve", "new", "d:9 a:1 c:1 b:2")],  # shortages, in the order asked
        [("reserve", "new", "x:1 c:1")],  # unknown before short
        [("reserve", "new", "e:101 a:1")],  # the total
        [("reserve", "new", "e:100 a:1")],  # a total that fits
        [("release", "held-2", ""), ("release", "held-2", "")],  # given back once
        [("release", "confirmed", "")],  # a confirmed hold (a cancel)
        [("release", "new", ""), ("reserve", "new", "a:1")],  # a fence, then too late
        [("reserve", "new", "d:1 b:1"), ("release", "new", ""), ("lines", "new", "")],
        [("lines", "held-2", ""), ("lines", "nothing", "")],
    ],
)
def test_the_stock_functions_answer_and_write_as_0004_did(catalog, steps):
    conn, ids = catalog
    outcomes = []
    for suffix, schema in (("_0004", "pg_temp."), ("", "")):
        answers = []
        for kind, order_ref, spec in steps:
            product_ids, quantities = _lines(ids, spec)
            function, arguments = CALLS[kind]
            answers.append(
                conn.scalar(
                    text(f"SELECT {schema}{function}{suffix}{arguments}"),
                    {
                        "ref": order_ref,
                        "ids": product_ids,
                        "quantities": quantities,
                        "max_total": Decimal("999999999999.99"),
                    },
                )
            )
        outcomes.append((answers, tuple(conn.execute(WRITES).one())))
        conn.rollback()
    assert outcomes[1] == outcomes[0]
