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

from gateway import authz

SECRET = "test-secret-" + "0123456789abcdef" * 4  # long enough for HS512 too
JWT_CONFIG = {
    "AUTH_MODE": "jwt",
    "AUTH_JWT_SECRET": SECRET,
    "AUTH_JWT_ISSUER": "shop",
    "AUTH_JWT_AUDIENCE": "shop-api",
}
BAD = (
    "expired",
    "not_yet",
    "tampered",
    "alg_none",
    "wrong_alg",
    "wrong_audience",
    "wrong_issuer",
    "garbage",
)
CALLERS = ("none", "admin", "owner", "other") + BAD


def b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(**overrides):
    now = int(time.time())
    return {
        "iss": "shop",
        "aud": "shop-api",
        "sub": "1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        **overrides,
    }


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
def shop(start_shop):
    """The whole shop in jwt mode: returns ``(url, tokens, ids)`` with two customers
    (owner, other), a product and an order of the owner's."""
    url = start_shop(**JWT_CONFIG)
    ids = {}
    for name in ("owner", "other"):
        response = requests.post(
            f"{url}/api/customers", timeout=10, json={"name": name, "email": f"{name}@example.com"}
        )
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    callers = tokens(ids["owner"], ids["other"])
    product = requests.post(
        f"{url}/api/products",
        headers=bearer(callers["admin"]),
        json={"name": "p", "price": "2", "stock": 100},
        timeout=10,
    )
    assert product.status_code == 201, product.text
    ids["product"] = product.json()["id"]
    order = requests.post(
        f"{url}/api/orders",
        headers=bearer(callers["owner"]),
        timeout=10,
        json=order_body(ids["owner"], ids["product"]),
    )
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
    "get_product": (
        "GET",
        "/api/products/{product}",
        None,
        expect(200, 200, 200, 200, public=True),
    ),
    "health": ("GET", "/health", None, expect(200, 200, 200, 200, public=True)),
    "openapi": ("GET", "/api/openapi.json", None, expect(200, 200, 200, 200, public=True)),
    "docs": ("GET", "/api/docs", None, expect(200, 200, 200, 200, public=True)),
    "ping": ("GET", "/api/ping", None, expect(200, 200, 200, 200, public=True)),
    "signup": ("POST", "/api/customers", "signup", expect(201, 201, 201, 201, public=True)),
    "create_product": (
        "POST",
        "/api/products",
        {"name": "q", "price": "1", "stock": 1},
        expect(401, 201, 403, 403),
    ),
    "list_customers": ("GET", "/api/customers", None, expect(401, 200, 403, 403)),
    "get_customer": ("GET", "/api/customers/{owner}", None, expect(401, 200, 200, 404)),
    "list_customer_orders": (
        "GET",
        "/api/customers/{owner}/orders",
        None,
        expect(401, 200, 200, 404),
    ),
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
        response = requests.request(
            method,
            url + path.format(**ids),
            json=payload,
            headers=bearer(callers[caller]),
            timeout=20,
        )
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
    response = requests.post(
        f"{url}/api/orders",
        headers=bearer(callers["other"]),
        json=order_body(ids["owner"], ids["product"]),
        timeout=20,
    )
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    mine = requests.post(
        f"{url}/api/orders",
        headers=bearer(callers["other"]),
        json=order_body(ids["other"], ids["product"]),
        timeout=20,
    )
    assert mine.status_code == 201
    assert (
        requests.get(
            f"{url}/api/orders/{mine.json()['id']}", timeout=20, headers=bearer(callers["owner"])
        ).status_code
        == 404
    )


def test_a_missing_order_and_anothers_look_the_same(shop):
    url, callers, ids = shop
    mine = requests.get(
        f"{url}/api/orders/{ids['order']}", headers=bearer(callers["other"]), timeout=20
    )
    missing = requests.get(f"{url}/api/orders/999999", headers=bearer(callers["other"]), timeout=20)
    assert mine.status_code == missing.status_code == 404
    assert mine.json()["error"] == missing.json()["error"] == "order_not_found"


def test_signup_may_be_the_admins(start_gateway):
    url = start_gateway(**JWT_CONFIG, AUTH_SIGNUP="admin", RPC_TIMEOUT=1)
    body = {"name": "n", "email": "n@example.com"}
    anonymous = requests.post(f"{url}/api/customers", json=body, timeout=10)
    assert anonymous.status_code == 401
    customer = requests.post(
        f"{url}/api/customers",
        json=body,
        timeout=10,
        headers=bearer(authz.mint(JWT_CONFIG, customer_id=1)),
    )
    assert customer.status_code == 403
    # no customers service on this vhost: past authorization means reaching the RPC (503)
    admin = requests.post(
        f"{url}/api/customers",
        json=body,
        timeout=10,
        headers=bearer(authz.mint(JWT_CONFIG, admin=True)),
    )
    assert admin.status_code == 503


@pytest.mark.parametrize(
    "config, mode",
    [
        ({}, "off"),
        ({"AUTH_MODE": ""}, "off"),
        ({"API_TOKENS": "a"}, "tokens"),
        ({"AUTH_MODE": "off", "API_TOKENS": "a"}, "off"),
        ({"AUTH_MODE": "JWT"}, "jwt"),
        ({"AUTH_MODE": "tokens"}, "tokens"),
    ],
)
def test_auth_mode(config, mode):
    assert authz.auth_mode(config) == mode


def test_an_unknown_auth_mode_is_refused():
    with pytest.raises(ValueError):
        authz.auth_mode({"AUTH_MODE": "maybe"})


def test_the_development_secret_is_created_once_private(tmp_path):
    config = {"AUTH_MODE": "jwt", "AUTH_JWT_DEV_SECRET_PATH": str(tmp_path / "run" / "s")}
    verifier = authz.Verifier(config)
    key = verifier.key_for("any token")
    assert verifier.algorithms == ["HS256"] and "development secret" in verifier.source
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "s").st_mode) == 0o600
    assert authz.Verifier(config).key_for("any token") == key
    token = authz.mint(config, customer_id=5)  # what `make token` prints
    assert jwt.decode(token, key, algorithms=["HS256"], audience="shop-api")["sub"] == "5"
    # a configured key always wins
    assert authz.Verifier({**config, "AUTH_JWT_SECRET": SECRET}).key_for("any token") == SECRET


def rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def pem_of(private):
    from cryptography.hazmat.primitives import serialization

    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    "key, configured, accepted",
    [
        (rsa_key, "RS256,HS256,none", ["RS256"]),
        (rsa_key, "", ["RS256"]),
        (ec_key, "", ["ES256"]),
        (ec_key, "RS256,ES256,HS256", ["ES256"]),
    ],
)
def test_a_public_key_accepts_only_its_own_algorithms(key, configured, accepted):
    config = {"AUTH_JWT_PUBLIC_KEY": pem_of(key()), "AUTH_JWT_ALGORITHMS": configured}
    assert authz.Verifier(config).algorithms == accepted


def test_a_bad_key_setting_fails_the_start(start_gateway):
    with pytest.raises(ValueError, match="not a PEM public key"):
        authz.Verifier(
            {"AUTH_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}
        )
    with pytest.raises(ValueError, match="no algorithm"):
        authz.Verifier({"AUTH_JWT_SECRET": SECRET, "AUTH_JWT_ALGORITHMS": "none"})
    with pytest.raises(ValueError):
        start_gateway(AUTH_MODE="jwt", AUTH_JWT_PUBLIC_KEY="-----BEGIN PUBLIC KEY-----\nAAAA")


def test_an_rs256_token_is_verified_with_the_public_key(start_gateway):
    private = rsa_key()
    public_pem = pem_of(private)
    url = start_gateway(AUTH_MODE="jwt", AUTH_JWT_PUBLIC_KEY=public_pem, RPC_TIMEOUT=1)
    signed = jwt.encode(claims(scope="shop:admin", sub="admin"), private, algorithm="RS256")
    assert post_product(url, signed).status_code == 503  # past authorization: no service
    # the public key used as an HMAC secret (the classic algorithm confusion)
    header = b64({"alg": "HS256", "typ": "JWT"})
    payload = b64(claims(scope="shop:admin", sub="admin"))
    signature = (
        base64.urlsafe_b64encode(
            hmac.new(public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        )
        .rstrip(b"=")
        .decode()
    )
    assert post_product(url, f"{header}.{payload}.{signature}").status_code == 401


def test_the_gateway_and_make_token_share_the_development_secret(start_gateway, tmp_path, caplog):
    config = {"AUTH_MODE": "jwt", "AUTH_JWT_DEV_SECRET_PATH": str(tmp_path / "jwt-dev-secret")}
    with caplog.at_level("INFO", logger="gateway.authz"):
        url = start_gateway(**config, RPC_TIMEOUT=1)
    assert any("development secret" in record.getMessage() for record in caplog.records)
    admin = post_product(url, authz.mint(config, admin=True))
    assert admin.status_code == 503  # past authorization: no products service here
    assert post_product(url, authz.mint(JWT_CONFIG, admin=True)).status_code == 401


def test_the_public_key_may_be_a_file_or_one_line(tmp_path):
    pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
    (tmp_path / "key.pem").write_text(pem + "\n")
    assert authz.public_key_pem({"AUTH_JWT_PUBLIC_KEY": str(tmp_path / "key.pem")}) == pem
    one_line = pem.replace("\n", "\\n")
    assert authz.public_key_pem({"AUTH_JWT_PUBLIC_KEY": one_line}) == pem


def jwk_of(private, kid):
    algorithm = (
        jwt.algorithms.RSAAlgorithm
        if hasattr(private, "private_numbers") and not hasattr(private, "curve")
        else jwt.algorithms.ECAlgorithm
    )
    return {**algorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def admin_token(private, algorithm, kid):
    return jwt.encode(
        claims(scope="shop:admin", sub="admin"), private, algorithm=algorithm, headers={"kid": kid}
    )


def post_product(url, token):
    return requests.post(
        f"{url}/api/products",
        json={"name": "p", "price": 1, "stock": 1},
        headers=bearer(token),
        timeout=10,
    )


def past_authorization(response):
    """No products service runs on the gateway-only vhost: a request that passed
    authorization gets the RPC's 503 (not the JWKS one)."""
    return response.status_code == 503 and response.json()["details"].get("reason") != "jwks"


def test_a_jwks_file_picks_the_key_by_kid(start_gateway, tmp_path):
    signer_a, signer_b = rsa_key(), ec_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk_of(signer_a, "a"), jwk_of(signer_b, "b")]}))
    url = start_gateway(
        AUTH_MODE="jwt",
        AUTH_JWT_JWKS=str(path),
        AUTH_JWT_ALGORITHMS="RS256,ES256,HS256",
        RPC_TIMEOUT=1,
    )
    assert past_authorization(post_product(url, admin_token(signer_a, "RS256", "a")))
    assert past_authorization(post_product(url, admin_token(signer_b, "ES256", "b")))
    for token in (
        admin_token(signer_a, "RS256", "b"),  # signed by a, claims to be b
        admin_token(signer_a, "RS256", "c"),  # unknown kid
        admin_token(rsa_key(), "RS256", "a"),  # a stranger's key, a's kid
        jwt.encode(claims(scope="shop:admin", sub="admin"), SECRET, headers={"kid": "a"}),
    ):  # HMAC: never from a JWKS
        answer = post_product(url, token)
        assert answer.status_code == 401, answer.text


class JwksServer:
    """A real HTTP server of a JWKS document on a free port, in this process; ``hang``
    makes it accept connections and never answer."""

    def __init__(self, keys):
        import http.server
        import threading

        document = json.dumps({"keys": keys}).encode()
        self.hang = False
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                while outer.hang:
                    time.sleep(0.05)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.hang = False
        self.server.shutdown()
        self.server.server_close()


def test_a_jwks_url_is_fetched_once_and_a_hung_one_is_a_bounded_503(start_gateway):
    signer = rsa_key()
    idp = JwksServer([jwk_of(signer, "k1")])
    try:
        url = start_gateway(
            AUTH_MODE="jwt",
            AUTH_JWT_JWKS=idp.url,
            AUTH_JWT_JWKS_TIMEOUT=1,
            AUTH_JWT_JWKS_REFETCH_SECONDS=0,
            RPC_TIMEOUT=1,
        )
        for _ in range(3):
            assert past_authorization(post_product(url, admin_token(signer, "RS256", "k1")))
        assert idp.fetches == 1  # cached, not fetched per request
        idp.hang = True
        started = time.monotonic()
        # an unknown kid makes the gateway fetch again (the IdP may have rotated its keys)
        answer = post_product(url, admin_token(rsa_key(), "RS256", "k2"))
        elapsed = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert answer.json()["details"] == {"reason": "jwks"}
        assert elapsed < 3, elapsed  # AUTH_JWT_JWKS_TIMEOUT (1 s), not forever
        # a known kid is still verified from the cache while the IdP hangs
        assert past_authorization(post_product(url, admin_token(signer, "RS256", "k1")))
    finally:
        idp.close()


def test_secrets_and_tokens_never_reach_the_logs(start_gateway, caplog):
    """Every log record of a jwt gateway and a tokens gateway, at DEBUG, across good and
    bad tokens: neither the secrets nor any token presented appear in them."""
    static_token = "static-" + uuid.uuid4().hex
    with caplog.at_level("DEBUG"):
        jwt_url = start_gateway(**JWT_CONFIG, RPC_TIMEOUT=1)
        tokens_url = start_gateway(AUTH_MODE="tokens", API_TOKENS=static_token, RPC_TIMEOUT=1)
        presented = [
            authz.mint(JWT_CONFIG, admin=True),
            authz.mint(JWT_CONFIG, customer_id=1),
            *tokens(1, 2).values(),
        ]
        for token in presented:
            post_product(jwt_url, token)
            requests.get(f"{jwt_url}/api/customers/1", headers=bearer(token), timeout=10)
        for token in (static_token, static_token + "x"):
            post_product(tokens_url, token)
    assert len(caplog.records) > 5  # the gateways did log (start lines, 503s)
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    for secret in [SECRET, static_token] + [token for token in presented if token]:
        for part in secret.split("."):  # no JWT segment either (a signature is the secret's)
            if len(part) > 16:
                assert part not in logged


def test_the_signup_rule_is_read_as_the_settings_check_reads_it():
    """``AUTH_SIGNUP`` passes the settings check in any case; the gate once compared the
    raw value to "admin", so ``Admin`` left sign-up open."""
    assert authz.Gate({"AUTH_MODE": "off", "AUTH_SIGNUP": "Admin"}).signup_is_admins
    assert not authz.Gate({"AUTH_MODE": "off"}).signup_is_admins
