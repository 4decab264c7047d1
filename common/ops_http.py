"""A service process's own small HTTP listener, for operators and their tools.

``OPS_HTTP_ADDRESS`` (``host:port``; empty: no listener) is where a customers, products
or orders process answers:

* ``GET /health``: ``200 {"status": "ok"}`` while the process serves (liveness);
* ``GET /metrics``: its Prometheus metrics (:mod:`common.metrics`).

Answers are made in the connection's green thread, never by a nameko worker, so a
process whose workers are all busy (or stuck on a lock) still answers its probe and its
scrape. Under `make up` every process gets a port of its own (scripts/supervisor.py,
``OPS_HTTP_PORTS``); anything else is a JSON 404 or 405.
"""
import json
import logging

import eventlet
from eventlet import wsgi
from nameko.extensions import DependencyProvider

from common.metrics import exposition

OPS_HTTP_ADDRESS_KEY = "OPS_HTTP_ADDRESS"
SOCKET_TIMEOUT = 10.0  # seconds a scrape may stay silent before its connection is closed

log = logging.getLogger(__name__)


def parse_address(address):
    host, _, port = str(address).rpartition(":")
    return (host or "0.0.0.0", int(port))


def _json(start_response, status, body, headers=()):
    payload = json.dumps(body, separators=(",", ":")).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(payload))), *headers])
    return [payload]


def ops_app(environ, start_response):
    """The WSGI application of the listener (module docstring)."""
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
    routes = {"/health": _health, "/metrics": _metrics}
    if path not in routes:
        return _json(start_response, "404 Not Found",
                     {"error": "not_found", "message": f"no route for {path}", "details": {}})
    if method not in ("GET", "HEAD"):
        return _json(start_response, "405 Method Not Allowed",
                     {"error": "method_not_allowed", "message": f"{method} is not allowed here",
                      "details": {"allowed": ["GET", "HEAD"]}}, [("Allow", "GET, HEAD")])
    return routes[path](start_response)


def _health(start_response):
    return _json(start_response, "200 OK", {"status": "ok"})


def _metrics(start_response):
    body, content_type = exposition()
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


class OpsHttp(DependencyProvider):
    """Runs the listener for the life of the container (nothing for workers)."""

    def setup(self):
        address = self.container.config.get(OPS_HTTP_ADDRESS_KEY)
        self.address = parse_address(address) if address else None
        self.sock = None
        self.server_thread = None

    def start(self):
        if self.address is None:
            return
        self.sock = eventlet.listen(self.address, backlog=128)
        self.server_thread = eventlet.spawn(
            wsgi.server, self.sock, ops_app, log=log, log_output=False,
            socket_timeout=SOCKET_TIMEOUT, debug=False,
        )

    def stop(self):
        if self.server_thread is not None:
            self.server_thread.kill()
            self.server_thread = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    kill = stop

    def get_dependency(self, worker_ctx):
        return None
