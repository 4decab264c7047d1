"""Tables of the products database (shop_products). Changed only through Alembic."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MONEY = Numeric(12, 2)


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(MONEY)
    # Only ever changed under this row's lock (SELECT ... FOR UPDATE), see products.stock.
    stock: Mapped[int] = mapped_column(Integer)
    # Set when created with an Idempotency-Key: a retry returns this product.
    idempotency_key: Mapped[str | None] = mapped_column(String(100))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_products_idempotency_key"),
        CheckConstraint("stock >= 0", name="ck_products_stock_not_negative"),
        CheckConstraint("price >= 0", name="ck_products_price_not_negative"),
    )
    __mapper_args__ = {"eager_defaults": True}


class HoldStatus:
    RESERVED = "reserved"  # stock taken, order not known to be confirmed yet
    CONFIRMED = "confirmed"  # the orders service confirmed the order (products.reconcile)
    RELEASED = "released"  # stock given back, or a fence: nothing may be reserved


class OrderHold(Base):
    """The stock held for one order (``order_ref``), its lines in ``reservations``.

    Keyed on ``order_ref``: a replayed reservation finds it instead of decrementing
    again, and a hold created ``released`` with no lines is a fence that makes any later
    (stale, redelivered) reservation for that order a no-op.
    """

    __tablename__ = "order_holds"

    order_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Last change; for a ``reserved`` hold, when the reconciler last checked it (equal to
    # created_at until then): it is not checked again for HOLD_CONFIRM_AGE.
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    lines: Mapped[list["Reservation"]] = relationship(
        lazy="selectin", order_by="Reservation.product_id"
    )

    __table_args__ = (Index("ix_order_holds_status_created", "status", "created_at"),)


class Reservation(Base):
    """One line of a hold: ``quantity`` of ``product_id`` at ``unit_price``."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_ref: Mapped[str] = mapped_column(ForeignKey("order_holds.order_ref"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(MONEY)

    __table_args__ = (
        UniqueConstraint("order_ref", "product_id", name="uq_reservations_order_product"),
        CheckConstraint("quantity > 0", name="ck_reservations_quantity_positive"),
    )
