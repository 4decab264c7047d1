"""Periodic jobs (Nameko timers) whose failures wait for the next tick.

A timer's body that raises is logged by Nameko as a crashed worker, with a traceback, on
every tick for as long as the cause lasts (PostgreSQL restarting or refusing connections
with ``too many clients``, a service down). For the recovery jobs those failures are
expected and harmless: nothing was decided, and the job runs again at its next tick.

:func:`retried_at_next_tick` is the contract, as a context manager or a decorator::

    @config_timer("HOLD_CHECK_INTERVAL")
    @retried_at_next_tick(log, "hold reconciliation")
    def reconcile_holds(self): ...

* it catches the *transient* failures (:data:`TRANSIENT`): the job's own database
  unreachable, busy or restarting (SQLAlchemy ``OperationalError``, ``InterfaceError``,
  a pool checkout timeout) and a :class:`ShopError` from an RPC (503, 504, ...);
* each one is logged as ONE warning line on ``log``, without a traceback: the job, the
  error class and its first words (``extra``: ``event="tick_postponed"``, ``job``,
  ``error``), and is not raised: the timer runs the job again at its next tick;
* anything else (a bug: ``ProgrammingError``, ``TypeError``...) is raised, so Nameko
  logs it with its traceback as before.

The job must leave nothing half-done when it raises: each of its steps commits on its own
or rolls back (the session context managers do), so stopping anywhere is safe.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from common.errors import ShopError

TRANSIENT = (OperationalError, InterfaceError, PoolTimeoutError, ShopError)
MAX_REASON_CHARS = 300


def reason(exc: BaseException) -> str:
    """``exc`` as one short line: its class (the driver's for a DBAPI error) and the first
    words of its message, never the SQL statement nor its parameters."""
    error = getattr(exc, "orig", None) or exc  # a DBAPIError wraps the driver's error
    message = " ".join(str(error).split())[:MAX_REASON_CHARS]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@contextmanager
def retried_at_next_tick(log: logging.Logger, job: str) -> Iterator[None]:
    """Run a timer's body; a transient failure is one warning line, not a crash (see the
    module docstring)."""
    try:
        yield
    except TRANSIENT as exc:
        log.warning(
            "%s postponed to the next tick: %s",
            job,
            reason(exc),
            extra={"event": "tick_postponed", "job": job, "error": type(exc).__name__},
        )
