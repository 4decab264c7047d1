"""Products service: RPC contracts over the products database.

Prices travel as strings with two decimals (``"3.50"``), never floats.

Reads and writes are split (CQRS): ``get_product`` and ``list_products`` are answered
by the read replica when ``PRODUCTS_READ_DB_URI`` names one (:mod:`common.replica`), so
they may lag the primary by the replica's lag, except that a product the replica does
not have yet, and the last page of a list, are read on the primary: a product can be
read the moment it was created. Everything else (creation, every stock decision under
the row locks, ``get_reservation``, which orders' recovery decides on) uses the primary.
"""

import logging
from functools import partial
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from common.db import Database, database_errors_as_unavailable, is_valid_id
from common.idempotency import checked_key, ensure_same_request, fingerprint
from common.metrics import IDEMPOTENT_REPLAYS
from common.pagination import keyset_page, page_params
from common.rpc import BoundedRpcProxy, rpc
from common.schemas import load, quantities_by_product
from common.service import ShopService
from common.ticks import retried_at_next_tick
from common.timer import config_timer
from products import reconcile, stock
from products.exceptions import ProductNotFound
from products.models import Base, Product
from products.schemas import (
    CreateProductSchema,
    ProductSchema,
    ReservationSchema,
    ReserveStockSchema,
)

log = logging.getLogger(__name__)

# Schemas are built once: a marshmallow Schema() deep-copies its declared fields, which was
# a tenth of a reservation's CPU when done per call (docs/BENCHMARKS.md, issue 14).
product_schema = ProductSchema()
create_product_schema = CreateProductSchema()
reserve_stock_schema = ReserveStockSchema()
reservation_schema = ReservationSchema()


class ProductsService(ShopService):
    name = "products"

    db = Database(Base)
    orders = BoundedRpcProxy("orders")

    @rpc
    def create_product(
        self, payload: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Create a product from ``{"name", "price", "stock"}``.

        ``price``: string or number, >= 0, at most 2 decimals; ``stock``: integer >= 0.
        Returns the product. Raises ValidationError (422), InvalidIdempotencyKey (400),
        IdempotencyKeyReused (422). Idempotent when ``idempotency_key`` is given: a replay
        returns the product the first call created.
        """
        key = checked_key(idempotency_key)
        data = load(create_product_schema, payload)
        request = fingerprint(data)
        with database_errors_as_unavailable():
            try:
                with self.db.get_session() as session:
                    product = Product(**data, idempotency_key=key, request_fingerprint=request)
                    session.add(product)
                    session.flush()
                    return product_schema.dump(product)
            except IntegrityError:
                if key is None:
                    raise
            with self.db.get_session() as session:
                product = session.scalars(
                    select(Product).where(Product.idempotency_key == key)
                ).one()
                ensure_same_request(key, product.request_fingerprint, request)
                IDEMPOTENT_REPLAYS.labels(self.name).inc()
                return product_schema.dump(product)

    @rpc
    def get_product(self, product_id: int) -> dict[str, Any]:
        """The product with ``product_id``; raises ProductNotFound (404). Read-only.

        From the read replica when there is one (its ``stock`` may lag the primary's);
        an id the replica does not know is looked up on the primary before a 404."""
        if not is_valid_id(product_id):
            raise ProductNotFound.for_ids([product_id])
        product = self.db.read(partial(product_by_id, product_id), complete=found)
        if product is None:
            raise ProductNotFound.for_ids([product_id])
        return product

    @rpc
    def list_products(
        self, limit: int | str | None = None, after: int | str | None = None
    ) -> dict[str, Any]:
        """One page of products in id order: ``{"items": [...], "next_after": id|None}``.

        ``limit`` defaults to PAGE_DEFAULT_LIMIT (max PAGE_MAX_LIMIT), ``after`` is the
        last id of the previous page. Raises ValidationError (422). Read-only.

        From the read replica when there is one, except the last page (``next_after``
        None: where products created since the replica's last replay would be), which
        is read on the primary.
        """
        limit, after = page_params(self.config, limit, after)
        return self.db.read(partial(products_page, limit, after), complete=has_next_page)

    @rpc
    def reserve_stock(
        self,
        order_ref: str,
        requested: list[dict[str, Any]] | None = None,
        *,
        items: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Take stock for every line of order ``order_ref``, all or nothing.

        ``requested``: the order's requested lines, ``[{"id": product_id, "quantity": n},
        ...]`` (duplicate ids add up). ``items=`` is this argument's former keyword,
        still accepted from callers that name it (orders passes it by position).
        Returns ``{"order_ref", "status", "lines": [{"product_id", "name", "quantity",
        "unit_price"}]}`` with each unit price as it was at that moment. ``status`` is
        ``reserved`` on success; ``released`` if the order was released or fenced before
        (then nothing is held and the order must not be confirmed).
        Raises ValidationError (422), ProductNotFound (404), InsufficientStock (409),
        OrderTotalTooLarge (422, the total at current prices does not fit an order),
        ServiceUnavailable (503, lock or database timeout). Nothing changes on an error.
        Idempotent on ``order_ref``: a replay returns the first outcome unchanged.
        """
        if requested is None:
            requested = items
        request = load(reserve_stock_schema, {"order_ref": order_ref, "requested": requested})
        quantities = quantities_by_product(request["requested"])
        hold = stock.with_hold_retry(  # single_statements: a database failure is a 503
            self.db.single_statements, stock.reserve, request["order_ref"], quantities
        )
        return reservation_schema.dump(hold)

    @rpc
    def release_stock(self, order_ref: str) -> dict[str, Any]:
        """Give back the stock held for ``order_ref``; afterwards nothing can be reserved
        for it (a later ``reserve_stock`` returns ``status: released``).

        Returns the hold with ``"status": "released"``. Raises ServiceUnavailable (503).
        Idempotent: releasing twice returns the stock once.
        """
        hold = stock.with_hold_retry(self.db.single_statements, stock.release, str(order_ref))
        return reservation_schema.dump(hold)

    @rpc
    def get_reservation(self, order_ref: str) -> dict[str, Any] | None:
        """The hold of ``order_ref`` (as ``reserve_stock`` returns it), or ``None`` if it
        never reserved nor was released. Read-only."""
        with self.db.single_statements() as connection:  # one statement, no transaction
            hold = stock.hold_of(connection, str(order_ref))
        return None if hold is None else reservation_schema.dump(hold)

    @config_timer("HOLD_CHECK_INTERVAL")
    @retried_at_next_tick(log, "hold reconciliation")
    def reconcile_holds(self):
        """Settle the holds whose order is decided and give back stock held for orders that
        will never be confirmed (:mod:`products.reconcile`).

        Every ``reserved`` hold older than ``HOLD_CONFIRM_AGE`` seconds is checked with the
        orders service, ``HOLD_CHECK_BATCH`` at a time: confirmed orders' holds are marked
        confirmed (not checked again); holds of orders that are rejected, failed, cancelled
        or unknown (the orders transaction never committed) are released. Pending orders
        are left to the orders service's own recovery. Safe to run in every process at
        once: batches are taken ``FOR UPDATE SKIP LOCKED`` and every step is idempotent.
        Orders or the database unavailable: one warning, retried at the next tick.
        """
        reconcile.reconcile(
            partial(self.db.get_session, close_on_exit=True),
            self.orders.order_states,
            reconcile.Settings.from_config(self.config),
        )


# A product by id as a plain row, the statement built once: 0.53 ms of CPU per read here
# against 0.83 through Session.get and the ORM object (docs/BENCHMARKS.md, issue 14).
PRODUCT_BY_ID = select(
    Product.id, Product.name, Product.price, Product.stock, Product.created_at
).where(Product.id == bindparam("product_id"))


def product_by_id(product_id, session):
    """The product as a dict, or None."""
    row = session.connection().execute(PRODUCT_BY_ID, {"product_id": product_id}).first()
    return None if row is None else product_schema.dump(row._mapping)


def products_page(limit, after, session):
    rows, next_after = keyset_page(session, Product, limit, after)
    return {"items": product_schema.dump(rows, many=True), "next_after": next_after}


def found(product):
    """A replica's answer to ``product_by_id`` is final only if it found the product."""
    return product is not None


def has_next_page(page):
    """A replica's page is final only if rows follow it: the last page may lack
    products created since the replica's last replay."""
    return page["next_after"] is not None
