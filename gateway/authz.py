"""Who may call which route: the gateway's one authorization decision (``AUTH_MODE``).

``AUTH_MODE``:

- ``off``: every route open (the seed's curls work as written);
- ``tokens``: the static ``API_TOKENS`` on write routes (:mod:`gateway.auth`); an empty
  ``AUTH_MODE`` with ``API_TOKENS`` set means ``tokens``, else ``off``;
- ``jwt``: a bearer JWT, verified here (signature with an explicit list of algorithms,
  ``exp``, ``nbf``, ``iss``, ``aud``), on every route that is not public. Its claims give
  the roles: ``scope`` containing ``shop:admin`` is the admin (manages the catalog, reads
  everything); ``sub`` is a customer's id (its own customer record and orders only).

Keys (:class:`Verifier`, parsed once per process): a JWKS (``AUTH_JWT_JWKS``, file or
URL), else a PEM public key (``AUTH_JWT_PUBLIC_KEY``), else an HMAC secret
(``AUTH_JWT_SECRET``); with none of them, a development secret is created once under
``.run/jwt-dev-secret`` (mode 0600) and shared by every gateway and ``make token``.

:data:`RULES` maps each route (the service method's name) to a rule; a route missing from
it is admin-only. The services stay callable by trusted RPC: nothing is checked there.
"""

import logging
import os
import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from common.config import ROOT
from common.errors import CustomerNotFound, OrderNotFound, Reason, ServiceUnavailable
from common.settings import settings_of
from gateway.auth import configured_tokens
from gateway.exceptions import Forbidden, Unauthorized

log = logging.getLogger(__name__)

ADMIN_SCOPE = "shop:admin"
PRINCIPAL_KEY = "shop.principal"
DEV_SECRET_PATH = os.path.join(ROOT, ".run", "jwt-dev-secret")
ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")

# Rules: "public" (no token looked at), "signup" (public unless AUTH_SIGNUP is "admin"),
# "admin", "own_customer" (the path's customer_id is the caller's, else 404),
# "place_order" (the body's customer_id is the caller's, else 403),
# "own_order" (read: the order is the caller's, checked in the worker, else 404),
# "cancel_order" (as own_order; not the admin's: it reads, it does not act for customers).
RULES = {
    "health": "public",
    "metrics_text": "public",
    "ready": "public",
    "ping": "public",
    "openapi_spec": "public",
    "docs": "public",
    "docs_asset": "public",
    "list_products": "public",
    "get_product": "public",
    "create_customer": "signup",
    "list_customers": "admin",
    "create_product": "admin",
    "get_customer": "own_customer",
    "list_customer_orders": "own_customer",
    "create_order": "place_order",
    "get_order": "own_order",
    "cancel_order": "cancel_order",
}


class InvalidToken(Unauthorized):
    """401 for a token that is present but not valid (RFC 6750 ``invalid_token``)."""

    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class MissingToken(Unauthorized):
    headers = {"WWW-Authenticate": "Bearer"}


class Principal:
    """The verified caller: the admin, a customer (``customer_id``), or neither."""

    def __init__(self, claims):
        self.claims = claims
        self.admin = ADMIN_SCOPE in str(claims.get("scope") or "").split()
        sub = claims.get("sub")
        self.customer_id = int(sub) if isinstance(sub, str) and sub.isdigit() else None

    def is_customer(self, customer_id):
        return self.customer_id is not None and str(customer_id) == str(self.customer_id)


def auth_mode(config):
    """``off``, ``tokens`` or ``jwt`` (see the module docstring)."""
    mode = settings_of(config).auth_mode  # checked there: off, tokens, jwt or empty
    if not mode:
        return "tokens" if configured_tokens(config) else "off"
    return mode


def dev_secret_path(config):
    return settings_of(config).auth_jwt_dev_secret_path or DEV_SECRET_PATH


_dev_secrets: dict[str, str] = {}  # path -> secret: read once per process, not per request


def dev_secret(config):
    """The development secret, created (0600) on first use."""
    path = dev_secret_path(config)
    if path not in _dev_secrets:
        _dev_secrets[path] = _read_or_create(path)
    return _dev_secrets[path]


def _read_or_create(path):
    for _ in range(50):  # another process may have created it and not yet written it
        try:
            with open(path) as file:
                secret = file.read().strip()
        except FileNotFoundError:
            break
        if secret:
            return secret
        time.sleep(0.02)
    else:
        raise RuntimeError(f"{path} is empty: remove it to get a new development secret")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another gateway was first
        return _read_or_create(path)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret


def algorithms(config, default):
    """``AUTH_JWT_ALGORITHMS`` (else ``default``), never ``none``."""
    return [alg for alg in settings_of(config).auth_jwt_algorithms or default if alg != "none"]


def public_key_pem(config):
    """``AUTH_JWT_PUBLIC_KEY``: the PEM itself (``\\n`` escapes allowed, for one-line
    environment variables) or the path of a file holding it."""
    value = settings_of(config).auth_jwt_public_key
    if value and not value.startswith("-----BEGIN") and os.path.isfile(value):
        with open(value) as file:
            return file.read().strip()
    return value.replace("\\n", "\n")


def _key_algorithms(key):
    """The asymmetric algorithms a public key object can verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ("ES256", "ES384", "ES512")
    return ()


class Verifier:
    """How this gateway verifies bearer JWTs, built once per process from its config (a
    key is parsed once, not per request). Key sources, the first configured wins:

    - ``AUTH_JWT_JWKS``: a JWKS document (an identity provider's signing keys), a file
      path or an ``http(s)://`` URL; the token's ``kid`` picks the key. A URL is fetched
      with a ``AUTH_JWT_JWKS_TIMEOUT`` bound, cached for ``AUTH_JWT_JWKS_CACHE_SECONDS``
      and fetched again for an unknown ``kid`` (at most once per
      ``AUTH_JWT_JWKS_REFETCH_SECONDS``: unknown kids cannot make it fetch per request); when it cannot be fetched the request is
      a 503, not a 401. Only asymmetric keys are used from it.
    - ``AUTH_JWT_PUBLIC_KEY``: one PEM public key (RSA: RS*/PS*, EC: ES*).
    - ``AUTH_JWT_SECRET``: an HMAC secret (HS256 unless ``AUTH_JWT_ALGORITHMS``).
    - else the development secret (HS256), created under ``.run/``.

    ``AUTH_JWT_ALGORITHMS`` narrows what is accepted; ``none`` never is, and a public key
    never verifies an HMAC algorithm (no algorithm confusion).
    """

    def __init__(self, config):
        self.issuer = issuer(config)
        self.audience = audience(config)
        settings = settings_of(config)
        self.leeway = settings.auth_jwt_leeway
        self._jwks_client: jwt.PyJWKClient | None = None
        self._jwks: jwt.PyJWKSet | None = None
        self._key: Any = None  # a public key object, or an HMAC secret (str)
        jwks = settings.auth_jwt_jwks
        public_key = public_key_pem(config)
        secret = settings.auth_jwt_secret
        if jwks:
            self.algorithms = [a for a in algorithms(config, ["RS256", "ES256"]) if a in ASYMMETRIC]
            self.source = f"JWKS {jwks}"
            if jwks.startswith(("http://", "https://")):
                self._jwks_client = jwt.PyJWKClient(
                    jwks,
                    cache_keys=True,
                    timeout=settings.auth_jwt_jwks_timeout,
                    lifespan=settings.auth_jwt_jwks_cache_seconds,
                    cooldown_duration=settings.auth_jwt_jwks_refetch_seconds,
                )
            else:
                with open(jwks) as file:
                    self._jwks = jwt.PyJWKSet.from_json(file.read())
        elif public_key:
            try:
                self._key = serialization.load_pem_public_key(public_key.encode())
            except ValueError as exc:
                raise ValueError(f"AUTH_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None
            usable = _key_algorithms(self._key)
            self.algorithms = [a for a in algorithms(config, list(usable[:1])) if a in usable]
            self.source = "AUTH_JWT_PUBLIC_KEY"
        elif secret:
            self._key = secret
            self.algorithms = algorithms(config, ["HS256"])
            self.source = "AUTH_JWT_SECRET"
        else:
            self._key = dev_secret(config)
            self.algorithms = ["HS256"]
            self.source = f"development secret {dev_secret_path(config)}"
        if not self.algorithms:
            raise ValueError(f"AUTH_JWT_ALGORITHMS leaves no algorithm for the {self.source}")

    def key_for(self, token):
        """The key that must have signed ``token`` (by ``kid`` for a JWKS)."""
        if self._key is not None:
            return self._key
        if self._jwks_client is not None:
            try:
                return self._jwks_client.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError as exc:
                log.warning("JWKS not fetched: %s", exc)
                raise ServiceUnavailable(
                    "the signing keys could not be fetched", {"reason": Reason.JWKS}
                ) from None
        assert self._jwks is not None  # a JWKS file, the only source left
        kid = jwt.get_unverified_header(token).get("kid")
        keys = [
            key
            for key in self._jwks.keys
            if key.key_id == kid or (kid is None and len(self._jwks.keys) == 1)
        ]
        if not keys:
            raise jwt.InvalidTokenError(f"no signing key with kid {kid!r}")
        return keys[0].key

    def claims(self, token):
        """The verified claims of ``token``; raises InvalidToken (401)."""
        try:
            key = self.key_for(token)
            # a key verifies only its own family (an RSA key handed an ES256 token would
            # make PyJWT raise TypeError, not an invalid-token error)
            accepted = (
                self.algorithms
                if isinstance(key, str)
                else [alg for alg in self.algorithms if alg in _key_algorithms(key)]
            )
            return jwt.decode(
                token,
                key,
                algorithms=accepted,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken("the bearer token is not valid", {"reason": str(exc)}) from None


class Gate:
    """A gateway process's authentication settings, read once from its config: the mode,
    the static tokens (``tokens``) and the JWT :class:`Verifier` (``jwt``)."""

    def __init__(self, config):
        self.mode = auth_mode(config)
        self.tokens = configured_tokens(config)
        self.verifier = Verifier(config) if self.mode == "jwt" else None
        self.signup_is_admins = settings_of(config).auth_signup == "admin"


_gates: dict[
    int, tuple[Any, "Gate"]
] = {}  # id(config) -> (config, Gate): one per container config, built on first use


def gate(config):
    """The :class:`Gate` of ``config`` (built once; a bad setting raises ValueError)."""
    entry = _gates.get(id(config))
    if entry is None or entry[0] is not config:
        entry = _gates[id(config)] = (config, Gate(config))
    return entry[1]


def signing_secret(config):
    """The HS256 secret ``make token`` signs with (a public key cannot sign)."""
    return settings_of(config).auth_jwt_secret or dev_secret(config)


def issuer(config):
    return settings_of(config).auth_jwt_issuer


def audience(config):
    return settings_of(config).auth_jwt_audience


def mint(config, admin=False, customer_id=None, ttl=3600, now=None):
    """A token for local use: HS256 with the configured or development secret."""
    now = int(now if now is not None else time.time())
    claims = {
        "iss": issuer(config),
        "aud": audience(config),
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl),
    }
    if admin:
        claims["scope"] = ADMIN_SCOPE
        claims["sub"] = "admin"
    if customer_id is not None:
        claims["sub"] = str(int(customer_id))
    return jwt.encode(claims, signing_secret(config), algorithm="HS256")


def describe(config):
    """One line for the gateway's start log (builds the :class:`Gate`: a bad setting
    fails the start)."""
    settings = gate(config)
    if settings.mode != "jwt":
        return f"auth mode {settings.mode}"
    verifier = settings.verifier
    return (
        f"auth mode jwt: tokens verified with the {verifier.source} "
        f"({', '.join(verifier.algorithms)}), iss {verifier.issuer!r}, "
        f"aud {verifier.audience!r}"
    )


def bearer_token(request):
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    return presented.strip()


def authenticate(request, route, settings):
    """The verified Principal of a request for ``route`` under ``settings`` (a
    :class:`Gate` in jwt mode), None on a public route. Raises MissingToken /
    InvalidToken (401), ServiceUnavailable (503) when a JWKS URL cannot be fetched."""
    rule = RULES.get(route, "admin")
    if rule == "public" or (rule == "signup" and not settings.signup_is_admins):
        return None
    token = bearer_token(request)
    if token is None:
        raise MissingToken("this route needs Authorization: Bearer <token>")
    principal = Principal(settings.verifier.claims(token))
    request.environ[PRINCIPAL_KEY] = principal
    return principal


def authorize(request, route, principal, body=None):
    """Raise Forbidden / NotFound unless ``principal`` may call ``route`` (jwt mode).
    ``own_order`` routes are finished in the worker by :func:`check_order`."""
    if principal is None:
        return
    rule = RULES.get(route, "admin")
    values = getattr(request, "path_values", {}) or {}
    if principal.admin and rule in ("admin", "signup", "own_customer", "own_order"):
        return
    if rule in ("admin", "signup"):
        raise Forbidden("this route is the admin's")
    if rule == "own_customer":
        if not principal.is_customer(values.get("customer_id")):
            raise CustomerNotFound.for_id(values.get("customer_id"))
    elif rule == "place_order":
        customer_id = body.get("customer_id") if isinstance(body, dict) else None
        if not principal.is_customer(customer_id):
            raise Forbidden("a customer places orders for itself only")
    elif rule in ("own_order", "cancel_order"):
        if principal.customer_id is None:
            raise Forbidden("this route is a customer's")


def check_order(request, order):
    """In the worker of an ``own_order`` route: 404 unless the order is the caller's (an
    admin may read any)."""
    principal = request.environ.get(PRINCIPAL_KEY)
    if principal is None or (principal.admin and request.method == "GET"):
        return
    if not principal.is_customer(order.get("customer_id")):
        raise OrderNotFound.for_id(order.get("id"))
