"""Order lifecycle over HTTP: Idempotency-Key retries, cancel, a customer's orders."""

import requests


def setup_shop(api, stock=5):
    customer = requests.post(
        f"{api}/api/customers", json={"name": "c", "email": "c@example.com"}
    ).json()
    product = requests.post(
        f"{api}/api/products", json={"name": "p", "price": "2", "stock": stock}
    ).json()
    return customer["id"], product["id"]


def test_retry_with_the_same_key_returns_the_same_order(api):
    customer, product = setup_shop(api)
    body = {"customer_id": customer, "products": [{"id": product, "quantity": 2}]}
    headers = {"Idempotency-Key": "order-123"}
    first = requests.post(f"{api}/api/orders", json=body, headers=headers)
    again = requests.post(f"{api}/api/orders", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert requests.get(f"{api}/api/products/{product}").json()["stock"] == 3

    other = requests.post(
        f"{api}/api/orders",
        json={**body, "products": [{"id": product, "quantity": 1}]},
        headers=headers,
    )
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    bad = requests.post(f"{api}/api/orders", json=body, headers={"Idempotency-Key": "x" * 101})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_idempotency_key")


def test_retry_of_a_refused_order_gets_the_same_refusal(api):
    customer, product = setup_shop(api, stock=1)
    body = {"customer_id": customer, "products": [{"id": product, "quantity": 2}]}
    answers = [
        requests.post(f"{api}/api/orders", json=body, headers={"Idempotency-Key": "k"})
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [409, 409]
    assert answers[0].json() == answers[1].json()


def test_same_key_on_customers_and_products(api):
    headers = {"Idempotency-Key": "create-1"}
    customers = [
        requests.post(
            f"{api}/api/customers", json={"name": "a", "email": "a@x.io"}, headers=headers
        )
        for _ in range(2)
    ]
    assert [c.status_code for c in customers] == [201, 201]
    assert customers[0].json() == customers[1].json()
    products = [
        requests.post(
            f"{api}/api/products", json={"name": "p", "price": 1, "stock": 1}, headers=headers
        )
        for _ in range(2)
    ]
    assert products[0].json() == products[1].json()
    assert len(requests.get(f"{api}/api/products").json()) == 1


def test_cancel_returns_the_stock_once(api):
    customer, product = setup_shop(api)
    order = requests.post(
        f"{api}/api/orders",
        json={"customer_id": customer, "products": [{"id": product, "quantity": 4}]},
    ).json()
    for _ in range(2):
        cancelled = requests.post(f"{api}/api/orders/{order['id']}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
    assert requests.get(f"{api}/api/products/{product}").json()["stock"] == 5
    assert requests.get(f"{api}/api/orders/{order['id']}").json()["status"] == "cancelled"
    missing = requests.post(f"{api}/api/orders/999/cancel")
    assert (missing.status_code, missing.json()["error"]) == (404, "order_not_found")


def test_a_customers_orders(api):
    customer, product = setup_shop(api)
    ids = [
        requests.post(
            f"{api}/api/orders",
            json={"customer_id": customer, "products": [{"id": product, "quantity": 1}]},
        ).json()["id"]
        for _ in range(3)
    ]
    page = requests.get(f"{api}/api/customers/{customer}/orders?limit=2")
    assert [o["id"] for o in page.json()] == ids[:2]
    rest = requests.get(page.links["next"]["url"]).json()
    assert [o["id"] for o in rest] == ids[2:]
    unknown = requests.get(f"{api}/api/customers/999/orders")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "customer_not_found")
