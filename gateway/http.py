"""The gateway's HTTP layer: Nameko's ``@http`` with JSON everywhere.

Nameko's stock web server answers unknown routes and wrong methods with werkzeug's HTML
pages, and its entrypoint answers exceptions with ``text/plain`` 400/500 bodies. Here every
answer that is not a success is the JSON envelope of :mod:`common.errors`, whether it comes
from routing (404, 405), from parsing the body (400, 413, 415) or from a service (any
ShopError, which keeps its status). Anything else is a bug: logged with its traceback once,
answered as a bare 500 envelope with no detail.

Every answer carries ``X-Request-ID`` (the client's, or a new one), which also goes to
every service in Nameko's context data. Routes may require a bearer token
(``AUTH_MODE``: :mod:`gateway.authz`, :mod:`gateway.auth`).

A gateway process listens on every address of ``WEB_SERVER_ADDRESS`` (``host:port``, or
several, comma-separated): `make up` runs ``GATEWAY_PROCESSES`` processes over the seed's
three ports, one by default, which on two cores costs less CPU per answer than a process
per port (docs/BENCHMARKS.md, issue 14). Each listening socket gets a configurable backlog
(``WEB_LISTEN_BACKLOG``); eventlet's default of 50 resets connections in bursts. Connections are handled by
:class:`gateway.protocol.JsonHttpProtocol` (JSON errors for malformed heads, idle and
read timeouts of ``HTTP_IDLE_TIMEOUT`` seconds).

``@unpooled_http`` routes (``GET /health``) run in the connection's own green thread, not
in a worker: a gateway whose workers are all busy (or stuck) still answers its liveness
probe.

**Drain on stop.** When the container stops (SIGTERM from supervisord or Kubernetes) the
server stops accepting connections at once; each request in flight is answered, and so is
the next request on each open connection, with ``Connection: close``; an idle connection
is closed. The stop then waits for the workers as Nameko always does. The drain lasts at
most the longest call bound (``RPC_TIMEOUTS``/``RPC_TIMEOUT``) + 1 s.
"""

import json
import re
import socket
import time
import uuid
from functools import partial
from typing import Any

import eventlet
from eventlet.event import Event
from eventlet.greenio import GreenSocket
from eventlet.wsgi import STATE_IDLE, STATE_REQUEST
from nameko.exceptions import ContainerBeingKilled, RemoteError
from nameko.messaging import QueueConsumer
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import BindAddress, WebServer, WsgiApp, parse_address
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from common.deadline import DEADLINE_KEY, from_arrival
from common.errors import BadRequest, InternalError, Reason, ServiceUnavailable, ShopError
from common.logs import REQUEST_ID_KEY
from common.metrics import HTTP_RESPONSES, child
from common.rpc import longest_call_bound
from common.settings import settings_of
from common.tracing import TRACE_HEADERS
from gateway import authz
from gateway.admission import Admission
from gateway.auth import authorize
from gateway.exceptions import (
    ClientClosedRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    from_http_status,
)
from gateway.protocol import (
    CLIENT_SOCKET_KEY,
    CLOSE_AFTER_RESPONSE_KEY,
    JsonHttpProtocol,
    client_is_gone,
    peek,
)

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")  # fullmatch: no trailing newline
DRAIN_IDLE_GRACE = 1.0  # seconds an open keep-alive connection gets to send one more request
REPLY_QUEUE_WAIT = 10.0  # seconds a starting gateway waits for its reply queue to listen
MAX_TRACE_HEADER_CHARS = 512  # a longer traceparent/tracestate is ignored, not forwarded
BODY_KEY = "shop.body"
DEADLINE_ENV_KEY = "shop.deadline"  # in the WSGI environ: the request's deadline
BODY_METHODS = ("POST", "PUT", "PATCH")


def json_response(body, status=200, headers=None):
    return Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def error_response(exc):
    """The JSON envelope for ``exc``; unexpected exceptions become an opaque 500."""
    if isinstance(exc, HTTPException):
        exc = from_http_status(exc.code, exc.description)
    if isinstance(exc, ContainerBeingKilled):  # this gateway is going down: go elsewhere
        exc = ServiceUnavailable(
            "the gateway is restarting; retry", {"reason": Reason.SHUTTING_DOWN}
        )
    if not isinstance(exc, ShopError):
        exc = InternalError()
    headers = dict(getattr(exc, "headers", None) or {})  # e.g. WWW-Authenticate on a 401
    if exc.status == 405 and "allowed" in exc.details:
        headers = {"Allow": ", ".join(exc.details["allowed"])}
    return json_response(exc.to_dict(), exc.status, headers)


def request_id_of(request):
    """The client's ``X-Request-ID`` if it is sane (1-128 printable ASCII), else a new one;
    the same for the whole request."""
    if "shop.request_id" not in request.environ:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request.environ["shop.request_id"] = (
            given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex
        )
    return request.environ["shop.request_id"]


def max_body_bytes(config):
    return settings_of(config).http_max_body_bytes


def read_json(request, max_bytes):
    """The request body parsed as JSON.

    Raises PayloadTooLarge (413) above ``max_bytes``, UnsupportedMediaType (415) for a
    declared non-JSON content type, BadRequest (400) for an empty, non-UTF-8 or malformed
    body. A body without a Content-Type is read as JSON.
    """
    if request.mimetype and request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"expected an application/json body, got {request.mimetype}",
            {"content_type": request.mimetype},
        )
    raw = read_body(request, max_bytes)
    if not raw.strip():
        raise BadRequest("the request body is empty; a JSON object is expected")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8") from None
    except ValueError as exc:
        raise BadRequest("the request body is not valid JSON", {"reason": str(exc)}) from None
    except RecursionError:  # e.g. "[" * 30000: the parser gives up, not the server
        raise BadRequest(
            "the request body is nested too deeply", {"reason": "nesting too deep"}
        ) from None


def read_body(request, max_bytes):
    """The raw request body, at most ``max_bytes``; read once and kept in the environ.

    Raises PayloadTooLarge (413) above ``max_bytes`` (declared or sent), RequestTimeout
    (408) when the client stops sending for ``HTTP_IDLE_TIMEOUT``, BadRequest (400) when
    it closes before sending all it declared."""
    if BODY_KEY in request.environ:
        return request.environ[BODY_KEY]
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(
            f"the body may not exceed {max_bytes} bytes", {"max_bytes": max_bytes}
        )
    try:
        raw = request.stream.read(max_bytes + 1)
    except (TimeoutError, HTTPException) as exc:  # werkzeug's ClientDisconnected wraps both
        if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
            raise RequestTimeout("the request body was not received in time") from None
        raise BadRequest("the request body is shorter than its Content-Length") from None
    if len(raw) > max_bytes:
        raise PayloadTooLarge(
            f"the body may not exceed {max_bytes} bytes", {"max_bytes": max_bytes}
        )
    request.environ[BODY_KEY] = raw
    return raw


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


class JsonWsgiApp(WsgiApp):
    """Nameko's WSGI app (same flow) with routing errors rendered as JSON envelopes."""

    def __call__(self, environ, start_response):
        # nameko 2.14.1's WsgiApp.__call__ with its except branch replaced (it renders
        # werkzeug's HTML error pages); tests/test_upstream_canaries.py fails if it changes
        request = Request(environ, shallow=True)
        adapter = self.url_map.bind_to_environ(environ)
        route = "unmatched"
        try:
            provider, values = adapter.match()
            route = provider.method_name
            request.path_values = values  # type: ignore[attr-defined]  # read by gateway/authz.py
            response = provider.handle_request(request)
        except HTTPException as exc:
            response = error_response(routing_error(exc, environ))
            response.headers[REQUEST_ID_HEADER] = request_id_of(request)
        child(HTTP_RESPONSES, route, str(response.status_code)).inc()
        return self._answer(response, environ, start_response)

    def _answer(self, response, environ, start_response):
        if self.server.draining and CLOSE_AFTER_RESPONSE_KEY in environ:
            environ[CLOSE_AFTER_RESPONSE_KEY]()  # "Connection: close": the client moves on
        return response(environ, start_response)


def routing_error(exc, environ):
    """The ShopError for werkzeug's routing 404 / 405, naming the path or allowed methods."""
    if exc.code == 405:
        allowed = sorted(getattr(exc, "valid_methods", None) or [])
        return from_http_status(
            405, f"{environ['REQUEST_METHOD']} is not allowed here", {"allowed": allowed}
        )
    if exc.code == 404:
        return from_http_status(404, f"no route for {environ.get('PATH_INFO', '')}")
    return from_http_status(exc.code, exc.description)


class JsonWebServer(WebServer):
    """Nameko's web server with JSON errors, a configurable backlog, bounded connections
    (:mod:`gateway.protocol`) and a drain on stop (module docstring)."""

    # set by nameko's WebServer (untyped): its serving thread, socket and start flag; here
    # the first listener's, the others are in _listeners
    _gt: Any
    _sock: Any
    _starting: bool

    def __init__(self):
        super().__init__()
        self.draining = False
        self._drained = Event()
        self._connections = {}  # id -> eventlet's [address, socket, state] of each open one
        self._listeners = []  # (listening socket, its accepting thread), one per address

    @property
    def bind_addrs(self) -> list[BindAddress]:
        """Every address of ``WEB_SERVER_ADDRESS`` (nameko's default ``0.0.0.0:8000``)."""
        raw = settings_of(self.container.config).web_server_address or "0.0.0.0:8000"
        return [parse_address(address.strip()) for address in raw.split(",") if address.strip()]

    @property
    def bind_addr(self) -> BindAddress:
        """The first address. Not called by our ``start``, but nameko reads every attribute
        of an extension when it binds it (``inspect.getmembers``), and upstream's
        ``bind_addr`` cannot parse a list of addresses."""
        return self.bind_addrs[0]

    def accept_from(self, sock):
        """nameko's ``WebServer.run`` for one listening socket of several."""
        while self._is_accepting:
            client, address = sock.accept()
            client.settimeout(self._serv.socket_timeout)
            self.container.spawn_managed_thread(partial(self.process_request, client, address))

    def get_wsgi_app(self):
        return JsonWsgiApp(self)

    def get_wsgi_server(self, sock, wsgi_app, protocol=JsonHttpProtocol, debug=False):
        server = super().get_wsgi_server(sock, wsgi_app, protocol=protocol, debug=debug)
        idle = settings_of(self.container.config).http_idle_timeout
        server.socket_timeout = idle  # every read and write on a connection
        server.keepalive = idle  # the wait for the next request on an idle connection
        return server

    def process_request(self, sock, address):
        """Serve one connection, tracked so that a drain knows what is in flight."""
        connection = [address, sock, STATE_IDLE]
        self._connections[id(connection)] = connection
        try:
            self._serv.process_request(connection)
        except OSError:
            pass  # the client went away mid-request: nothing to answer
        finally:
            self._connections.pop(id(connection), None)

    def drain(self):
        """Stop accepting, answer what is in flight, close idle connections; returns when
        done, at the latest after the longest call bound + 1 s. Idempotent: every caller
        waits for the same drain.

        Two races are closed: connections already in the listen backlog are accepted and
        served before the listener closes (closing it would reset them), and a keep-alive
        connection gets :data:`DRAIN_IDLE_GRACE` to send its next request (answered with
        ``Connection: close``) before an idle one is closed under a client that was
        about to use it."""
        if self.draining:
            self._drained.wait()
            return
        self.draining = True
        self._is_accepting = False
        for listener, accepting in self._listeners:
            accepting.kill()
            self._accept_backlog(listener)
            listener.close()  # new connections are refused: clients go to another gateway
        started = time.monotonic()
        deadline = started + longest_call_bound(self.container.config) + 1
        while time.monotonic() < deadline and (
            self._busy_connections()
            or (self._connections and time.monotonic() < started + DRAIN_IDLE_GRACE)
        ):
            eventlet.sleep(0.05)
        for _, sock, _ in list(self._connections.values()):
            with_shutdown(sock)
        self._drained.send(True)

    def _await_reply_queues(self):
        """Listen only once the container's reply queues are consumed (at most
        :data:`REPLY_QUEUE_WAIT`). nameko starts every extension at once, and the listener
        opens at once while the reply queue is declared over a round trip to RabbitMQ: a
        request taken in between lost its reply (a 504 at its bound; one in six starts of
        a gateway under traffic, found by tests/faults/test_rolling_upgrade.py, where a new
        gateway shares its port with the one it replaces). A broker that does not answer
        in time delays the listener no longer: calls then answer 503 / 504 as before."""
        consumers = [ext for ext in self.container.extensions if isinstance(ext, QueueConsumer)]
        with eventlet.Timeout(REPLY_QUEUE_WAIT, False):
            for consumer in consumers:
                try:
                    consumer._consumers_ready.wait()  # nameko's event, sent once consuming
                except Exception:  # noqa: BLE001 - its start failed: the listener opens
                    pass

    def _accept_backlog(self, sock):
        """Serve the connections the kernel already accepted for us on ``sock``."""
        listener = getattr(sock, "fd", sock)  # the OS socket: never waits
        while True:
            try:
                raw, address = listener.accept()
            except (BlockingIOError, OSError):
                return
            sock = GreenSocket(raw)
            sock.settimeout(self._serv.socket_timeout)
            self.container.spawn_managed_thread(partial(self.process_request, sock, address))

    def _busy_connections(self):
        """Connections with a request being served, or one sent and not yet read."""
        return [
            connection
            for connection in self._connections.values()
            if connection[2] == STATE_REQUEST or _has_pending_data(connection[1])
        ]

    def make_url_map(self):
        """Nameko's map, without werkzeug's redirects: a path with ``//`` in it is a 404
        like any other unknown path, not a 308 to a URL an API client would not follow."""
        url_map = super().make_url_map()
        url_map.merge_slashes = False
        return url_map

    def context_data_from_headers(self, request):
        """The request id travels to every service in Nameko's context data, and so does
        the client's W3C ``traceparent``/``tracestate`` (its trace is continued)."""
        data = {REQUEST_ID_KEY: request_id_of(request)}
        if DEADLINE_ENV_KEY in request.environ:  # see JsonHttpEntrypoint.handle_request
            data[DEADLINE_KEY] = request.environ[DEADLINE_ENV_KEY]
        for header in TRACE_HEADERS:
            value = request.headers.get(header)
            if value and len(value) <= MAX_TRACE_HEADER_CHARS:
                data[header] = value
        return data

    def stop(self):
        self.drain()
        super().stop()

    def start(self):
        # nameko 2.14.1's WebServer.start with a configurable backlog (upstream: eventlet's
        # 50) and a listener per address (upstream: one); tests/test_upstream_canaries.py
        # fails if upstream's changes. One wsgi server serves every listener's connections
        # (eventlet reads SERVER_PORT from the connection, not from the server).
        if not self._starting:
            self._starting = True
            self._await_reply_queues()
            backlog = settings_of(self.container.config).web_listen_backlog
            sockets = [eventlet.listen(address, backlog=backlog) for address in self.bind_addrs]
            for sock in sockets:
                sock.settimeout(None)  # see nameko.web.server.WebServer.start
            self._sock = sockets[0]
            self._serv = self.get_wsgi_server(self._sock, self.get_wsgi_app())
            self._listeners = [
                (sock, self.container.spawn_managed_thread(partial(self.accept_from, sock)))
                for sock in sockets
            ]
            self._gt = self._listeners[0][1]


class JsonHttpEntrypoint(HttpRequestHandler):
    """``@http`` whose errors are JSON envelopes, with a request id and optional auth.

    ShopErrors are expected outcomes; so are RemoteErrors (a bug in a service, already
    logged with its traceback there: logged once, where it happened).

    ``calls`` names the service the route calls: the route's bound is that service's
    call bound (``RPC_TIMEOUTS``/``RPC_TIMEOUT``) counted from the request's arrival
    (:mod:`common.deadline`), and the route goes through admission control
    (:mod:`gateway.admission`). A route that calls nothing bounded by it has none."""

    server = JsonWebServer()
    admission = Admission()

    def __init__(self, method, url, calls=None, **kwargs):
        kwargs.setdefault("expected_exceptions", (ShopError, RemoteError))
        self.calls = calls
        super().__init__(method, url, **kwargs)

    def handle_request(self, request):
        """Authorize, receive the whole body, and only then take a worker: a client that
        sends slowly holds its own connection, never a worker slot. The request arrives
        then: its deadline is set (``calls``), and it waits for a slot of its lane
        (:mod:`gateway.admission`) before it takes a worker, or is shed."""
        config = self.container.config
        try:
            settings = authz.gate(config)
            principal = None
            if settings.mode == "tokens":
                authorize(request, settings.tokens)
            elif settings.mode == "jwt":
                principal = authz.authenticate(request, self.method_name, settings)
            body = None
            if request.method in BODY_METHODS:
                request.shallow = False
                read_body(request, max_body_bytes(config))
                if principal is not None and self.method_name == "create_order":
                    body = read_json(request, max_body_bytes(config))
            authz.authorize(request, self.method_name, principal, body)
        except ShopError as exc:
            response = error_response(exc)
        else:
            if client_is_gone(request.environ.get(CLIENT_SOCKET_KEY)):
                response = error_response(ClientClosedRequest())  # skip the work: nobody waits
            else:
                response = self._admitted(request)
        response.headers[REQUEST_ID_HEADER] = request_id_of(request)
        return response

    def _admitted(self, request):
        """Nameko's handling (a worker, the route's method), within the route's lane."""
        if self.calls is None:
            return super().handle_request(request)
        bound = settings_of(self.container.config).call_bound(self.calls)
        deadline = request.environ[DEADLINE_ENV_KEY] = from_arrival(time.time(), bound)
        try:
            with self.admission.lane_for(request.method).admitted(deadline):
                return super().handle_request(request)
        except ServiceUnavailable as exc:  # shed, no worker taken (nameko's handling
            return error_response(exc)  # answers every error of the route itself)

    def stop(self):
        """Drain the server before this route stops (see the module docstring)."""
        self.server.drain()
        super().stop()

    def response_from_exception(self, exc):
        # Unexpected exceptions were already logged, with traceback, by nameko's container.
        return error_response(exc)


def _has_pending_data(sock):
    return bool(peek(sock))


def with_shutdown(sock):
    """Close both directions of ``sock`` (its reader greenthread then ends)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class UnpooledHttpEntrypoint(JsonHttpEntrypoint):
    """``@unpooled_http``: a route answered without a worker. Its method is called on the
    service class with ``self=None``, in the green thread of the connection, so no
    exhausted worker pool can delay it; it may therefore use no dependency (a liveness
    probe: ``GET /health``)."""

    def handle_request(self, request):
        method = getattr(self.container.service_cls, self.method_name)
        try:
            response = method(None, request)
        except Exception as exc:  # noqa: BLE001 - answered as JSON like any route
            response = error_response(exc)
        response.headers[REQUEST_ID_HEADER] = request_id_of(request)
        return response


http = JsonHttpEntrypoint.decorator
unpooled_http = UnpooledHttpEntrypoint.decorator
