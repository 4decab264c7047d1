"""Customers service logic alone (worker_factory) on the real test database."""

import pytest
from nameko.testing.services import worker_factory

from common.errors import ValidationError
from common.idempotency import IdempotencyKeyReused
from customers.exceptions import CustomerNotFound, EmailAlreadyRegistered
from customers.service import CustomersService


@pytest.fixture
def service(db_wrapper, base_config):
    return worker_factory(CustomersService, db=db_wrapper("customers"), config=base_config)


def test_create_then_get(service):
    created = service.create_customer({"name": " john doe ", "email": "John.Doe@Gmail.com"})
    assert created["id"] == 1
    assert created["name"] == "john doe"
    assert created["email"] == "john.doe@gmail.com"
    assert created["created_at"]
    assert service.get_customer(1) == created


def test_duplicate_email_is_a_conflict_case_insensitively(service):
    service.create_customer({"name": "a", "email": "a@example.com"})
    with pytest.raises(EmailAlreadyRegistered) as raised:
        service.create_customer({"name": "b", "email": "A@EXAMPLE.COM"})
    assert raised.value.status == 409
    assert raised.value.details == {"email": "a@example.com"}
    assert len(service.list_customers()["items"]) == 1


@pytest.mark.parametrize(
    "payload, bad_fields",
    [
        ({}, {"name", "email"}),
        ({"name": "x", "email": "not-an-email"}, {"email"}),
        ({"name": "   ", "email": "a@example.com"}, {"name"}),
        ({"name": "x" * 201, "email": "a@example.com"}, {"name"}),
        ({"name": 5, "email": "a@example.com"}, {"name"}),
        ({"name": "nul\x00", "email": "a@example.com"}, {"name"}),
        ({"name": "x", "email": "a\x00@example.com"}, {"email"}),
        ({"name": "x", "email": "\u0130" * 200 + "@ex.com"}, {"email"}),  # 407 once lower-cased
        ({"name": "x", "email": "a@example.com", "admin": True}, {"admin"}),
    ],
)
def test_invalid_payload_names_each_field_and_writes_nothing(service, payload, bad_fields):
    with pytest.raises(ValidationError) as raised:
        service.create_customer(payload)
    assert raised.value.status == 422
    assert set(raised.value.details) == bad_fields
    assert service.list_customers()["items"] == []


@pytest.mark.parametrize("customer_id", [2, 0, -1, 2**31, "1", True])
def test_unknown_or_impossible_id_is_not_found(service, customer_id):
    service.create_customer({"name": "a", "email": "a@example.com"})
    with pytest.raises(CustomerNotFound) as raised:
        service.get_customer(customer_id)
    assert raised.value.details == {"customer_id": customer_id}


def test_keyset_pages_cover_every_customer_once(service):
    for n in range(5):
        service.create_customer({"name": f"c{n}", "email": f"c{n}@example.com"})
    first = service.list_customers(limit=2)
    second = service.list_customers(limit=2, after=first["next_after"])
    last = service.list_customers(limit=2, after=second["next_after"])
    ids = [c["id"] for page in (first, second, last) for c in page["items"]]
    assert ids == [1, 2, 3, 4, 5]
    assert last["next_after"] is None


@pytest.mark.parametrize("limit, after", [(0, None), (1001, None), ("x", None), (1, -1)])
def test_bad_page_parameters_are_rejected(service, limit, after):
    with pytest.raises(ValidationError):
        service.list_customers(limit=limit, after=after)


def test_idempotency_key_returns_the_first_customer(service):
    payload = {"name": "a", "email": "a@example.com"}
    first = service.create_customer(payload, "key-1")
    assert service.create_customer(dict(payload), "key-1") == first
    with pytest.raises(IdempotencyKeyReused):
        service.create_customer({"name": "b", "email": "b@example.com"}, "key-1")
    with pytest.raises(EmailAlreadyRegistered):  # same email, other key: a real conflict
        service.create_customer(payload, "key-2")
    assert len(service.list_customers()["items"]) == 1
