"""What an attacker sends the gateway, held: path traversal on the docs assets, header
injection through ``X-Request-ID`` and ``Idempotency-Key``, and internals leaking into error
bodies. Raw sockets where a client library would normalize the attack away; the whole shop
in this process (real RabbitMQ and PostgreSQL)."""

import json
import socket

import pytest
import requests
from werkzeug.wrappers import Request

from common.idempotency import InvalidIdempotencyKey, checked_key
from gateway.http import request_id_of

# Text that must never reach a client: a stack trace, the SQL layer, this machine's files.
LEAKS = (
    "Traceback",
    'File "',
    "sqlalchemy",
    "psycopg2",
    "postgresql://",
    "/work/",
    "root:x:0:0",
    "amqp://",
    "pyamqp://",
    "def ",
    "import ",
)


def raw_request(url, head):
    """Send ``head`` (the request line and headers, CRLF-separated) as bytes, unaltered;
    return ``(status, headers as a list of (name, value), body)``."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head_part, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head_part.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
    return int(status_line.split()[1]), headers, body


def assert_clean_error(status, headers, body, expected_status):
    assert status == expected_status, body
    assert ("Content-Type", "application/json") in headers
    envelope = json.loads(body)
    assert set(envelope) == {"error", "message", "details"}
    for leak in LEAKS:
        assert leak not in body.decode("utf-8", "replace"), leak


@pytest.fixture
def shop_url(start_shop):
    return start_shop()


@pytest.mark.parametrize(
    "path",
    [
        b"/api/docs/../../../../etc/passwd",
        b"/api/docs/..%2f..%2f..%2fetc%2fpasswd",
        b"/api/docs/%2e%2e/%2e%2e/gateway/openapi.py",
        b"/api/docs/..%5c..%5cconfig.yml",
        b"/api/docs//etc/passwd",
        b"/api/docs/%00swagger-ui.css",
        b"/api/docs/swagger-ui.css%00.py",
        b"/api/docs/swagger-ui.css/../../../config.yml",
    ],
)
def test_docs_assets_cannot_be_walked_out_of(shop_url, path):
    status, headers, body = raw_request(shop_url, b"GET " + path + b" HTTP/1.1")
    assert_clean_error(status, headers, body, 404)


def test_a_docs_asset_is_still_served(shop_url):
    status, headers, body = raw_request(shop_url, b"GET /api/docs/swagger-ui.css HTTP/1.1")
    assert status == 200 and body


@pytest.mark.parametrize(
    "given",
    [
        b"ok\r\nSet-Cookie: stolen=1",  # a second header, not part of the id
        b"a b",  # a space
        b"caf\xc3\xa9",  # not ASCII
        b"x" * 129,  # too long
        b"tab\there",
    ],
)
def test_a_hostile_request_id_is_replaced_not_echoed(shop_url, given):
    status, headers, _ = raw_request(shop_url, b"GET /health HTTP/1.1\r\nX-Request-ID: " + given)
    assert status == 200
    names = [name.lower() for name, _ in headers]
    assert "set-cookie" not in names
    (request_id,) = [value for name, value in headers if name.lower() == "x-request-id"]
    if given.startswith(b"ok\r\n"):
        assert request_id == "ok"  # the header ends at the CRLF; Set-Cookie was the client's
    else:
        assert len(request_id) == 32 and request_id.encode() != given  # a fresh uuid4 hex


def test_a_request_id_with_a_trailing_newline_is_not_taken():
    # `^...$` with re.match accepts "abc\n": the patterns must match the whole value
    request = Request(
        {
            "HTTP_X_REQUEST_ID": "abc\n",
            "REQUEST_METHOD": "GET",
            "wsgi.url_scheme": "http",
            "SERVER_NAME": "x",
            "SERVER_PORT": "80",
        }
    )
    assert request_id_of(request) != "abc\n"
    with pytest.raises(InvalidIdempotencyKey):
        checked_key("abc\n")
    assert checked_key("abc") == "abc"


@pytest.mark.parametrize(
    "given",
    [
        b"key\r\nSet-Cookie: stolen=1",
        b"a b",
        b"caf\xc3\xa9",
        b"k" * 101,
        b"\x7f",
    ],
)
def test_a_hostile_idempotency_key_is_a_400_and_writes_nothing(shop_url, given):
    body = b'{"name": "ruler", "price": "3.5", "stock": 35}'
    head = (
        b"POST /api/products HTTP/1.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nIdempotency-Key: " + given
    )
    host, port = shop_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"\r\nHost: x\r\nConnection: close\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head_part, _, answer = received.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ")[1])
    if given.startswith(b"key\r\n"):
        # the header ends at the CRLF: "key" is a valid key, "Set-Cookie" a request header
        assert status == 201 and b"set-cookie" not in head_part.lower()
        return
    headers = [
        tuple(p.strip() for p in line.split(":", 1))
        for line in head_part.decode("latin-1").split("\r\n")[1:]
    ]
    assert_clean_error(status, headers, answer, 400)
    assert json.loads(answer)["error"] == "invalid_idempotency_key"
    assert requests.get(f"{shop_url}/api/products", timeout=10).json() == []


def test_errors_do_not_leak_internals(shop_url):
    """Every kind of error answer, each checked for what must never be in it."""
    attempts = [
        ("POST", "/api/orders", {"customer_id": 1, "products": [{"id": 1, "quantity": 1}]}),
        ("POST", "/api/orders", {"customer_id": "1; DROP TABLE orders", "products": []}),
        ("POST", "/api/customers", {"name": "x", "email": "' OR 1=1 --@example.com"}),
        ("GET", "/api/orders/99999999999999999999", None),
        ("GET", "/api/products?limit=-1&after=' OR '1'='1", None),
        ("POST", "/api/products", {"name": "n" * 100_000, "price": 1, "stock": 1}),
        ("DELETE", "/api/products", None),
        ("GET", "/api/../config.yml", None),
    ]
    for method, path, body in attempts:
        response = requests.request(method, shop_url + path, json=body, timeout=10)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        assert set(response.json()) == {"error", "message", "details"}
        for leak in LEAKS:
            assert leak not in response.text, (path, leak)
