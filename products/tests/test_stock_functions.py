"""Products 0005 rewrote ``shop_reserve_stock`` to reach each product row by its primary
key (so its plans are cached per connection); its answers and its writes must be 0004's.
Both versions run here on the same rows, each in a transaction rolled back afterwards,
with the lines in an order that is not ascending: the refusals list their products in
the order they were asked for, the reservation its lines by product id."""

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from common.migrations import revision_module

VERSIONS = str(Path(__file__).resolve().parents[1] / "migrations" / "versions")


PREVIOUS = revision_module(VERSIONS, "0004_stock_functions_by_index.py").RESERVE.replace(
    "FUNCTION shop_reserve_stock(", "FUNCTION pg_temp.shop_reserve_stock_0004("
)
WRITES = text("""
    SELECT (SELECT jsonb_object_agg(id, stock) FROM products),
           (SELECT jsonb_agg(jsonb_build_array(order_ref, status)) FROM order_holds),
           (SELECT jsonb_agg(jsonb_build_array(order_ref, product_id, quantity,
                                               unit_price::text) ORDER BY id)
              FROM reservations)
""")


@pytest.fixture
def catalog(clean_databases):
    """Products a-e (stock 10, 1, 0, 5, 1000; prices 1.25, 4.00, 2.50, 0.10, 9e9), one
    order already held: ``(connection, ids)``, the connection a plain transaction."""
    with clean_databases["products"].connect() as conn:
        ids = conn.scalars(
            text(
                "INSERT INTO products (name, price, stock) VALUES "
                "('a', 1.25, 10), ('b', 4.00, 1), ('c', 2.50, 0), ('d', 0.10, 5), "
                "('e', 9999999999.99, 1000) RETURNING id"
            )
        ).all()
        conn.execute(text("SELECT shop_reserve_stock('held', :ids, '{2}', 1e9)"), {"ids": ids[:1]})
        conn.commit()
        conn.execute(text(PREVIOUS))
        conn.commit()
        yield conn, dict(zip("abcde", ids, strict=True))


def _lines(ids, spec):
    """``"d:2 a:3"`` -> ([id of d, id of a], [2, 3]); an unknown letter is an id no product has."""
    pairs = [item.split(":") for item in spec.split()]
    return [ids.get(name, 900000 + ord(name)) for name, _ in pairs], [int(q) for _, q in pairs]


@pytest.mark.parametrize(
    "order_ref, spec",
    [
        ("new", "d:2 a:3"),  # reserved, lines by product id
        ("new", "b:1"),  # the last unit
        ("held", "a:2"),  # a replay: the first outcome
        ("held", "z:1 a:2"),  # a replay, whatever is asked
        ("new", "y:1 a:1 x:1"),  # unknown products, in the order asked
        ("new", "d:9 a:1 c:1 b:2"),  # shortages, in the order asked
        ("new", "x:1 c:1"),  # unknown before short
        ("new", "e:101 a:1"),  # the total
        ("new", "e:100 a:1"),  # a total that fits
    ],
)
def test_the_reservation_answers_and_writes_as_0004_did(catalog, order_ref, spec):
    conn, ids = catalog
    product_ids, quantities = _lines(ids, spec)
    outcomes = []
    for function in ("pg_temp.shop_reserve_stock_0004", "shop_reserve_stock"):
        answer = conn.scalar(
            text(f"SELECT {function}(:ref, :ids, :quantities, :max_total)"),
            {
                "ref": order_ref,
                "ids": product_ids,
                "quantities": quantities,
                "max_total": Decimal("999999999999.99"),
            },
        )
        outcomes.append((answer, tuple(conn.execute(WRITES).one())))
        conn.rollback()
    assert outcomes[1] == outcomes[0]
