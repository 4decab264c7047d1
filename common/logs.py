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
* Where the lines go (:func:`process_log_handler`): stderr, which a container runtime
  collects; or, under `make up`, a file the process writes itself, rotated by size.
"""

import json
import logging
import time
from logging.handlers import RotatingFileHandler
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


class RotatingLogFile(RotatingFileHandler):
    """A log file of one process, rotated once it holds ``maxBytes``.

    Upstream's ``shouldRollover`` formats every record a second time to see whether it
    would still fit (twice the JSON line's cost); this looks at the file's size alone, so
    a file may end one line past ``maxBytes``."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 - upstream's name
        if self.stream is None:
            self.stream = self._open()
        return 0 < self.maxBytes <= self.stream.tell()


def process_log_handler(
    filename: str | None = None, max_bytes: int = 20 * 2**20, backups: int = 2
) -> logging.Handler:
    """The handler of a process's log lines (config.yml ``LOGGING``, ``SHOP_LOG_FILE``):
    stderr when ``filename`` is empty (containers: the runtime collects it), else
    ``filename``, written by the process itself and rotated at ``max_bytes`` keeping
    ``backups`` old files. `make up` gives each process its own file: writing it directly
    spares supervisord reading every line from a pipe and writing it again, which cost
    0.27 ms of CPU per answer (docs/BENCHMARKS.md, issue 14)."""
    if not filename:
        return logging.StreamHandler()
    return RotatingLogFile(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
