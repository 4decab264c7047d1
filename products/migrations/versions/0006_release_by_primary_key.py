"""the release, and the lines of a hold, planned once per connection, as 0005 did for the
reservation

0004's ``shop_release_stock`` locked and updated products through ``id = ANY(held_ids)``
and a join with the reservations, and ``shop_hold_lines`` was a SQL function: planned
again on every call, the first because its generic plan looks dearer than a custom one
on a small catalog, the second because PostgreSQL 15 does not keep the plans of a SQL
function between calls (docs/BENCHMARKS.md, issue 24 step 4). A release is a cancel, a
compensation or the reconciler's; the lines are also read by every replay and by
``get_reservation``. Here the release locks and updates each product row by its primary
key, and ``shop_hold_lines`` is PL/pgSQL: each statement is planned once per connection.

Same locks in the same order (the held product rows in ascending id order, then the
hold), same reading again under the hold's lock, same answers. Expand only: the same
signatures and results.

Revision ID: 0006
Revises: 0005
"""

import os

from alembic import op

from common.migrations import revision_module

revision = "0006"
down_revision = "0005"
# docs/DEPLOY.md, "Migrations: expand, then contract": function bodies replaced, same
# signatures and results
PHASE = "expand"
branch_labels = None
depends_on = None

HOLD_LINES = """
CREATE OR REPLACE FUNCTION shop_hold_lines(p_order_ref text) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    -- the hold's lines, by product id; unit prices as text (exact decimals); each name
    -- looked up by id
    RETURN (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'product_id', r.product_id,
                   'name', (SELECT p.name FROM products p WHERE p.id = r.product_id),
                   'quantity', r.quantity, 'unit_price', r.unit_price::text)
                   ORDER BY r.product_id), '[]'::jsonb)
        FROM reservations r
        WHERE r.order_ref = p_order_ref);
END
$$
"""

RELEASE = """
CREATE OR REPLACE FUNCTION shop_release_stock(p_order_ref text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    held record;
    hold_status text;
    units integer := 0;
BEGIN
    -- the held product rows, one at a time by primary key, in ascending id order
    FOR held IN
        SELECT r.product_id FROM reservations r WHERE r.order_ref = p_order_ref
         ORDER BY r.product_id
    LOOP
        PERFORM 1 FROM products p WHERE p.id = held.product_id FOR UPDATE;
    END LOOP;
    SELECT status INTO hold_status FROM order_holds WHERE order_ref = p_order_ref FOR UPDATE;
    IF NOT FOUND THEN  -- a fence: no reservation for this order can happen any more
        INSERT INTO order_holds (order_ref, status) VALUES (p_order_ref, 'released');
    ELSIF hold_status <> 'released' THEN
        -- read again under the hold's lock: a reservation committed since the first read
        -- (the lock waited for it) is in it now
        FOR held IN
            SELECT r.product_id, r.quantity FROM reservations r
             WHERE r.order_ref = p_order_ref ORDER BY r.product_id
        LOOP
            UPDATE products p SET stock = p.stock + held.quantity WHERE p.id = held.product_id;
            units := units + held.quantity;
        END LOOP;
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
    op.execute(RELEASE)


def downgrade() -> None:
    previous = revision_module(os.path.dirname(__file__), "0004_stock_functions_by_index.py")
    op.execute(previous.HOLD_LINES)
    op.execute(previous.RELEASE)
