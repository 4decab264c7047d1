"""Optional bearer-token auth, on a real gateway container over HTTP."""

import pytest
import requests

from gateway.auth import configured_tokens


@pytest.mark.parametrize(
    "setting, tokens",
    [
        (None, []),
        ("", []),
        ("abc", [b"abc"]),
        ("a, b", [b"a", b"b"]),
        (123, [b"123"]),
        (["x", "y"], [b"x", b"y"]),
    ],
)
def test_configured_tokens(setting, tokens):
    assert configured_tokens({"API_TOKENS": setting}) == tokens


@pytest.fixture
def gateway_url(start_gateway):
    return start_gateway(API_TOKENS="s3cret,other", RPC_TIMEOUT=1)


def post(url, **headers):
    return requests.post(
        f"{url}/api/products",
        json={"name": "p", "price": 1, "stock": 1},
        headers=headers,
        timeout=10,
    )


def test_writes_need_a_token(gateway_url):
    missing = post(gateway_url)
    assert (missing.status_code, missing.json()["error"]) == (401, "unauthorized")
    assert missing.headers["X-Request-ID"]
    wrong = post(gateway_url, Authorization="Bearer nope")
    assert (wrong.status_code, wrong.json()["error"]) == (403, "forbidden")
    basic = post(gateway_url, Authorization="Basic czNjcmV0")
    assert basic.status_code == 401


def test_a_valid_token_gets_through(gateway_url):
    # No products service runs here: getting past auth means reaching the RPC (503).
    for token in ("s3cret", "other"):
        response = post(gateway_url, Authorization=f"Bearer {token}")
        assert (response.status_code, response.json()["error"]) == (503, "service_unavailable")


def test_reads_stay_open(gateway_url):
    assert requests.get(f"{gateway_url}/health", timeout=10).status_code == 200
