"""Connections and locks that would outlive their bounds: 1,500 half-sent requests on one
gateway, and a product row locked past the lock timeout. The stack keeps serving orders,
the half-sent requests are closed and never executed, and the lock is a 503."""

import socket
import time
from urllib.parse import urlparse

import eventlet
import pytest
import requests
from sqlalchemy import text

from tests.faults.conftest import DEFINITE, FAST_RECOVERY, OrderLoad

HALF_SENT = 1500
HEADS = (
    # the head complete, the body cut short
    b"POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 60\r\n\r\n{"name": "half-sent", ',
    # the head itself cut short
    b"POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_half_sent_connections_are_closed_and_never_executed(stack, shop, clean_databases):
    customer_id, stock_added = shop
    url = urlparse(stack.urls[0])
    sockets = []
    for n in range(HALF_SENT):
        sock = socket.create_connection((url.hostname, url.port), timeout=10)
        sock.sendall(HEADS[n % 2])
        sockets.append(sock)
    opened = time.monotonic()

    # Orders placed on that very gateway meanwhile are answered within their bound.
    load = OrderLoad([stack.urls[0]], customer_id, sorted(stock_added), count=40, concurrency=5)
    load.start()
    load.wait()
    bound = FAST_RECOVERY["ORDERS_RPC_TIMEOUT"] + 1
    assert {status for status, _, _ in load.answers.values()} <= DEFINITE
    assert max(seconds for _, _, seconds in load.answers.values()) < bound

    # Half of the clients go away; the gateway closes the other half after its idle timeout.
    for sock in sockets[::2]:
        sock.close()
    closed_by_server = 0
    for sock in sockets[1::2]:
        sock.settimeout(
            max(0.1, opened + FAST_RECOVERY["HTTP_IDLE_TIMEOUT"] + 5 - time.monotonic())
        )
        try:
            while sock.recv(65536):  # a 408 answer, then the end of the stream
                pass
            closed_by_server += 1
        except TimeoutError:
            pass
        finally:
            sock.close()
    assert closed_by_server == HALF_SENT // 2

    assert requests.get(f"{stack.urls[0]}/health", timeout=2).status_code == 200
    assert rss_mb(stack.pid("gateway-0")) < 200
    with clean_databases["products"].connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM products WHERE name LIKE 'half%'")) == 0


@pytest.fixture
def locked_product(clean_databases, shop):
    """The first product's row, locked FOR UPDATE by another transaction until released."""
    _, stock_added = shop
    product_id = next(iter(stock_added))
    connection = clean_databases["products"].connect()
    transaction = connection.begin()
    connection.execute(text("SELECT 1 FROM products WHERE id = :id FOR UPDATE"), {"id": product_id})
    yield product_id, transaction
    if transaction.is_active:
        transaction.rollback()
    connection.close()


def test_a_row_locked_past_the_lock_timeout_is_a_503_within_the_bound(stack, shop, locked_product):
    customer_id, _ = shop
    product_id, lock = locked_product
    order = {"customer_id": customer_id, "products": [{"id": product_id, "quantity": 1}]}
    headers = {"Idempotency-Key": "locked-1"}
    started = time.monotonic()
    response = requests.post(f"{stack.urls[0]}/api/orders", json=order, headers=headers, timeout=30)
    seconds = time.monotonic() - started
    body = response.json()
    assert (response.status_code, body["error"]) == (503, "service_unavailable"), body
    assert body["details"]["reason"] == "database"
    assert body["details"]["order_status"] == "pending"
    # the lock timeout fired, not the caller's RPC bound
    assert FAST_RECOVERY["DB_LOCK_TIMEOUT_MS"] / 1000 <= seconds < FAST_RECOVERY["RPC_TIMEOUT"]

    lock.rollback()
    eventlet.sleep(0)
    retried = requests.post(f"{stack.urls[0]}/api/orders", json=order, headers=headers, timeout=30)
    assert (retried.status_code, retried.json()["id"]) == (201, body["details"]["order_id"])
