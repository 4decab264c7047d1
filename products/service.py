"""Products service: RPC contracts over the products database.

Prices travel as strings with two decimals (``"3.50"``), never floats.
"""
from nameko.dependency_providers import Config

from common.db import Database, database_errors_as_unavailable, is_valid_id
from common.pagination import keyset_page, page_params
from common.rpc import rpc
from common.schemas import load, merge_line_items
from products import stock
from products.exceptions import ProductNotFound
from products.models import Base, Product
from products.schemas import (
    CreateProductSchema, ProductSchema, ReservationSchema, ReserveStockSchema,
)

product_schema = ProductSchema()
reservation_schema = ReservationSchema()


class ProductsService:
    name = "products"

    db = Database(Base)
    config = Config()

    @rpc
    def ping(self):
        """Liveness probe: returns ``"pong"``; touches nothing."""
        return "pong"

    @rpc
    def create_product(self, payload):
        """Create a product from ``{"name", "price", "stock"}``.

        ``price``: string or number, >= 0, at most 2 decimals; ``stock``: integer >= 0.
        Returns the product. Raises ValidationError (422). Not idempotent.
        """
        data = load(CreateProductSchema(), payload)
        with database_errors_as_unavailable(), self.db.get_session() as session:
            product = Product(**data)
            session.add(product)
            session.flush()
            return product_schema.dump(product)

    @rpc
    def get_product(self, product_id):
        """The product with ``product_id``; raises ProductNotFound (404). Read-only."""
        if not is_valid_id(product_id):
            raise ProductNotFound.for_ids([product_id])
        with database_errors_as_unavailable():
            product = self.db.session.get(Product, product_id)
            if product is None:
                raise ProductNotFound.for_ids([product_id])
            return product_schema.dump(product)

    @rpc
    def list_products(self, limit=None, after=None):
        """One page of products in id order: ``{"items": [...], "next_after": id|None}``.

        ``limit`` defaults to PAGE_DEFAULT_LIMIT (max PAGE_MAX_LIMIT), ``after`` is the
        last id of the previous page. Raises ValidationError (422). Read-only.
        """
        limit, after = page_params(self.config, limit, after)
        with database_errors_as_unavailable():
            rows, next_after = keyset_page(self.db.session, Product, limit, after)
            return {"items": product_schema.dump(rows, many=True), "next_after": next_after}

    @rpc
    def reserve_stock(self, order_ref, items):
        """Take stock for every line of order ``order_ref``, all or nothing.

        ``items``: ``[{"id": product_id, "quantity": n}, ...]`` (duplicate ids add up).
        Returns ``{"order_ref", "status": "reserved", "lines": [{"product_id", "name",
        "quantity", "unit_price"}]}`` with each unit price as it was at that moment.
        Raises ValidationError (422), ProductNotFound (404), InsufficientStock (409),
        ServiceUnavailable (503, lock or database timeout). Nothing changes on an error.
        Idempotent on ``order_ref``: a replay returns the first reservation unchanged.
        """
        request = load(ReserveStockSchema(), {"order_ref": order_ref, "items": items})
        quantities = merge_line_items(request["items"])
        with database_errors_as_unavailable(), self.db.get_session() as session:
            reservation = stock.reserve(session, request["order_ref"], quantities)
            return reservation_schema.dump(reservation)

    @rpc
    def release_stock(self, order_ref):
        """Give back the stock reserved for ``order_ref``.

        Returns the reservation with ``"status": "released"``, or ``None`` if ``order_ref``
        never reserved anything. Raises ServiceUnavailable (503). Idempotent: releasing
        twice returns the stock once.
        """
        with database_errors_as_unavailable(), self.db.get_session() as session:
            reservation = stock.release(session, str(order_ref))
            return None if reservation is None else reservation_schema.dump(reservation)
