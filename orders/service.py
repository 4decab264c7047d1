"""Orders service: the order flow over the customers and products services.

``create_order`` is a small saga:

1. check the customer exists (``customers.get_customer``);
2. reserve every line's stock in one products transaction (``products.reserve_stock``,
   keyed on a fresh ``order_ref``, which returns each unit price as it was then);
3. record the order and its lines in the orders database.

If step 3 fails, or step 2 fails without a definite answer (timeout, broker trouble), the
reservation is released (``products.release_stock`` is idempotent and a no-op for an
``order_ref`` that reserved nothing), so no stock stays held without an order.
"""
import logging
import uuid
from decimal import Decimal

from nameko.dependency_providers import Config

from common.db import Database, database_errors_as_unavailable, is_valid_id
from common.errors import Conflict, NotFound, ValidationError
from common.rpc import BoundedRpcProxy, rpc
from common.schemas import load, merge_line_items
from orders.exceptions import OrderNotFound
from orders.models import Base, Order, OrderLine, OrderStatus
from orders.schemas import CreateOrderSchema, OrderSchema

log = logging.getLogger(__name__)

order_schema = OrderSchema()

# Answers from products that say for sure that nothing was reserved.
DEFINITE_REFUSALS = (ValidationError, NotFound, Conflict)


class OrdersService:
    name = "orders"

    db = Database(Base)
    config = Config()
    customers = BoundedRpcProxy("customers")
    products = BoundedRpcProxy("products")

    @rpc
    def ping(self):
        """Liveness probe: returns ``"pong"``; touches nothing."""
        return "pong"

    @rpc
    def create_order(self, payload):
        """Place an order from ``{"customer_id", "products": [{"id", "quantity"}]}``.

        Returns the confirmed order: ``{"id", "customer_id", "status", "total", "lines":
        [{"product_id", "name", "quantity", "unit_price"}], "created_at"}``.
        Raises ValidationError (422), CustomerNotFound / ProductNotFound (404),
        InsufficientStock (409, naming each short product, requested and available),
        ServiceUnavailable (503) or GatewayTimeout (504). On any error no order is stored
        and no stock stays reserved. Not idempotent across calls (each call is a new order).
        """
        data = load(CreateOrderSchema(), payload)
        quantities = merge_line_items(data["products"])
        self.customers.get_customer(data["customer_id"])

        order_ref = uuid.uuid4().hex
        items = [{"id": product_id, "quantity": qty} for product_id, qty in quantities.items()]
        try:
            reservation = self.products.reserve_stock(order_ref, items)
        except DEFINITE_REFUSALS:
            raise
        except Exception:
            self._release_quietly(order_ref)
            raise

        try:
            return self._record_order(order_ref, data["customer_id"], reservation["lines"])
        except Exception:
            self._release_quietly(order_ref)
            raise

    @rpc
    def get_order(self, order_id):
        """The order with ``order_id`` and its lines; raises OrderNotFound (404). Read-only."""
        if not is_valid_id(order_id):
            raise OrderNotFound.for_id(order_id)
        with database_errors_as_unavailable():
            order = self.db.session.get(Order, order_id)
            if order is None:
                raise OrderNotFound.for_id(order_id)
            return order_schema.dump(order)

    def _record_order(self, order_ref, customer_id, reserved_lines):
        lines = [
            OrderLine(
                product_id=line["product_id"],
                product_name=line["name"],
                quantity=line["quantity"],
                unit_price=Decimal(line["unit_price"]),
            )
            for line in reserved_lines
        ]
        order = Order(
            order_ref=order_ref,
            customer_id=customer_id,
            status=OrderStatus.CONFIRMED,
            total=sum((line.unit_price * line.quantity for line in lines), Decimal("0")),
            lines=lines,
        )
        with database_errors_as_unavailable(), self.db.get_session() as session:
            session.add(order)
            session.flush()
            return order_schema.dump(order)

    def _release_quietly(self, order_ref):
        """Compensate a failed order; a failure here is logged, the original error wins."""
        try:
            self.products.release_stock(order_ref)
        except Exception:
            log.exception("could not release the stock of order_ref %s", order_ref)
