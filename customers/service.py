"""Customers service: RPC contracts over the customers database."""

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from common.db import Database, database_errors_as_unavailable, is_valid_id
from common.idempotency import checked_key, ensure_same_request, fingerprint
from common.metrics import CUSTOMERS_CREATED, IDEMPOTENT_REPLAYS
from common.pagination import keyset_page, page_params
from common.rpc import rpc
from common.schemas import load
from common.service import ShopService
from common.tracing import TracedEventDispatcher
from customers.exceptions import CustomerNotFound, EmailAlreadyRegistered
from customers.models import Base, Customer
from customers.schemas import CreateCustomerSchema, CustomerSchema

log = logging.getLogger(__name__)

# Schemas are built once: a marshmallow Schema() deep-copies its declared fields, which was
# a tenth of a reservation's CPU when done per call (docs/BENCHMARKS.md, issue 14).
customer_schema = CustomerSchema()
create_customer_schema = CreateCustomerSchema()


class CustomersService(ShopService):
    name = "customers"

    db = Database(Base)
    dispatch = TracedEventDispatcher()

    @rpc
    def create_customer(
        self, payload: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Create a customer from ``{"name", "email"}``.

        Returns the customer (``id``, ``name``, ``email`` lower-cased, ``created_at``).
        Raises ValidationError (422) for a bad payload, EmailAlreadyRegistered (409) if the
        email is taken, InvalidIdempotencyKey (400), IdempotencyKeyReused (422).
        Idempotent when ``idempotency_key`` is given: a replay returns the customer the
        first call created (without a key, a replay is a 409: the email is taken).
        """
        key = checked_key(idempotency_key)
        data = load(create_customer_schema, payload)
        request = fingerprint(data)
        with database_errors_as_unavailable():
            try:
                with self.db.get_session() as session:
                    customer = Customer(**data, idempotency_key=key, request_fingerprint=request)
                    session.add(customer)
                    session.flush()
                    created = customer_schema.dump(customer)
            except IntegrityError:
                pass
            else:
                CUSTOMERS_CREATED.inc()
                self._announce(created)
                return created
            with self.db.get_session() as session:
                first = (
                    session.scalars(
                        select(Customer).where(Customer.idempotency_key == key)
                    ).one_or_none()
                    if key is not None
                    else None
                )
                if first is None:
                    raise EmailAlreadyRegistered(
                        f"a customer with email {data['email']} already exists",
                        {"email": data["email"]},
                    )
                ensure_same_request(key, first.request_fingerprint, request)
                IDEMPOTENT_REPLAYS.labels(self.name).inc()
                return customer_schema.dump(first)

    def _announce(self, customer):
        """Publish ``customer_created`` (orders keeps a local view of who exists). Best
        effort: a lost event only costs orders one RPC to ``get_customer`` later."""
        try:
            self.dispatch("customer_created", {"id": customer["id"]})
        except Exception as exc:  # noqa: BLE001 - the customer exists; the event is a hint
            log.warning("customer_created not published for %s: %s", customer["id"], exc)

    @rpc
    def get_customer(self, customer_id: int) -> dict[str, Any]:
        """The customer with ``customer_id``; raises CustomerNotFound (404). Read-only."""
        if not is_valid_id(customer_id):
            raise CustomerNotFound.for_id(customer_id)
        with self.db.reading() as session:
            customer = session.get(Customer, customer_id)
            if customer is None:
                raise CustomerNotFound.for_id(customer_id)
            return customer_schema.dump(customer)

    @rpc
    def list_customers(
        self, limit: int | str | None = None, after: int | str | None = None
    ) -> dict[str, Any]:
        """One page of customers in id order: ``{"items": [...], "next_after": id|None}``.

        ``limit`` defaults to PAGE_DEFAULT_LIMIT (max PAGE_MAX_LIMIT), ``after`` is the
        last id of the previous page. Raises ValidationError (422). Read-only.
        """
        limit, after = page_params(self.config, limit, after)
        with self.db.reading() as session:
            rows, next_after = keyset_page(session, Customer, limit, after)
            return {"items": customer_schema.dump(rows, many=True), "next_after": next_after}
