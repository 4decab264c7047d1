"""Tables of the products database (shop_products). Changed only through Alembic."""
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint, DateTime, ForeignKey, Integer, Numeric, String, UniqueConstraint, func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (
        CheckConstraint("stock >= 0", name="ck_products_stock_not_negative"),
        CheckConstraint("price >= 0", name="ck_products_price_not_negative"),
    )
    __mapper_args__ = {"eager_defaults": True}


class ReservationStatus:
    RESERVED = "reserved"
    RELEASED = "released"


class Reservation(Base):
    """Stock taken out for one line of one order. Keyed on ``(order_ref, product_id)``: a
    replayed reservation finds its rows instead of decrementing again."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_ref: Mapped[str] = mapped_column(String(64))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(MONEY)
    status: Mapped[str] = mapped_column(String(16), default=ReservationStatus.RESERVED)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("order_ref", "product_id", name="uq_reservations_order_product"),
        CheckConstraint("quantity > 0", name="ck_reservations_quantity_positive"),
    )
