"""the reservation reads and writes each product row by its primary key, one row at a
time: its statements keep one cached plan per session instead of being planned per call

0004's ``shop_reserve_stock`` reached products through ``id = ANY(p_product_ids)`` and
joins with the unnested lines. Against a catalog of a few thousand rows, the generic plan
of such a statement is a sequential scan that costs more than a custom plan, so
PostgreSQL's plan cache (``plan_cache_mode = auto``) planned every one of its nine
statements again on every call: 1.1-1.5 ms of the database's CPU per reservation, the
largest single cost of an order in PostgreSQL (docs/BENCHMARKS.md, issue 24 step 4). Here
every statement that reads a table does it by ``id = <one id>`` or by ``order_ref``,
whose generic plan is the index scan its custom plan would be: each is planned once per
connection and then reused (285-350 us per reservation in a loop). The lines the answer carries
are built while the rows are locked rather than read back through ``shop_hold_lines``
(a SQL function, planned again on each call).

Same locks in the same order (product rows in ascending id order, then the hold), same
decisions in the same order (a replay, unknown products, shortages, the total), same
answers. Expand only: the same signature and results; a process of either release calls
it the same way.

Revision ID: 0005
Revises: 0004
"""

import os

from alembic import op

from common.migrations import revision_module

revision = "0005"
down_revision = "0004"
# docs/DEPLOY.md, "Migrations: expand, then contract": a function body replaced, same
# signature and results
PHASE = "expand"
branch_labels = None
depends_on = None

# Each product row locked and read by its primary key, in ascending id order (the lock
# order of products/stock.py); what the decisions need is kept in arrays, so the refusals
# and the writes touch no table but by key. A refusal writes nothing; every lock is
# released when the calling statement's transaction ends.
RESERVE = """
CREATE OR REPLACE FUNCTION shop_reserve_stock(
    p_order_ref text, p_product_ids integer[], p_quantities integer[], p_max_total numeric
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    line record;
    product record;
    hold_status text;
    locked_ids integer[] := '{}';
    locked_quantities integer[] := '{}';
    locked_prices numeric[] := '{}';
    line_numbers bigint[] := '{}';
    missing_ids integer[] := '{}';
    missing_numbers bigint[] := '{}';
    short_ids integer[] := '{}';
    short_numbers bigint[] := '{}';
    short_requested integer[] := '{}';
    short_available integer[] := '{}';
    hold_lines jsonb := '[]';
    order_total numeric := 0;
    units integer := 0;
BEGIN
    -- the product rows, one at a time by primary key, in ascending id order
    FOR line IN
        SELECT wanted.product_id, wanted.quantity, wanted.n
          FROM unnest(p_product_ids, p_quantities) WITH ORDINALITY AS wanted(product_id, quantity, n)
         ORDER BY wanted.product_id
    LOOP
        SELECT p.stock, p.price, p.name INTO product
          FROM products p WHERE p.id = line.product_id FOR UPDATE;
        IF NOT FOUND THEN
            missing_ids := missing_ids || line.product_id;
            missing_numbers := missing_numbers || line.n;
            CONTINUE;
        END IF;
        IF product.stock < line.quantity THEN
            short_ids := short_ids || line.product_id;
            short_numbers := short_numbers || line.n;
            short_requested := short_requested || line.quantity;
            short_available := short_available || product.stock;
        END IF;
        locked_ids := locked_ids || line.product_id;
        locked_quantities := locked_quantities || line.quantity;
        locked_prices := locked_prices || product.price;
        line_numbers := line_numbers || line.n;
        order_total := order_total + product.price * line.quantity;
        units := units + line.quantity;
        hold_lines := hold_lines || jsonb_build_object(
            'product_id', line.product_id, 'name', product.name,
            'quantity', line.quantity, 'unit_price', product.price::text);
    END LOOP;

    SELECT status INTO hold_status FROM order_holds WHERE order_ref = p_order_ref FOR UPDATE;
    IF FOUND THEN  -- a replay, or a fence: the first outcome, unchanged
        RETURN jsonb_build_object(
            'status', hold_status, 'lines', shop_hold_lines(p_order_ref), 'units', 0);
    END IF;
    IF cardinality(missing_ids) > 0 THEN
        RETURN jsonb_build_object('refused', 'product_not_found', 'product_ids',
            (SELECT jsonb_agg(m.id ORDER BY m.n) FROM unnest(missing_ids, missing_numbers) AS m(id, n)));
    END IF;
    IF cardinality(short_ids) > 0 THEN
        RETURN jsonb_build_object('refused', 'insufficient_stock', 'shortages',
            (SELECT jsonb_agg(jsonb_build_object(
                        'product_id', s.id, 'requested', s.requested, 'available', s.available)
                        ORDER BY s.n)
               FROM unnest(short_ids, short_numbers, short_requested, short_available)
                    AS s(id, n, requested, available)));
    END IF;
    IF order_total > p_max_total THEN
        RETURN jsonb_build_object('refused', 'order_total_too_large', 'total', order_total::text);
    END IF;

    INSERT INTO order_holds (order_ref, status) VALUES (p_order_ref, 'reserved');
    INSERT INTO reservations (order_ref, product_id, quantity, unit_price)
    SELECT p_order_ref, held.product_id, held.quantity, held.unit_price
      FROM unnest(locked_ids, locked_quantities, locked_prices, line_numbers)
           AS held(product_id, quantity, unit_price, n)
     ORDER BY held.n;
    FOR i IN 1 .. cardinality(locked_ids) LOOP
        UPDATE products SET stock = stock - locked_quantities[i] WHERE id = locked_ids[i];
    END LOOP;
    -- the lines as shop_hold_lines reads them back: by product id, unit prices as text
    RETURN jsonb_build_object('status', 'reserved', 'lines', hold_lines, 'units', units);
END
$$
"""


def upgrade() -> None:
    op.execute(RESERVE)


def downgrade() -> None:
    previous = revision_module(os.path.dirname(__file__), "0004_stock_functions_by_index.py")
    op.execute(previous.RESERVE)
