"""What an operator relies on: request ids end to end, JSON worker logs, health, ready."""

import glob
import json
import os
import time

import requests
from sqlalchemy import text


def worker_lines(stack, request_id, expected):
    """The JSON worker lines carrying ``request_id``, once there are ``expected`` of them
    (a worker logs right after its reply is sent, so the client can be faster)."""
    deadline = time.monotonic() + 10
    while True:
        lines = []
        for path in glob.glob(os.path.join(stack.run_dir, "logs", "*.log")):
            with open(path) as stream:
                lines += [
                    json.loads(line)
                    for line in stream
                    if request_id in line and line.startswith("{")
                ]
        workers = [line for line in lines if line.get("event") == "worker"]
        if len(workers) >= expected or time.monotonic() > deadline:
            return workers
        time.sleep(0.2)


def wait_until_orders_knows(engines, customer_id):
    """customers' customer_created event has reached orders' local view."""
    deadline = time.monotonic() + 10
    with engines["orders"].connect() as conn:
        while not conn.scalar(
            text("SELECT 1 FROM known_customers WHERE id = :id"), {"id": customer_id}
        ):
            assert time.monotonic() < deadline, "customer_created never reached orders"
            time.sleep(0.1)
            conn.rollback()


def test_request_id_is_returned_and_logged_by_every_service_on_the_path(
    stack, api, clean_databases
):
    customer = requests.post(
        f"{api}/api/customers", json={"name": "c", "email": "c@example.com"}
    ).json()
    product = requests.post(
        f"{api}/api/products", json={"name": "p", "price": 1, "stock": 1}
    ).json()
    wait_until_orders_knows(clean_databases, customer["id"])
    response = requests.post(
        f"{api}/api/orders",
        headers={"X-Request-ID": "trace-abc-123"},
        json={"customer_id": customer["id"], "products": [{"id": product["id"], "quantity": 1}]},
    )
    assert response.headers["X-Request-ID"] == "trace-abc-123"
    workers = {
        (line["service"], line["method"]): line
        for line in worker_lines(stack, "trace-abc-123", expected=3)
    }
    # two RPC hops: orders knows the customer from its event, so customers is not asked
    assert set(workers) == {
        ("gateway", "create_order"),
        ("orders", "create_order"),
        ("products", "reserve_stock"),
    }
    assert all(line["outcome"] == "ok" and line["duration_ms"] >= 0 for line in workers.values())


def test_a_request_id_is_made_when_missing_or_unusable(api):
    made = requests.get(f"{api}/api/products").headers["X-Request-ID"]
    assert len(made) == 32
    replaced = requests.get(f"{api}/api/nowhere", headers={"X-Request-ID": "bad id with spaces"})
    assert replaced.status_code == 404
    assert replaced.headers["X-Request-ID"] not in ("", "bad id with spaces")


def test_errors_are_logged_with_their_outcome(stack, api):
    requests.get(f"{api}/api/products/424242", headers={"X-Request-ID": "trace-missing-1"})
    [line] = [
        line
        for line in worker_lines(stack, "trace-missing-1", expected=2)
        if line["service"] == "products"
    ]
    assert line["outcome"] == "product_not_found"


def test_health_and_ready(api):
    assert requests.get(f"{api}/health").json() == {"status": "ok"}
    ready = requests.get(f"{api}/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] == {
        "rabbitmq": {"status": "ok"},
        "customers": {"status": "ok", "database": "ok"},
        "products": {"status": "ok", "database": "ok"},
        "orders": {"status": "ok", "database": "ok"},
    }
