"""Optional bearer-token auth for write routes: ``AUTH_MODE`` tokens (gateway/authz.py).

Used when ``AUTH_MODE`` is ``tokens``, or empty with ``API_TOKENS`` configured (config.yml;
a comma-separated list in the environment); off by default, so the seed's curls work as
written. When on, every write (POST, PUT, PATCH, DELETE) needs ``Authorization: Bearer
<token>``: 401 without one, 403 with a wrong one. Tokens are compared in constant time,
against every configured token.
"""
import hmac

from gateway.exceptions import Forbidden, Unauthorized

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def configured_tokens(config):
    raw = config.get("API_TOKENS") or []
    if not isinstance(raw, list):  # "a,b" from the environment (YAML may make it a number)
        raw = str(raw).split(",")
    return [str(token).strip().encode() for token in raw if str(token).strip()]


def authorize(request, tokens):
    """Raise Unauthorized / Forbidden unless ``request`` may proceed."""
    if not tokens or request.method not in WRITE_METHODS:
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("this route needs Authorization: Bearer <token>")
    presented = presented.strip().encode()
    matches = [hmac.compare_digest(presented, token) for token in tokens]  # no short cut
    if not any(matches):
        raise Forbidden("the bearer token is not valid")
