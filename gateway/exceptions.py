"""The errors only the gateway answers: authentication, HTTP routing and transport
(401, 403, 405, 408, 413, 414, 415, 431, 499). No service raises them, so they are not
part of the service contract (:mod:`common.errors`, which holds every error a service
can send and is all the gateway needs to deserialize them)."""

from common.errors import (
    BadRequest,
    Conflict,
    GatewayTimeout,
    InternalError,
    NotFound,
    ServiceUnavailable,
    ShopError,
    ValidationError,
)


class Unauthorized(ShopError):
    status = 401
    error = "unauthorized"
    description = "Authentication is required."


class Forbidden(ShopError):
    status = 403
    error = "forbidden"
    description = "The credentials do not allow this request."


class MethodNotAllowed(ShopError):
    status = 405
    error = "method_not_allowed"
    description = "The method is not allowed for this resource."


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


_BY_STATUS = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        RequestTimeout,
        PayloadTooLarge,
        UriTooLong,
        UnsupportedMediaType,
        HeadersTooLarge,
        ValidationError,
        ServiceUnavailable,
        GatewayTimeout,
    )
}


def from_http_status(status, message=None, details=None):
    """The ShopError for a bare HTTP status (e.g. a werkzeug routing error)."""
    cls = _BY_STATUS.get(status, InternalError if status >= 500 else BadRequest)
    return cls(message, details)
