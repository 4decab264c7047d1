"""Tables of the customers database (shop_customers). Changed only through Alembic."""

from datetime import datetime

from sqlalchemy import DateTime, Index, String, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Stored lower-cased by the schema; unique, so a duplicate is a 409 even under races.
    email: Mapped[str] = mapped_column(String(254))
    # Set when created with an Idempotency-Key: a retry returns this customer.
    idempotency_key: Mapped[str | None] = mapped_column(String(100))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("uq_customers_email", "email", unique=True),
        UniqueConstraint("idempotency_key", name="uq_customers_idempotency_key"),
    )
    __mapper_args__ = {"eager_defaults": True}  # created_at comes back via RETURNING
