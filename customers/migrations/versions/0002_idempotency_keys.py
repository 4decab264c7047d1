"""idempotency keys on customers

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
# docs/DEPLOY.md, "Migrations: expand, then contract": nullable columns, unique: older code
# writes NULLs
PHASE = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("idempotency_key", sa.String(length=100), nullable=True))
    op.add_column("customers", sa.Column("request_fingerprint", sa.String(length=64), nullable=True))
    op.create_unique_constraint("uq_customers_idempotency_key", "customers", ["idempotency_key"])


def downgrade() -> None:
    op.drop_constraint("uq_customers_idempotency_key", "customers")
    op.drop_column("customers", "request_fingerprint")
    op.drop_column("customers", "idempotency_key")
