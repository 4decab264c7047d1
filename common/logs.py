"""Structured logs: one JSON object per line, with the request id of the worker.

* :class:`JsonFormatter` (config.yml ``LOGGING``) renders every record as JSON: time,
  level, logger, message, the worker's ``service``/``method``/``request_id`` when there is
  one, any ``extra`` fields, and the traceback as one string field.
* :class:`WorkerLog`, a dependency every service declares, writes one line per worker:
  ``{"event": "worker", "service", "method", "request_id", "duration_ms", "outcome"}``
  where ``outcome`` is ``ok`` or the error code (``insufficient_stock``...). Unexpected
  errors are logged with their traceback by Nameko's container, once, in the service where
  they happen.
* Inside a worker every line also carries the ``trace_id`` and ``span_id`` of its span
  (:mod:`common.tracing`): the same trace id in every service for one request.
* The request id comes from the gateway (``X-Request-ID``, or one it makes) and travels in
  Nameko's context data, so every service sees the same id for one HTTP request.
"""

import json
import logging
import time
from typing import Any

from eventlet.corolocal import local
from nameko.extensions import DependencyProvider

from common.errors import ExcInfo, outcome_of
from common.tracing import trace_fields

REQUEST_ID_KEY = "request_id"

_current = local()  # per green thread: the worker being run, if any
log = logging.getLogger("shop.worker")

# No record carries the thread's name: JsonFormatter never writes it, and under eventlet
# ``threading.current_thread()`` (which every LogRecord calls) builds a dummy thread per
# green thread: 10 % of a products process's CPU under `make bench` (py-spy).
logging.logThreads = False


def current_worker_fields() -> dict[str, Any]:
    """``service``, ``method`` and ``request_id`` of the worker running in this green
    thread (empty outside a worker)."""
    return getattr(_current, "fields", {})


class JsonFormatter(logging.Formatter):
    RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **current_worker_fields(),
            **trace_fields(),
        }
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in self.RESERVED
        )
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    converter = time.gmtime  # type: ignore[assignment]  # UTC times; a C function, not a method


class WorkerLog(DependencyProvider):
    """One JSON line per worker: what ran, for which request, how long, how it ended."""

    def worker_setup(self, worker_ctx: Any) -> None:
        _current.fields = {
            "service": worker_ctx.service_name,
            "method": worker_ctx.entrypoint.method_name,
            REQUEST_ID_KEY: worker_ctx.context_data.get(REQUEST_ID_KEY),
        }
        _current.started = time.monotonic()

    def worker_result(
        self, worker_ctx: Any, result: Any = None, exc_info: ExcInfo | None = None
    ) -> None:
        exc = exc_info[1] if exc_info else None
        outcome = outcome_of(exc)
        started = getattr(_current, "started", time.monotonic())
        extra = {
            "event": "worker",
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
            "outcome": outcome,
        }
        if outcome == "internal_error":  # what it was, even where it is not a crash here
            extra["error_type"] = getattr(exc, "exc_type", None) or type(exc).__name__
        log.info("worker", extra=extra)

    def worker_teardown(self, worker_ctx: Any) -> None:
        _current.fields = {}
