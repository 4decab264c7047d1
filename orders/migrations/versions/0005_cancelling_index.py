"""ix_orders_cancelling: the recovery of interrupted cancels finds them by index

A cancel first commits its order ``cancelling`` (orders/flow.py, the cancel saga); the
recovery timer looks for the ``cancelling`` orders untouched for ``RECOVERY_AGE``. A
partial index on ``updated_at WHERE status = 'cancelling'`` (as ix_orders_pending for
pending orders) keeps that query off a scan of the whole table at every tick.

Built ``CONCURRENTLY``, outside the migration's transaction (Alembic's autocommit block
commits the revisions before it first): orders keep being written while it builds. If
the build is interrupted, PostgreSQL leaves an INVALID index of that name: drop it
(``DROP INDEX CONCURRENTLY ix_orders_cancelling``) and migrate again.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
# docs/DEPLOY.md, "Migrations: expand, then contract": a new index only
PHASE = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_orders_cancelling",
            "orders",
            ["updated_at"],
            postgresql_where=sa.text("status = 'cancelling'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_orders_cancelling", "orders", postgresql_concurrently=True)
