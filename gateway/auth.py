"""Optional bearer-token auth for write routes: ``AUTH_MODE`` tokens (gateway/authz.py).

Used when ``AUTH_MODE`` is ``tokens``, or empty with ``API_TOKENS`` configured (config.yml;
a comma-separated list in the environment); off by default, so the seed's curls work as
written. When on, every write (POST, PUT, PATCH, DELETE) needs ``Authorization: Bearer
<token>``: 401 without one, 403 with a wrong one. Tokens are compared in constant time,
against every configured token.
"""

import hmac

from common.settings import settings_of
from gateway.exceptions import Forbidden, Unauthorized

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def configured_tokens(config):
    """``API_TOKENS`` as bytes (a list, or "a,b" from the environment: common/settings.py)."""
    return [token.encode() for token in settings_of(config).api_tokens]


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
