"""Gateway logic alone: worker_factory with the service proxies mocked, requests built
with werkzeug. Routing (404/405) and the real wiring are covered end to end in tests/e2e."""

import json

import pytest
from nameko.testing.services import worker_factory
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from common.errors import BadRequest, InsufficientStock, ValidationError
from gateway.exceptions import PayloadTooLarge, UnsupportedMediaType
from gateway.http import error_response, read_json
from gateway.service import GatewayService


def request(method="GET", path="/", body=None, data=None, content_type="application/json", **kw):
    if body is not None:
        data = json.dumps(body)
    builder = EnvironBuilder(method=method, path=path, data=data, content_type=content_type, **kw)
    return Request(builder.get_environ())


@pytest.fixture
def gateway():
    return worker_factory(GatewayService, config={"HTTP_MAX_BODY_BYTES": 100})


def test_create_answers_201_with_location(gateway):
    gateway.customers.create_customer.return_value = {"id": 7, "name": "a"}
    response = gateway.create_customer(request("POST", body={"name": "a"}))
    assert response.status_code == 201
    assert response.headers["Location"] == "/api/customers/7"
    assert response.json == {"id": 7, "name": "a"}
    [(payload, key)] = [call.args for call in gateway.customers.create_customer.call_args_list]
    assert payload == {"name": "a"}
    assert key.startswith("gw-")  # a redelivered RPC still creates only once


def test_each_request_without_a_key_gets_its_own(gateway):
    gateway.products.create_product.return_value = {"id": 1}
    for _ in range(2):
        gateway.create_product(request("POST", body={}))
    keys = {call.args[1] for call in gateway.products.create_product.call_args_list}
    assert len(keys) == 2


def test_idempotency_key_header_is_passed_to_the_service(gateway):
    gateway.orders.create_order.return_value = {"id": 3}
    gateway.create_order(request("POST", body={"x": 1}, headers={"Idempotency-Key": "k-1"}))
    gateway.orders.create_order.assert_called_once_with({"x": 1}, "k-1")


def test_customer_orders_are_listed_through_orders(gateway):
    gateway.orders.list_orders.return_value = {"items": [{"id": 1}], "next_after": None}
    response = gateway.list_customer_orders(request(path="/api/customers/4/orders"), customer_id=4)
    assert response.json == [{"id": 1}]
    gateway.orders.list_orders.assert_called_once_with(4, limit=None, after=None)


def test_list_sets_a_next_link_only_when_there_is_a_next_page(gateway):
    gateway.products.list_products.return_value = {"items": [{"id": 1}, {"id": 2}], "next_after": 2}
    response = gateway.list_products(request(path="/api/products", query_string="limit=2"))
    assert response.json == [{"id": 1}, {"id": 2}]
    assert response.headers["Link"] == '<http://localhost/api/products?after=2&limit=2>; rel="next"'
    gateway.products.list_products.assert_called_once_with(limit="2", after=None)

    gateway.products.list_products.return_value = {"items": [], "next_after": None}
    assert "Link" not in gateway.list_products(request(path="/api/products")).headers


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"data": "{bad"}, BadRequest),
        ({"data": ""}, BadRequest),
        ({"data": b"\xff\xfe"}, BadRequest),
        ({"data": '{"price": NaN}'}, BadRequest),
        ({"data": "x" * 101}, PayloadTooLarge),
        (
            {"data": "a=b", "content_type": "application/x-www-form-urlencoded"},
            UnsupportedMediaType,
        ),
    ],
)
def test_bad_bodies(kwargs, error):
    with pytest.raises(error):
        read_json(request("POST", **kwargs), max_bytes=100)


def test_body_without_content_type_is_read_as_json():
    assert read_json(request("POST", data='{"a": 1}', content_type=None), 100) == {"a": 1}


def test_error_envelope_keeps_the_domain_status_and_details():
    shortage = [{"product_id": 1, "requested": 2, "available": 1}]
    response = error_response(InsufficientStock.for_shortages(shortage))
    assert response.status_code == 409
    assert response.mimetype == "application/json"
    assert response.json == {
        "error": "insufficient_stock",
        "message": "not enough stock (product 1: requested 2, available 1)",
        "details": {"products": shortage},
    }


def test_validation_error_is_422():
    response = error_response(ValidationError("bad", {"name": ["Missing data."]}))
    assert (response.status_code, response.json["details"]) == (422, {"name": ["Missing data."]})


def test_unexpected_errors_reveal_nothing():
    response = error_response(RuntimeError("password=secret in a traceback"))
    assert response.status_code == 500
    assert response.json == {
        "error": "internal_error",
        "message": "Internal server error.",
        "details": {},
    }
