"""a new order's two statements as server-side functions: planned once per connection

A new order writes twice: the pending row (with the customer check and the in-flight
advisory lock, orders/service.py ``NewOrder.insert``), then its lines and outcome
(``NewOrder.record``). Sent as statements, PostgreSQL parsed and planned both on every
order (psycopg2 has no server-side prepared statements): 740-907 us of the database's
CPU for a new order's writes in a loop, 387-487 us as functions; in the running stack,
about 0.14 ms of the orders database's 1.1 ms per order (docs/BENCHMARKS.md, issue 24
step 4).
PL/pgSQL caches the plans of the statements inside a function for the life of the
connection; the statement sent is then only the call. As functions rather than
``PREPARE``, nothing lives in the session that a pooler could lose.

Same statements, same row, same locks, in the same transaction as before: the function
runs inside the caller's transaction, which the caller commits after the products RPC.

Expand only: new functions; a process of the previous release does not call them.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
# docs/DEPLOY.md, "Migrations: expand, then contract": new functions only
PHASE = "expand"
branch_labels = None
depends_on = None

# The order pending; ``known``: whether the local view knows the customer. The advisory
# lock marks the order in flight until the caller's transaction ends; its key is the one of
# orders/service.py ``IN_FLIGHT_LOCK`` (``lock_in_flight``, ``IN_FLIGHT``).
# A used idempotency key raises unique_violation, as the INSERT did.
INSERT_ORDER = """
CREATE OR REPLACE FUNCTION shop_insert_order(
    p_order_ref text, p_customer_id integer, p_status text, p_requested jsonb,
    p_idempotency_key text, p_request_fingerprint text,
    OUT id integer, OUT created_at timestamptz, OUT updated_at timestamptz, OUT known boolean
)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orders AS o
        (order_ref, customer_id, status, requested, idempotency_key, request_fingerprint)
    VALUES (p_order_ref, p_customer_id, p_status, p_requested, p_idempotency_key,
            p_request_fingerprint)
    RETURNING o.id, o.created_at, o.updated_at INTO id, created_at, updated_at;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_order_ref, 0));
    known := EXISTS (SELECT 1 FROM known_customers k WHERE k.id = p_customer_id);
END
$$
"""

# The outcome: the lines (none unless confirmed; one array element per line, in order)
# and the order's status, total and failure. Returns the new updated_at.
RECORD_ORDER = """
CREATE OR REPLACE FUNCTION shop_record_order(
    p_order_id integer, p_status text, p_total numeric, p_failure jsonb,
    p_product_ids integer[], p_product_names text[], p_quantities integer[],
    p_unit_prices numeric[]
) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    recorded_at timestamptz;
BEGIN
    INSERT INTO order_lines (order_id, product_id, product_name, quantity, unit_price)
    SELECT p_order_id, line.product_id, line.product_name, line.quantity, line.unit_price
      FROM unnest(p_product_ids, p_product_names, p_quantities, p_unit_prices)
           WITH ORDINALITY AS line(product_id, product_name, quantity, unit_price, n)
     ORDER BY line.n;
    UPDATE orders o SET status = p_status, total = p_total, failure = p_failure,
                        updated_at = now()
     WHERE o.id = p_order_id
    RETURNING o.updated_at INTO recorded_at;
    RETURN recorded_at;
END
$$
"""


def upgrade() -> None:
    op.execute(INSERT_ORDER)
    op.execute(RECORD_ORDER)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION shop_record_order(integer, text, numeric, jsonb, integer[], "
        "text[], integer[], numeric[])"
    )
    op.execute("DROP FUNCTION shop_insert_order(text, integer, text, jsonb, text, text)")
