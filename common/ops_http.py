"""A service process's own small HTTP listener, for operators and their tools.

``OPS_HTTP_ADDRESS`` (``host:port``; empty: no listener) is where a customers, products
or orders process answers:

* ``GET /health``: ``200 {"status": "ok"}`` while the process serves (liveness);
* ``GET /ready``: ``200 {"status": "ready", "checks": {"rabbitmq": {"status": "ok"},
  "database": {"status": "ok"}}}`` when the broker is reachable and not blocking
  publishers (:class:`common.broker.BrokerWatch`) and the service's database answers
  ``SELECT 1``; else 503 with ``"status": "not_ready"`` and what failed. Each check is
  bounded by ``READY_TIMEOUT`` (2 s);
* ``GET /metrics``: its Prometheus metrics (:mod:`common.metrics`).

Answers are made in the connection's green thread, never by a nameko worker, so a
process whose workers are all busy (or stuck on a lock) still answers its probe and its
scrape. Under `make up` every process gets a port of its own (scripts/supervisor.py,
``OPS_HTTP_PORTS``); anything else is a JSON 404 or 405.
"""

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import eventlet
from eventlet import wsgi
from nameko.extensions import DependencyProvider

from common.broker import BrokerWatch
from common.db import Database, ShopDatabaseWrapper, check_database
from common.errors import Reason, ShopError
from common.metrics import exposition
from common.rpc import broker_status
from common.settings import settings_of

SOCKET_TIMEOUT = 10.0  # seconds a scrape may stay silent before its connection is closed

log = logging.getLogger(__name__)


def parse_address(address: object) -> tuple[str, int]:
    host, _, port = str(address).rpartition(":")
    return (host or "0.0.0.0", int(port))


def _json(start_response, status, body, headers=()):
    payload = json.dumps(body, separators=(",", ":")).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *headers],
    )
    return [payload]


def route(
    routes: Mapping[str, Callable[[Any], list[bytes]]],
    environ: Mapping[str, Any],
    start_response: Any,
) -> list[bytes]:
    """Answer with ``routes[path](start_response)``; JSON 404 / 405 otherwise."""
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
    if path not in routes:
        return _json(
            start_response,
            "404 Not Found",
            {"error": "not_found", "message": f"no route for {path}", "details": {}},
        )
    if method not in ("GET", "HEAD"):
        return _json(
            start_response,
            "405 Method Not Allowed",
            {
                "error": "method_not_allowed",
                "message": f"{method} is not allowed here",
                "details": {"allowed": ["GET", "HEAD"]},
            },
            [("Allow", "GET, HEAD")],
        )
    return routes[path](start_response)


def _health(start_response):
    return _json(start_response, "200 OK", {"status": "ok"})


def _metrics(start_response):
    body, content_type = exposition()
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


class OpsHttp(DependencyProvider):
    """Runs the listener for the life of the container (nothing for workers)."""

    broker_watch = BrokerWatch()

    def setup(self) -> None:
        settings = settings_of(self.container.config)
        address = settings.ops_http_address
        self.address = parse_address(address) if address else None
        self.ready_timeout = settings.ready_timeout
        self.sock = None
        self.server_thread = None
        self.routes = {"/health": _health, "/ready": self._ready, "/metrics": _metrics}

    def app(self, environ: Mapping[str, Any], start_response: Any) -> Iterable[bytes]:
        """The WSGI application of the listener (module docstring)."""
        return route(self.routes, environ, start_response)

    def _ready(self, start_response):
        checks = {"rabbitmq": broker_status(self.broker_watch), "database": self._database()}
        if not self.broker_watch.connected:
            checks["rabbitmq"] = {"status": "service_unavailable", "reason": Reason.BROKER}
        ready = all(check["status"] == "ok" for check in checks.values())
        body = {"status": "ready" if ready else "not_ready", "checks": checks}
        return _json(start_response, "200 OK" if ready else "503 Service Unavailable", body)

    def _database(self):
        """``{"status": "ok"}`` if the service's database answers within the bound."""
        databases = [ext for ext in self.container.dependencies if isinstance(ext, Database)]
        if not databases:
            return {"status": "ok", "database": "none"}
        db = ShopDatabaseWrapper(databases[0].Session, databases[0].engine)
        try:
            with eventlet.Timeout(self.ready_timeout):
                check_database(db)
            return {"status": "ok"}
        except eventlet.Timeout:
            return {"status": "timeout", "message": f"no answer within {self.ready_timeout:g}s"}
        except ShopError as exc:
            return {"status": exc.error, "message": exc.message, "reason": Reason.DATABASE}
        except Exception as exc:  # noqa: BLE001 - e.g. no pooled connection free in time
            return {
                "status": "service_unavailable",
                "message": type(exc).__name__,
                "reason": Reason.DATABASE,
            }
        finally:
            db.close()

    def start(self) -> None:
        if self.address is None:
            return
        self.sock = eventlet.listen(self.address, backlog=128)
        self.server_thread = eventlet.spawn(
            wsgi.server,
            self.sock,
            self.app,
            log=log,
            log_output=False,
            socket_timeout=SOCKET_TIMEOUT,
            debug=False,
        )

    def stop(self) -> None:
        if self.server_thread is not None:
            self.server_thread.kill()
            self.server_thread = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    kill = stop

    def get_dependency(self, worker_ctx: Any) -> None:
        return None
