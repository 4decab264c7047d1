"""The gateway's connections are bounded and every answer is JSON, on a real gateway
container spoken to over raw sockets (what a misbehaving client really sends)."""

import json
import logging
import socket
import time
from urllib.parse import urlparse

import eventlet
import pytest
import requests
from kombu import Connection, Exchange, Queue

from common.logs import JsonFormatter

IDLE_TIMEOUT = 1.0


def open_socket(url):
    parsed = urlparse(url)
    return socket.create_connection((parsed.hostname, parsed.port), timeout=10)


def read_to_end(sock):
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(url, data):
    """Send ``data`` as is; ``(status, headers, body)`` of the answer read to the end."""
    with open_socket(url) as sock:
        sock.sendall(data)
        raw = read_to_end(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    return int(status_line.split()[1]), headers, body


def assert_json_error(answer, status, error):
    got_status, headers, body = answer
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["error"] == error


@pytest.fixture
def gateway_url(start_gateway):
    return start_gateway(HTTP_IDLE_TIMEOUT=IDLE_TIMEOUT, RPC_TIMEOUT=3, max_workers=2)


def test_a_header_line_over_8_kib_is_a_json_431(gateway_url):
    request = b"GET /api/products HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    assert_json_error(exchange(gateway_url, request), 431, "headers_too_large")


def test_two_thousand_headers_are_a_json_431(gateway_url):
    headers = b"".join(b"X-H%d: v\r\n" % n for n in range(2000))
    request = b"GET /api/products HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    assert_json_error(exchange(gateway_url, request), 431, "headers_too_large")


def test_a_request_line_over_8_kib_is_a_json_414(gateway_url):
    request = b"GET /api/products?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert_json_error(exchange(gateway_url, request), 414, "uri_too_long")


@pytest.mark.parametrize(
    "head",
    [
        b"POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
        b"POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"GET /api/products HTTP/7.3\r\nHost: x\r\n\r\n",
    ],
)
def test_a_malformed_head_is_a_json_400(gateway_url, head):
    assert_json_error(exchange(gateway_url, head), 400, "bad_request")


def test_a_silent_connection_is_closed_after_the_idle_timeout(gateway_url):
    with open_socket(gateway_url) as sock:
        started = time.monotonic()
        assert read_to_end(sock) == b""
        assert time.monotonic() - started < IDLE_TIMEOUT + 1.5


def test_a_head_that_stops_halfway_is_answered_408(gateway_url):
    with open_socket(gateway_url) as sock:
        sock.sendall(b"GET /api/products HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        raw = read_to_end(sock)
    assert time.monotonic() - started < IDLE_TIMEOUT + 1.5
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"


@pytest.fixture
def executed_request_ids(caplog):
    """``executed_request_ids()``: the request ids of the gateway workers run so far."""
    caplog.set_level(logging.INFO, logger="shop.worker")
    caplog.handler.setFormatter(JsonFormatter())  # the worker's fields, read as it logs
    return lambda: {json.loads(line).get("request_id") for line in caplog.text.splitlines()}


def assert_executed_only_the_whole_request(gateway_url, executed_request_ids, left):
    whole = requests.get(
        f"{gateway_url}/api/products", headers={"X-Request-ID": "whole"}, timeout=10
    )
    assert whole.status_code == 503  # executed: no products service runs here
    assert "whole" in executed_request_ids()
    assert left not in executed_request_ids()


def test_a_request_whose_client_left_mid_head_is_not_executed(gateway_url, executed_request_ids):
    with open_socket(gateway_url) as sock:
        sock.sendall(b"GET /api/products HTTP/1.1\r\nHost: x\r\nX-Request-ID: cut-short\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_end(sock) == b""  # no answer: nobody is left to read it
    assert_executed_only_the_whole_request(gateway_url, executed_request_ids, "cut-short")


def test_a_request_whose_client_left_mid_body_is_not_executed(gateway_url, executed_request_ids):
    with open_socket(gateway_url) as sock:
        sock.sendall(
            b"POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b'\r\nX-Request-ID: body-cut\r\nContent-Length: 100\r\n\r\n{"name": '
        )
        sock.shutdown(socket.SHUT_WR)
        raw = read_to_end(sock)
    assert raw.startswith(b"HTTP/1.1 499 ")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"] == "client_closed_request"
    assert_executed_only_the_whole_request(gateway_url, executed_request_ids, "body-cut")


def test_a_body_that_stops_halfway_is_answered_408(gateway_url):
    with open_socket(gateway_url) as sock:
        sock.sendall(
            b"POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b'\r\nContent-Length: 100\r\n\r\n{"name": '
        )
        raw = read_to_end(sock)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"


@pytest.fixture
def products_queue_without_consumer(rabbit_config):
    """``rpc-products`` bound as the products service binds it, with nobody consuming:
    calls to products are published and never answered."""
    with Connection(rabbit_config["AMQP_URI"]) as connection:
        exchange = Exchange("nameko-rpc", type="topic", durable=True)
        Queue("rpc-products", exchange, routing_key="products.*", durable=True)(
            connection
        ).declare()
        yield


def test_health_answers_while_every_worker_is_stuck(gateway_url, products_queue_without_consumer):
    pool = eventlet.GreenPool()
    stuck = [
        pool.spawn(requests.get, f"{gateway_url}/api/products/1", timeout=10) for _ in range(4)
    ]  # twice max_workers: two hold the workers, two wait
    eventlet.sleep(0.5)
    started = time.monotonic()
    health = requests.get(f"{gateway_url}/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert time.monotonic() - started < 0.5
    assert [response.wait().status_code for response in stuck] == [504] * 4


def test_health_allows_only_get(gateway_url):
    response = requests.post(f"{gateway_url}/health", timeout=5)
    assert (response.status_code, response.json()["error"]) == (405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, HEAD"
