"""Tables of the orders database (shop_orders). Changed only through Alembic."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import DateTime, ForeignKey, Index, Integer, Numeric, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class OrderStatus:
    """``pending -> confirmed | rejected | failed``, and ``confirmed -> cancelling ->
    cancelled`` (the cancel saga of :mod:`orders.flow`)."""

    PENDING = "pending"  # outcome not known yet: recovery or a retry resolves it
    CONFIRMED = "confirmed"  # stock reserved, order recorded
    REJECTED = "rejected"  # refused for good: unknown customer/product, no stock
    FAILED = "failed"  # could not be completed; its stock (if any) was released
    # a cancel is under way: committed before products gives the stock back; a retry of
    # the cancel, or recovery, finishes it
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"  # was confirmed; its stock was given back


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The key of the stock reservation in the products service (one per order).
    order_ref: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))  # set when confirmed
    # What was asked: [{"id", "quantity"}], merged, in id order (to resume a pending order).
    requested: Mapped[list] = mapped_column(JSONB)
    # Why the order is not confirmed: the error envelope (its "error" code names the class
    # in common.errors), plus "status".
    failure: Mapped[dict | None] = mapped_column(JSONB)
    idempotency_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    lines: Mapped[list["OrderLine"]] = relationship(
        back_populates="order", lazy="selectin", order_by="OrderLine.product_id"
    )

    __table_args__ = (
        Index("ix_orders_pending", "updated_at", postgresql_where=text("status = 'pending'")),
        Index("ix_orders_cancelling", "updated_at", postgresql_where=text("status = 'cancelling'")),
    )
    __mapper_args__ = {"eager_defaults": True}


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    product_id: Mapped[int] = mapped_column(Integer)
    product_name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(12, 2))

    order: Mapped[Order] = relationship(back_populates="lines")


class KnownCustomer(Base):
    """Customers this service knows exist: a local, event-fed view (customers' event
    ``customer_created``), filled also by every successful RPC check. Customers are never
    deleted, so a row here saves the RPC to customers for good."""

    __tablename__ = "known_customers"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
