"""stock reserved and released by server-side functions: one statement, no lock held
across a client round trip (products/stock.py)

Expand only: the functions are new, no table changes; a process of the previous release
keeps working against this schema (it does not call them).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
# docs/DEPLOY.md, "Migrations: expand, then contract": new functions only
PHASE = "expand"
branch_labels = None
depends_on = None

HOLD_LINES = """
CREATE OR REPLACE FUNCTION shop_hold_lines(p_order_ref text) RETURNS jsonb
LANGUAGE sql AS $$
    -- the hold's lines, by product id; unit prices as text (exact decimals)
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'product_id', r.product_id, 'name', p.name, 'quantity', r.quantity,
               'unit_price', r.unit_price::text) ORDER BY r.product_id), '[]'::jsonb)
    FROM reservations r LEFT JOIN products p ON p.id = r.product_id
    WHERE r.order_ref = p_order_ref
$$
"""

# Locks: the product rows first, in ascending id order, then the hold: the lock order of
# products/stock.py, shared with shop_release_stock. Every lock is released when the
# statement that called the function ends (it runs in autocommit).
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
      JOIN products p ON p.id = line.product_id
     WHERE p.stock < line.quantity;
    IF shortages IS NOT NULL THEN
        RETURN jsonb_build_object('refused', 'insufficient_stock', 'shortages', shortages);
    END IF;

    SELECT sum(p.price * line.quantity) INTO order_total
      FROM unnest(p_product_ids, p_quantities) AS line(product_id, quantity)
      JOIN products p ON p.id = line.product_id;
    IF order_total > p_max_total THEN
        RETURN jsonb_build_object('refused', 'order_total_too_large', 'total', order_total::text);
    END IF;

    INSERT INTO order_holds (order_ref, status) VALUES (p_order_ref, 'reserved');
    INSERT INTO reservations (order_ref, product_id, quantity, unit_price)
    SELECT p_order_ref, line.product_id, line.quantity, p.price
      FROM unnest(p_product_ids, p_quantities) WITH ORDINALITY AS line(product_id, quantity, n)
      JOIN products p ON p.id = line.product_id
     ORDER BY line.n;
    UPDATE products p SET stock = p.stock - line.quantity
      FROM unnest(p_product_ids, p_quantities) AS line(product_id, quantity)
     WHERE p.id = line.product_id;
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
    units integer := 0;
BEGIN
    PERFORM 1 FROM products
     WHERE id IN (SELECT product_id FROM reservations WHERE order_ref = p_order_ref)
     ORDER BY id FOR UPDATE;
    SELECT status INTO hold_status FROM order_holds WHERE order_ref = p_order_ref FOR UPDATE;
    IF NOT FOUND THEN  -- a fence: no reservation for this order can happen any more
        INSERT INTO order_holds (order_ref, status) VALUES (p_order_ref, 'released');
    ELSIF hold_status <> 'released' THEN
        UPDATE products p SET stock = p.stock + r.quantity
          FROM reservations r
         WHERE r.order_ref = p_order_ref AND p.id = r.product_id;
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
    op.execute("DROP FUNCTION shop_release_stock(text)")
    op.execute("DROP FUNCTION shop_reserve_stock(text, integer[], integer[], numeric)")
    op.execute("DROP FUNCTION shop_hold_lines(text)")
