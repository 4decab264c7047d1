"""known_customers: the orders service's local view of which customers exist

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
# docs/DEPLOY.md, "Migrations: expand, then contract": a new table, filled from orders
PHASE = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "known_customers",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # Customers that already ordered are known to exist.
    op.execute("INSERT INTO known_customers (id) SELECT DISTINCT customer_id FROM orders "
               "WHERE status IN ('confirmed', 'cancelled') ON CONFLICT DO NOTHING")


def downgrade() -> None:
    op.drop_table("known_customers")
