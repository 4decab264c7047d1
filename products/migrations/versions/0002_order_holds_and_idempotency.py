"""order holds (one per order_ref, fences included) and idempotency keys on products

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
# docs/DEPLOY.md, "Migrations: expand, then contract": drops three columns of reservations
# that older code reads (before the rule)
PHASE = "contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "order_holds",
        sa.Column("order_ref", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("order_ref"),
    )
    op.create_index("ix_order_holds_status_created", "order_holds", ["status", "created_at"])
    # Existing reservation lines get their hold: released if every line was released.
    op.execute(
        "INSERT INTO order_holds (order_ref, status, created_at) "
        "SELECT order_ref, CASE WHEN bool_and(status = 'released') THEN 'released' "
        "ELSE 'reserved' END, min(created_at) FROM reservations GROUP BY order_ref"
    )
    op.create_foreign_key(
        "fk_reservations_order_ref", "reservations", "order_holds", ["order_ref"], ["order_ref"]
    )
    op.drop_column("reservations", "status")
    op.drop_column("reservations", "released_at")
    op.drop_column("reservations", "created_at")
    op.add_column("products", sa.Column("idempotency_key", sa.String(length=100), nullable=True))
    op.add_column("products", sa.Column("request_fingerprint", sa.String(length=64), nullable=True))
    op.create_unique_constraint("uq_products_idempotency_key", "products", ["idempotency_key"])


def downgrade() -> None:
    op.drop_constraint("uq_products_idempotency_key", "products")
    op.drop_column("products", "request_fingerprint")
    op.drop_column("products", "idempotency_key")
    op.add_column("reservations", sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False))
    op.add_column("reservations", sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("reservations", sa.Column("status", sa.String(length=16), nullable=False, server_default="reserved"))
    op.execute(
        "UPDATE reservations r SET status = 'released' FROM order_holds h "
        "WHERE h.order_ref = r.order_ref AND h.status = 'released'"
    )
    op.drop_constraint("fk_reservations_order_ref", "reservations")
    op.drop_index("ix_order_holds_status_created", "order_holds")
    op.drop_table("order_holds")
