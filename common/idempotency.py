"""Idempotency keys: a client retry with the same key gets the first outcome.

A service stores the key with the resource it created (unique column), together with a
fingerprint of the validated request. A replay with the same key and the same
fingerprint returns the stored resource; the same key with a different request is a 422.
"""

import hashlib
import json
import re
from typing import Any

# The errors are part of the contract (common/errors.py); re-exported for the services.
from common.errors import IdempotencyKeyReused, InvalidIdempotencyKey

__all__ = [
    "IdempotencyKeyReused",
    "InvalidIdempotencyKey",
    "KEY_PATTERN",
    "checked_key",
    "ensure_same_request",
    "fingerprint",
]

KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,100}")  # printable ASCII, no spaces (fullmatch)


def checked_key(key: object) -> str | None:
    """``key`` if it is ``None`` or well-formed; raises InvalidIdempotencyKey (400)."""
    if key is None or (isinstance(key, str) and KEY_PATTERN.fullmatch(key)):
        return key
    raise InvalidIdempotencyKey(details={"idempotency_key": str(key)[:100]})


def fingerprint(data: Any) -> str:
    """A stable hash of a validated request (dict keys sorted, decimals as strings)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def ensure_same_request(
    key: str | None, stored_fingerprint: str | None, request_fingerprint: str
) -> None:
    if stored_fingerprint != request_fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used with a different request",
            {"idempotency_key": key},
        )
