"""One error hierarchy for every service and the gateway.

Modelled on ``werkzeug.exceptions``: each class carries an HTTP ``status``, a stable
machine-readable ``error`` code and a default ``description``. Services raise them from
their RPC methods; Nameko serializes them onto the reply and, because every subclass is
registered with :func:`nameko.exceptions.deserialize_to_instance`, the caller gets the
same class back (provided it imports the module that defines it). The gateway renders any
of them, and werkzeug's own routing errors, as one JSON envelope::

    {"error": "product_not_found", "message": "...", "details": {...}}

Nameko stringifies non-string exception arguments on the wire, so ``details`` travel as a
JSON string and are decoded again in ``__init__``.
"""
import json

from nameko.exceptions import deserialize_to_instance


class ShopError(Exception):
    """Base of every error a client may see. Never raised for bugs: those are 500s."""

    status = 500
    error = "internal_error"
    description = "The server could not complete the request."

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        deserialize_to_instance(cls)

    def __init__(self, message=None, details=None):
        if isinstance(details, str):  # arrived over RPC, see module docstring
            details = json.loads(details)
        self.message = message or self.description
        self.details = details or {}
        super().__init__(self.message, json.dumps(self.details))

    def __str__(self):
        return self.message

    def to_dict(self):
        """The JSON envelope the gateway answers with."""
        return {"error": self.error, "message": self.message, "details": self.details}


deserialize_to_instance(ShopError)


class BadRequest(ShopError):
    status = 400
    error = "bad_request"
    description = "The request could not be understood."


class Unauthorized(ShopError):
    status = 401
    error = "unauthorized"
    description = "Authentication is required."


class Forbidden(ShopError):
    status = 403
    error = "forbidden"
    description = "The credentials do not allow this request."


class NotFound(ShopError):
    status = 404
    error = "not_found"
    description = "The requested resource does not exist."


class MethodNotAllowed(ShopError):
    status = 405
    error = "method_not_allowed"
    description = "The method is not allowed for this resource."


class Conflict(ShopError):
    status = 409
    error = "conflict"
    description = "The request conflicts with the current state of the resource."


class RequestTimeout(ShopError):
    status = 408
    error = "request_timeout"
    description = "The request was not received in time."


class PayloadTooLarge(ShopError):
    status = 413
    error = "payload_too_large"
    description = "The request body is too large."


class UnsupportedMediaType(ShopError):
    status = 415
    error = "unsupported_media_type"
    description = "The request body must be JSON."


class UriTooLong(ShopError):
    status = 414
    error = "uri_too_long"
    description = "The request line is too long."


class HeadersTooLarge(ShopError):
    status = 431
    error = "headers_too_large"
    description = "The request headers are too large or too many."


class ClientClosedRequest(ShopError):
    """The client closed its side of the connection before its request ran (nginx's 499):
    the request is not executed; a client still reading gets this."""

    status = 499
    error = "client_closed_request"
    description = "The client closed the connection before the request was executed."


class ValidationError(ShopError):
    """Well-formed request whose content is invalid; ``details`` maps field -> messages."""

    status = 422
    error = "validation_error"
    description = "The request body is invalid."


class InternalError(ShopError):
    status = 500
    error = "internal_error"
    description = "Internal server error."


class ServiceUnavailable(ShopError):
    status = 503
    error = "service_unavailable"
    description = "A service needed for this request is unavailable; retry later."


class GatewayTimeout(ShopError):
    status = 504
    error = "timeout"
    description = "A service did not answer in time; retry later."


_BY_STATUS = {
    cls.status: cls
    for cls in (
        BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict,
        RequestTimeout, PayloadTooLarge, UriTooLong, UnsupportedMediaType, HeadersTooLarge,
        ValidationError, ServiceUnavailable, GatewayTimeout,
    )
}


def from_http_status(status, message=None, details=None):
    """The ShopError for a bare HTTP status (e.g. a werkzeug routing error)."""
    cls = _BY_STATUS.get(status, InternalError if status >= 500 else BadRequest)
    return cls(message, details)


def outcome_of(exc):
    """How a call ended, in one word shared by logs, metrics and traces: ``ok`` when
    ``exc`` is None, the error code of a ShopError (``insufficient_stock``...), else
    ``internal_error`` (a crash)."""
    if exc is None:
        return "ok"
    if isinstance(exc, ShopError):
        return exc.error
    return "internal_error"
