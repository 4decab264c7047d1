"""order lifecycle: pending/rejected/failed/cancelled, idempotency keys, recovery index

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
# docs/DEPLOY.md, "Migrations: expand, then contract": orders.requested is NOT NULL without a
# default, so older code's INSERT fails (before the rule; now an expand would add it nullable
# and a contract of a later release make it NOT NULL)
PHASE = "contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("orders", "total", existing_type=sa.Numeric(14, 2), nullable=True)
    op.add_column("orders", sa.Column("requested", postgresql.JSONB(), nullable=True))
    op.execute(
        "UPDATE orders o SET requested = (SELECT jsonb_agg(jsonb_build_object("
        "'id', l.product_id, 'quantity', l.quantity) ORDER BY l.product_id) "
        "FROM order_lines l WHERE l.order_id = o.id)"
    )
    op.execute("UPDATE orders SET requested = '[]' WHERE requested IS NULL")
    op.alter_column("orders", "requested", nullable=False)
    op.add_column("orders", sa.Column("failure", postgresql.JSONB(), nullable=True))
    op.add_column("orders", sa.Column("idempotency_key", sa.String(length=100), nullable=True))
    op.add_column("orders", sa.Column("request_fingerprint", sa.String(length=64), nullable=True))
    op.add_column(
        "orders",
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )
    op.create_unique_constraint("orders_idempotency_key_key", "orders", ["idempotency_key"])
    op.create_index(
        "ix_orders_pending", "orders", ["updated_at"], postgresql_where=sa.text("status = 'pending'")
    )


def downgrade() -> None:
    op.drop_index("ix_orders_pending", "orders")
    op.drop_constraint("orders_idempotency_key_key", "orders")
    for column in ("updated_at", "request_fingerprint", "idempotency_key", "failure", "requested"):
        op.drop_column("orders", column)
    op.execute("DELETE FROM order_lines WHERE order_id IN (SELECT id FROM orders WHERE total IS NULL)")
    op.execute("DELETE FROM orders WHERE total IS NULL")
    op.alter_column("orders", "total", existing_type=sa.Numeric(14, 2), nullable=False)
