"""Every curl of the seed README, run verbatim with curl (only the port is swapped for the
test gateways'), gives the documented result; and the error contract over real HTTP."""

import os
import re
import subprocess

import pytest
import requests

from common.config import ROOT

SEED_README = os.path.join(ROOT, "..", "shared", "seed", "README.seed.md")
CURL_BLOCK = re.compile(r"```bash\n(curl .*?)\n```", re.S)
# The seed's curls in order, with the status each must answer on an empty stack.
EXPECTED_STATUSES = [201, 200, 201, 200, 200, 201]


def curls_in(path):
    with open(path) as stream:
        return CURL_BLOCK.findall(stream.read())


def test_readme_carries_the_seed_curls_verbatim():
    ours = curls_in(os.path.join(ROOT, "README.md"))
    assert len(ours) >= len(EXPECTED_STATUSES)
    if os.path.exists(SEED_README):  # ../shared is beside the clone in CI and dev
        seed = curls_in(SEED_README)
        assert seed == ours[: len(seed)]


def test_seed_curls_work_verbatim(stack, api):
    curls = curls_in(os.path.join(ROOT, "README.md"))[: len(EXPECTED_STATUSES)]
    ports = {str(8000 + n): stack.urls[n].rsplit(":", 1)[1] for n in range(3)}
    bodies = []
    for command, expected in zip(curls, EXPECTED_STATUSES, strict=True):
        command = re.sub(r"127\.0\.0\.1:(800[0-2])", lambda m: f"127.0.0.1:{ports[m[1]]}", command)
        result = subprocess.run(
            ["bash", "-c", command + " --silent --show-error --write-out '\\n%{http_code}'"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        body, status = result.stdout.rsplit("\n", 1)
        assert int(status) == expected, (command, body)
        bodies.append(requests.models.complexjson.loads(body))
    customer, same_customer, product, product_list, same_product, order = bodies
    assert customer == same_customer and customer["email"] == "john.doe@gmail.com"
    assert (product["name"], product["price"], product["stock"]) == ("ruler", "3.50", 35)
    assert [p["id"] for p in product_list] == [product["id"]]
    assert same_product == product
    assert order["status"] == "confirmed" and order["total"] == "3.50"
    assert order["lines"] == [
        {"product_id": 1, "name": "ruler", "quantity": 1, "unit_price": "3.50"}
    ]
    assert requests.get(f"{api}/api/products/1").json()["stock"] == 34
    assert requests.get(f"{api}/api/orders/{order['id']}").json() == order


def envelope(response, status, error):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message", "details"}
    assert body["error"] == error
    return body


@pytest.mark.parametrize(
    "method, path, kwargs, status, error",
    [
        ("GET", "/api/nowhere", {}, 404, "not_found"),
        ("GET", "/api/products/abc", {}, 404, "not_found"),
        ("GET", "/api/products/99999999999", {}, 404, "product_not_found"),
        ("GET", "/api/customers/5", {}, 404, "customer_not_found"),
        ("GET", "/api/orders/5", {}, 404, "order_not_found"),
        ("DELETE", "/api/products", {}, 405, "method_not_allowed"),
        (
            "POST",
            "/api/products",
            {"data": "{bad", "headers": {"Content-Type": "application/json"}},
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/products",
            {"data": b"\xff", "headers": {"Content-Type": "application/json"}},
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/products",
            {"json": {"name": "x", "price": "1", "pad": "x" * 70000}},
            413,
            "payload_too_large",
        ),
        ("POST", "/api/products", {"data": "a=b"}, 415, "unsupported_media_type"),
        (
            "POST",
            "/api/products",
            {"json": {"name": "x", "price": "-1", "stock": 1}},
            422,
            "validation_error",
        ),
        ("POST", "/api/products", {"json": [1, 2]}, 422, "validation_error"),
        ("GET", "/api/products?limit=0", {}, 422, "validation_error"),
        (
            "POST",
            "/api/orders",
            {"json": {"customer_id": 1, "products": []}},
            422,
            "validation_error",
        ),
        (
            "POST",
            "/api/orders",
            {"json": {"customer_id": 1, "products": [{"id": 1, "quantity": 1}]}},
            404,
            "customer_not_found",
        ),
    ],
)
def test_errors_are_json_envelopes_and_write_nothing(
    api, clean_databases, method, path, kwargs, status, error
):
    envelope(requests.request(method, api + path, timeout=10, **kwargs), status, error)
    assert requests.get(f"{api}/api/products").json() == []
    assert requests.get(f"{api}/api/customers").json() == []


def test_405_names_the_allowed_methods(api):
    response = requests.put(f"{api}/api/orders/1", timeout=10)
    body = envelope(response, 405, "method_not_allowed")
    assert set(body["details"]["allowed"]) >= {"GET"}


def test_conflicts_and_missing_products_over_http(api):
    customer = requests.post(f"{api}/api/customers", json={"name": "a", "email": "a@example.com"})
    assert customer.status_code == 201
    body = envelope(
        requests.post(f"{api}/api/customers", json={"name": "b", "email": "A@example.com"}),
        409,
        "email_taken",
    )
    assert body["details"] == {"email": "a@example.com"}
    product = requests.post(
        f"{api}/api/products", json={"name": "p", "price": 2, "stock": 1}
    ).json()
    order = {
        "customer_id": customer.json()["id"],
        "products": [{"id": product["id"], "quantity": 1}, {"id": 77, "quantity": 1}],
    }
    body = envelope(requests.post(f"{api}/api/orders", json=order), 404, "product_not_found")
    assert body["details"] == {"product_ids": [77]}
    order["products"] = [{"id": product["id"], "quantity": 3}]
    body = envelope(requests.post(f"{api}/api/orders", json=order), 409, "insufficient_stock")
    assert body["details"]["products"] == [
        {"product_id": product["id"], "requested": 3, "available": 1}
    ]
    assert requests.get(f"{api}/api/products/{product['id']}").json()["stock"] == 1


def test_pagination_link_walks_every_product(api):
    created = [
        requests.post(
            f"{api}/api/products", json={"name": f"p{n}", "price": "1", "stock": 1}
        ).json()["id"]
        for n in range(5)
    ]
    seen, url = [], f"{api}/api/products?limit=2"
    while url:
        response = requests.get(url, timeout=10)
        seen += [p["id"] for p in response.json()]
        url = response.links.get("next", {}).get("url")
    assert seen == created


def test_text_that_looks_like_sql_is_stored_as_text(api):
    name = "Robert'); DROP TABLE customers;--"
    created = requests.post(
        f"{api}/api/customers", json={"name": name, "email": "bobby@example.com"}
    )
    assert created.status_code == 201
    assert requests.get(f"{api}/api/customers/{created.json()['id']}").json()["name"] == name
    product = requests.post(
        f"{api}/api/products", json={"name": "1 OR 1=1; --", "price": "1", "stock": 1}
    )
    assert (
        requests.get(f"{api}/api/products/{product.json()['id']}").json()["name"] == "1 OR 1=1; --"
    )
    assert len(requests.get(f"{api}/api/customers").json()) == 1
