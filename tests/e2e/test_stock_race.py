"""The stock guarantee under real concurrency: many HTTP clients spread over three
gateways, two products processes and two orders processes, then invariants checked in
the databases (stock never negative; units sold + stock left = stock added; each
confirmed order decremented exactly once)."""

import time
from collections import Counter

import eventlet
import requests

CLIENTS = 120
MAX_SHED = 10  # times one client re-sends a shed order (after its Retry-After each time)


def place_orders(stack, bodies, concurrency=CLIENTS):
    """POST every body concurrently, round-robin over the gateways; statuses in order.

    120 orders at once are more than a gateway takes on at once: those it sheds (503
    ``overloaded``: never started, gateway/admission.py) are sent again after their
    ``Retry-After``, as a client should; each order's status is its final answer."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=concurrency)
    session.mount("http://", adapter)
    shed = []

    def post(indexed):
        index, body = indexed
        url = stack.urls[index % len(stack.urls)]
        for _ in range(MAX_SHED):
            response = session.post(f"{url}/api/orders", json=body, timeout=60)
            if response.status_code != 503 or response.json()["details"].get("reason") != (
                "overloaded"
            ):
                break
            shed.append(index)
            time.sleep(float(response.headers["Retry-After"]) * (0.5 + index % 10 / 10))
        return response.status_code

    pool = eventlet.GreenPool(concurrency)
    started = time.monotonic()
    statuses = list(pool.imap(post, enumerate(bodies)))
    elapsed = time.monotonic() - started
    print(
        f"\n{len(bodies)} orders in {elapsed:.2f}s: {len(bodies) / elapsed:.0f} orders/s "
        f"{dict(Counter(statuses))}, {len(shed)} shed and sent again"
    )
    return statuses


def create(api, path, body):
    response = requests.post(f"{api}/api/{path}", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_hot_product_sells_exactly_its_stock(stack, api, assert_books_balance):
    customer = create(api, "customers", {"name": "c", "email": "c@example.com"})
    product = create(api, "products", {"name": "hot", "price": "9.99", "stock": 20})
    statuses = place_orders(
        stack, [{"customer_id": customer, "products": [{"id": product, "quantity": 1}]}] * CLIENTS
    )
    assert Counter(statuses) == {201: 20, 409: CLIENTS - 20}
    assert requests.get(f"{api}/api/products/{product}").json()["stock"] == 0
    assert_books_balance({product: 20})


def test_crossed_orders_neither_deadlock_nor_oversell(stack, api, assert_books_balance):
    customer = create(api, "customers", {"name": "c", "email": "c@example.com"})
    a = create(api, "products", {"name": "a", "price": "1", "stock": 30})
    b = create(api, "products", {"name": "b", "price": "2", "stock": 30})
    ab = {"customer_id": customer, "products": [{"id": a, "quantity": 1}, {"id": b, "quantity": 1}]}
    ba = {"customer_id": customer, "products": [{"id": b, "quantity": 1}, {"id": a, "quantity": 1}]}
    statuses = place_orders(stack, [ab, ba] * (CLIENTS // 2))
    assert Counter(statuses) == {201: 30, 409: CLIENTS - 30}
    assert_books_balance({a: 30, b: 30})


def test_mixed_load_over_many_products_balances(stack, api, assert_books_balance):
    customer = create(api, "customers", {"name": "c", "email": "c@example.com"})
    stock_added = {
        create(api, "products", {"name": f"p{n}", "price": "1.5", "stock": 7}): 7 for n in range(6)
    }
    ids = sorted(stock_added)
    bodies = [
        {
            "customer_id": customer,
            "products": [
                {"id": ids[n % 6], "quantity": 1 + n % 3},
                {"id": ids[(n * 5 + 1) % 6], "quantity": 1},
            ],
        }
        for n in range(CLIENTS)
    ]
    statuses = place_orders(stack, bodies)
    assert set(statuses) <= {201, 409}
    assert 201 in statuses
    assert_books_balance(stock_added)
