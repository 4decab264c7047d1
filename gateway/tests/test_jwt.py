"""AUTH_MODE=jwt: every route x every kind of caller, on a real gateway in front of the
real services (in this process, on a fresh vhost and the clean test databases)."""
import base64
import hashlib
import hmac
import json
import os
import stat
import time
import uuid

import jwt
import pytest
import requests

from customers.service import CustomersService
from gateway import authz
from gateway.service import GatewayService
from orders.service import OrdersService
from products.service import ProductsService
from tests.harness import free_port

SECRET = "test-secret-" + "0123456789abcdef" * 4  # long enough for HS512 too
JWT_CONFIG = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": SECRET, "AUTH_JWT_ISSUER": "shop",
              "AUTH_JWT_AUDIENCE": "shop-api"}
BAD = ("expired", "not_yet", "tampered", "alg_none", "wrong_alg", "wrong_audience",
       "wrong_issuer", "garbage")
CALLERS = ("none", "admin", "owner", "other") + BAD


def b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(**overrides):
    now = int(time.time())
    return {"iss": "shop", "aud": "shop-api", "sub": "1", "iat": now, "nbf": now,
            "exp": now + 600, **overrides}


def tokens(owner, other):
    owner_token = authz.mint(JWT_CONFIG, customer_id=owner)
    header, _, signature = owner_token.split(".")
    return {
        "none": None,
        "admin": authz.mint(JWT_CONFIG, admin=True),
        "owner": owner_token,
        "other": authz.mint(JWT_CONFIG, customer_id=other),
        "expired": authz.mint(JWT_CONFIG, customer_id=owner, ttl=60, now=time.time() - 3600),
        "not_yet": jwt.encode(claims(sub=str(owner), nbf=int(time.time()) + 600), SECRET),
        # the owner's signature on the other's claims
        "tampered": f"{header}.{b64(claims(sub=str(other)))}.{signature}",
        "alg_none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(sub=str(owner)))}.",
        "wrong_alg": jwt.encode(claims(sub=str(owner)), SECRET, algorithm="HS512"),
        "wrong_audience": jwt.encode(claims(sub=str(owner), aud="elsewhere"), SECRET),
        "wrong_issuer": jwt.encode(claims(sub=str(owner), iss="elsewhere"), SECRET),
        "garbage": "not-a-jwt",
    }


@pytest.fixture
def shop(runner_factory, service_config):
    """The whole shop in jwt mode: returns ``(url, tokens, ids)`` with two customers
    (owner, other), a product and an order of the owner's."""
    address = f"127.0.0.1:{free_port()}"
    config = {**service_config, **JWT_CONFIG, "WEB_SERVER_ADDRESS": address,
              "RECOVERY_INTERVAL": 0, "HOLD_CHECK_INTERVAL": 0}
    runner_factory(config, GatewayService, CustomersService, ProductsService,
                   OrdersService).start()
    url = f"http://{address}"
    ids = {}
    for name in ("owner", "other"):
        response = requests.post(f"{url}/api/customers", timeout=10,
                                 json={"name": name, "email": f"{name}@example.com"})
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    callers = tokens(ids["owner"], ids["other"])
    product = requests.post(f"{url}/api/products", headers=bearer(callers["admin"]),
                            json={"name": "p", "price": "2", "stock": 100}, timeout=10)
    assert product.status_code == 201, product.text
    ids["product"] = product.json()["id"]
    order = requests.post(f"{url}/api/orders", headers=bearer(callers["owner"]), timeout=10,
                          json=order_body(ids["owner"], ids["product"]))
    assert order.status_code == 201, order.text
    ids["order"] = order.json()["id"]
    return url, callers, ids


def bearer(token):
    return {"Authorization": f"Bearer {token}"} if token else {}


def order_body(customer_id, product_id):
    return {"customer_id": customer_id, "products": [{"id": product_id, "quantity": 1}]}


def expect(none, admin, owner, other, public=False):
    """Expected status per caller; a bad token is a 401 unless the route is public."""
    expected = {"none": none, "admin": admin, "owner": owner, "other": other}
    expected.update({bad: owner if public else 401 for bad in BAD})
    return expected


# (method, path, body, expected): path and body are templates on the fixture's ids.
ROUTES = {
    "list_products": ("GET", "/api/products", None, expect(200, 200, 200, 200, public=True)),
    "get_product": ("GET", "/api/products/{product}", None,
                    expect(200, 200, 200, 200, public=True)),
    "health": ("GET", "/health", None, expect(200, 200, 200, 200, public=True)),
    "openapi": ("GET", "/api/openapi.json", None, expect(200, 200, 200, 200, public=True)),
    "docs": ("GET", "/api/docs", None, expect(200, 200, 200, 200, public=True)),
    "ping": ("GET", "/api/ping", None, expect(200, 200, 200, 200, public=True)),
    "signup": ("POST", "/api/customers", "signup", expect(201, 201, 201, 201, public=True)),
    "create_product": ("POST", "/api/products", {"name": "q", "price": "1", "stock": 1},
                       expect(401, 201, 403, 403)),
    "list_customers": ("GET", "/api/customers", None, expect(401, 200, 403, 403)),
    "get_customer": ("GET", "/api/customers/{owner}", None, expect(401, 200, 200, 404)),
    "list_customer_orders": ("GET", "/api/customers/{owner}/orders", None,
                             expect(401, 200, 200, 404)),
    "create_order": ("POST", "/api/orders", "order", expect(401, 403, 201, 403)),
    "get_order": ("GET", "/api/orders/{order}", None, expect(401, 200, 200, 404)),
    "cancel_order": ("POST", "/api/orders/{order}/cancel", None, expect(401, 403, 200, 404)),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_route_by_caller(shop, route):
    url, callers, ids = shop
    method, path, body, expected = ROUTES[route]
    seen = {}
    for caller in CALLERS:
        payload = body
        if body == "signup":
            payload = {"name": "n", "email": f"{uuid.uuid4().hex}@example.com"}
        elif body == "order":
            payload = order_body(ids["owner"], ids["product"])
        response = requests.request(method, url + path.format(**ids), json=payload,
                                    headers=bearer(callers[caller]), timeout=20)
        seen[caller] = response.status_code
        if response.status_code == 401:
            assert response.json()["error"] == "unauthorized"
            challenge = response.headers["WWW-Authenticate"]
            if caller == "none":
                assert challenge == "Bearer"
            else:
                assert challenge == 'Bearer error="invalid_token"'
        if response.status_code == 404 and caller == "other":
            # the same answer as for a resource that does not exist
            assert response.json()["error"] in ("customer_not_found", "order_not_found")
    assert seen == expected


def test_another_customers_order_for_itself_is_forbidden(shop):
    url, callers, ids = shop
    response = requests.post(f"{url}/api/orders", headers=bearer(callers["other"]),
                             json=order_body(ids["owner"], ids["product"]), timeout=20)
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    mine = requests.post(f"{url}/api/orders", headers=bearer(callers["other"]),
                         json=order_body(ids["other"], ids["product"]), timeout=20)
    assert mine.status_code == 201
    assert requests.get(f"{url}/api/orders/{mine.json()['id']}", timeout=20,
                        headers=bearer(callers["owner"])).status_code == 404


def test_a_missing_order_and_anothers_look_the_same(shop):
    url, callers, ids = shop
    mine = requests.get(f"{url}/api/orders/{ids['order']}", headers=bearer(callers["other"]),
                        timeout=20)
    missing = requests.get(f"{url}/api/orders/999999", headers=bearer(callers["other"]),
                           timeout=20)
    assert mine.status_code == missing.status_code == 404
    assert mine.json()["error"] == missing.json()["error"] == "order_not_found"


def test_signup_may_be_the_admins(start_gateway):
    url = start_gateway(**JWT_CONFIG, AUTH_SIGNUP="admin", RPC_TIMEOUT=1)
    body = {"name": "n", "email": "n@example.com"}
    anonymous = requests.post(f"{url}/api/customers", json=body, timeout=10)
    assert anonymous.status_code == 401
    customer = requests.post(f"{url}/api/customers", json=body, timeout=10,
                             headers=bearer(authz.mint(JWT_CONFIG, customer_id=1)))
    assert customer.status_code == 403
    # no customers service on this vhost: past authorization means reaching the RPC (503)
    admin = requests.post(f"{url}/api/customers", json=body, timeout=10,
                          headers=bearer(authz.mint(JWT_CONFIG, admin=True)))
    assert admin.status_code == 503


@pytest.mark.parametrize("config, mode", [
    ({}, "off"), ({"AUTH_MODE": ""}, "off"), ({"API_TOKENS": "a"}, "tokens"),
    ({"AUTH_MODE": "off", "API_TOKENS": "a"}, "off"), ({"AUTH_MODE": "JWT"}, "jwt"),
    ({"AUTH_MODE": "tokens"}, "tokens"),
])
def test_auth_mode(config, mode):
    assert authz.auth_mode(config) == mode


def test_an_unknown_auth_mode_is_refused():
    with pytest.raises(ValueError):
        authz.auth_mode({"AUTH_MODE": "maybe"})


def test_the_development_secret_is_created_once_private(tmp_path):
    config = {"AUTH_MODE": "jwt", "AUTH_JWT_DEV_SECRET_PATH": str(tmp_path / "run" / "s")}
    key, algorithms, source = authz.verification_key(config)
    assert algorithms == ["HS256"] and "development secret" in source
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "s").st_mode) == 0o600
    assert authz.verification_key(config)[0] == key
    token = authz.mint(config, customer_id=5)  # what `make token` prints
    assert jwt.decode(token, key, algorithms=["HS256"], audience="shop-api")["sub"] == "5"
    # a configured key always wins
    assert authz.verification_key({**config, "AUTH_JWT_SECRET": SECRET})[0] == SECRET


def test_a_public_key_never_accepts_symmetric_algorithms():
    config = {"AUTH_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----...",
              "AUTH_JWT_ALGORITHMS": "RS256,HS256,none"}
    assert authz.verification_key(config)[1] == ["RS256"]


def test_an_rs256_token_is_verified_with_the_public_key(start_gateway):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    url = start_gateway(AUTH_MODE="jwt", AUTH_JWT_PUBLIC_KEY=public_pem, RPC_TIMEOUT=1)
    signed = jwt.encode(claims(scope="shop:admin", sub="admin"), private, algorithm="RS256")
    body = {"name": "p", "price": 1, "stock": 1}
    ok = requests.post(f"{url}/api/products", json=body, headers=bearer(signed), timeout=10)
    assert ok.status_code == 503  # past authorization: no products service here
    # the public key used as an HMAC secret (the classic algorithm confusion)
    header = b64({"alg": "HS256", "typ": "JWT"})
    payload = b64(claims(scope="shop:admin", sub="admin"))
    signature = base64.urlsafe_b64encode(hmac.new(
        public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256
    ).digest()).rstrip(b"=").decode()
    confused = requests.post(f"{url}/api/products", json=body, timeout=10,
                             headers=bearer(f"{header}.{payload}.{signature}"))
    assert confused.status_code == 401


def test_the_gateway_and_make_token_share_the_development_secret(start_gateway, tmp_path,
                                                                 caplog):
    config = {"AUTH_MODE": "jwt", "AUTH_JWT_DEV_SECRET_PATH": str(tmp_path / "jwt-dev-secret")}
    with caplog.at_level("INFO", logger="gateway.authz"):
        url = start_gateway(**config, RPC_TIMEOUT=1)
    assert any("development secret" in record.getMessage() for record in caplog.records)
    body = {"name": "p", "price": 1, "stock": 1}
    admin = requests.post(f"{url}/api/products", json=body, timeout=10,
                          headers=bearer(authz.mint(config, admin=True)))
    assert admin.status_code == 503  # past authorization: no products service here
    foreign = requests.post(f"{url}/api/products", json=body, timeout=10,
                            headers=bearer(authz.mint(JWT_CONFIG, admin=True)))
    assert foreign.status_code == 401


def test_the_public_key_may_be_a_file_or_one_line(tmp_path):
    pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
    (tmp_path / "key.pem").write_text(pem + "\n")
    assert authz.public_key_pem({"AUTH_JWT_PUBLIC_KEY": str(tmp_path / "key.pem")}) == pem
    one_line = pem.replace("\n", "\\n")
    assert authz.public_key_pem({"AUTH_JWT_PUBLIC_KEY": one_line}) == pem
