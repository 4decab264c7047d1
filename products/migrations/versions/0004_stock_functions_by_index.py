"""the stock functions reach products by primary key only: no sequential scan of the
catalog per order

0003's functions joined products to a set of reservations or to unnested arrays. Planned
generically (PL/pgSQL and SQL functions cache their plans), with an estimate of 150
reservations per order_ref, PostgreSQL hash-joined a sequential scan of the whole catalog:
one per reservation, three per release, each reading every product (4,800 rows in
`make bench`'s catalog; the seed's 100,000 would make it the cost of an order). Here every
products access is by ``id = ANY(array)`` or a correlated lookup by id, which only an
index scan answers.

Expand only: the same functions, signatures and results; a process of either release
calls them the same way.

Revision ID: 0004
Revises: 0003
"""

import os

from alembic import op

from common.migrations import revision_module

revision = "0004"
down_revision = "0003"
# docs/DEPLOY.md, "Migrations: expand, then contract": function bodies replaced, same
# signatures and results
PHASE = "expand"
branch_labels = None
depends_on = None

HOLD_LINES = """
CREATE OR REPLACE FUNCTION shop_hold_lines(p_order_ref text) RETURNS jsonb
LANGUAGE sql AS $$
    -- the hold's lines, by product id; unit prices as text (exact decimals); each name
    -- looked up by id (a join let a generic plan scan the whole catalog)
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'product_id', r.product_id,
               'name', (SELECT p.name FROM products p WHERE p.id = r.product_id),
               'quantity', r.quantity, 'unit_price', r.unit_price::text)
               ORDER BY r.product_id), '[]'::jsonb)
    FROM reservations r
    WHERE r.order_ref = p_order_ref
$$
"""

# Locks as 0003: the product rows first, in ascending id order, then the hold. Every join
# with products also filters on p.id = ANY(the ids): an index condition the planner
# estimates at a handful of rows, whatever it guesses for the other side.
RESERVE = """
CREATE OR REPLACE FUNCTION shop_reserve_stock(
    p_order_ref text, p_product_ids integer[], p_quantities integer[], p_max_total numeric
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    hold_status text;
    found_ids integer[];
    shortages jsonb;
    order_total numeric;
BEGIN
    PERFORM 1 FROM products WHERE id = ANY(p_product_ids) ORDER BY id FOR UPDATE;
    SELECT status INTO hold_status FROM order_holds WHERE order_ref = p_order_ref FOR UPDATE;
    IF FOUND THEN  -- a replay, or a fence: the first outcome, unchanged
        RETURN jsonb_build_object(
            'status', hold_status, 'lines', shop_hold_lines(p_order_ref), 'units', 0);
    END IF;

    SELECT array_agg(id) INTO found_ids FROM products WHERE id = ANY(p_product_ids);
    IF coalesce(cardinality(found_ids), 0) < cardinality(p_product_ids) THEN
        RETURN jsonb_build_object('refused', 'product_not_found', 'product_ids',
            (SELECT jsonb_agg(wanted.id ORDER BY wanted.n)
             FROM unnest(p_product_ids) WITH ORDINALITY AS wanted(id, n)
             WHERE wanted.id <> ALL(coalesce(found_ids, '{}'))));
    END IF;

    SELECT jsonb_agg(jsonb_build_object(
               'product_id', p.id, 'requested', line.quantity, 'available', p.stock)
               ORDER BY line.n)
      INTO shortages
      FROM unnest(p_product_ids, p_quantities) WITH ORDINALITY AS line(product_id, quantity, n)
      JOIN products p ON p.id = line.product_id AND p.id = ANY(p_product_ids)
     WHERE p.stock < line.quantity;
    IF shortages IS NOT NULL THEN
        RETURN jsonb_build_object('refused', 'insufficient_stock', 'shortages', shortages);
    END IF;

    SELECT sum(p.price * line.quantity) INTO order_total
      FROM unnest(p_product_ids, p_quantities) AS line(product_id, quantity)
      JOIN products p ON p.id = line.product_id AND p.id = ANY(p_product_ids);
    IF order_total > p_max_total THEN
        RETURN jsonb_build_object('refused', 'order_total_too_large', 'total', order_total::text);
    END IF;

    INSERT INTO order_holds (order_ref, status) VALUES (p_order_ref, 'reserved');
    INSERT INTO reservations (order_ref, product_id, quantity, unit_price)
    SELECT p_order_ref, line.product_id, line.quantity, p.price
      FROM unnest(p_product_ids, p_quantities) WITH ORDINALITY AS line(product_id, quantity, n)
      JOIN products p ON p.id = line.product_id AND p.id = ANY(p_product_ids)
     ORDER BY line.n;
    UPDATE products p SET stock = p.stock - line.quantity
      FROM unnest(p_product_ids, p_quantities) AS line(product_id, quantity)
     WHERE p.id = line.product_id AND p.id = ANY(p_product_ids);
    RETURN jsonb_build_object(
        'status', 'reserved', 'lines', shop_hold_lines(p_order_ref),
        'units', (SELECT sum(q) FROM unnest(p_quantities) q));
END
$$
"""

RELEASE = """
CREATE OR REPLACE FUNCTION shop_release_stock(p_order_ref text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    hold_status text;
    held_ids integer[];
    units integer := 0;
BEGIN
    held_ids := ARRAY(SELECT product_id FROM reservations WHERE order_ref = p_order_ref);
    PERFORM 1 FROM products WHERE id = ANY(held_ids) ORDER BY id FOR UPDATE;
    SELECT status INTO hold_status FROM order_holds WHERE order_ref = p_order_ref FOR UPDATE;
    IF NOT FOUND THEN  -- a fence: no reservation for this order can happen any more
        INSERT INTO order_holds (order_ref, status) VALUES (p_order_ref, 'released');
    ELSIF hold_status <> 'released' THEN
        -- read again under the hold's lock: a reservation committed since the first read
        -- (the lock waited for it) is in it now, as 0003's UPDATE saw it
        held_ids := ARRAY(SELECT product_id FROM reservations WHERE order_ref = p_order_ref);
        UPDATE products p SET stock = p.stock + r.quantity
          FROM reservations r
         WHERE r.order_ref = p_order_ref AND p.id = r.product_id AND p.id = ANY(held_ids);
        SELECT coalesce(sum(quantity), 0) INTO units
          FROM reservations WHERE order_ref = p_order_ref;
        UPDATE order_holds SET status = 'released', updated_at = now()
         WHERE order_ref = p_order_ref;
    END IF;
    RETURN jsonb_build_object(
        'status', 'released', 'lines', shop_hold_lines(p_order_ref), 'units', units);
END
$$
"""


def upgrade() -> None:
    op.execute(HOLD_LINES)
    op.execute(RESERVE)
    op.execute(RELEASE)


def downgrade() -> None:
    previous = revision_module(os.path.dirname(__file__), "0003_stock_functions.py")
    op.execute(previous.HOLD_LINES)
    op.execute(previous.RESERVE)
    op.execute(previous.RELEASE)
