"""Reads served by a streaming read replica, with the primary as the fallback.

A service's :class:`common.db.Database` builds a :class:`ReplicaReads` when config.yml
names a read replica for it (``DB_READ_URIS``, e.g. ``PRODUCTS_READ_DB_URI``), and a
worker reaches it through ``self.db.read(query, complete)``. The contract:

* **What may go to the replica**: only reads whose answer may be stale by the replica's
  lag (the products service's ``get_product`` and ``list_products``). Every write, every
  stock decision (taken under row locks) and every read a decision depends on
  (``get_reservation``, the readiness probe) stays on the primary: the replica is never
  consulted for them.
* **A miss falls back**: ``query(session)`` runs on the replica; when
  ``complete(result)`` is false (a product the replica does not have yet, the last page
  of a list) the same query runs on the primary and its answer is returned. A product
  is readable the moment ``create_product`` returned, whatever the lag.
* **A failure falls back, bounded**: a replica that refuses, fails, or is silent (the
  attempt, connect included, is cut after ``timeout`` seconds with an eventlet timeout:
  libpq's ``connect_timeout`` is not enforced on psycopg2's green, asynchronous
  connections) makes that read run on the primary. Errors of the primary propagate as
  for any read (a 503), and so does a bug: the primary runs the same query.
* **A small breaker**: after a failure the replica rests ``retry_seconds``: reads go
  straight to the primary, paying no timeout. Then one read (one only) tries the replica
  again; its success sends reads back to the replica, its failure rests it again. No
  restart is needed either way.

Each process counts where its reads went, ``shop_db_reads_total{service,source}``
(``replica``; ``primary``: no replica, or it rests; ``fallback_miss``;
``fallback_error``), and shows the breaker as ``shop_db_replica_up{service}`` (1: reads go
to the replica, 0: it rests). The breaker opening and closing is logged once each.
"""

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

import eventlet
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from common.metrics import DB_READS, DB_REPLICA_UP
from common.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# The defaults of DB_REPLICA_TIMEOUT_MS and DB_REPLICA_RETRY_SECONDS (common/settings.py):
# the timeout + the primary's statement_timeout < RPC_TIMEOUT.
DEFAULT_TIMEOUT_MS = Settings.default("DB_REPLICA_TIMEOUT_MS")
DEFAULT_RETRY_SECONDS = Settings.default("DB_REPLICA_RETRY_SECONDS")
SOURCES = ("replica", "primary", "fallback_miss", "fallback_error")


class ReplicaFailed(Exception):
    """The replica could not answer (``reason`` says why); the primary will."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def always(result: object) -> bool:
    return True


class Breaker:
    """Closed: the replica is used. Opened by a failure: not used for ``rest`` seconds;
    then :meth:`allow` lets one caller through as the probe (the others are refused for
    another ``rest``), and the probe's outcome closes or re-opens it.

    :meth:`succeeded` closes it only for an attempt that started after it opened: a read
    that was already in flight when the replica failed proves nothing."""

    def __init__(self, rest: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rest = rest
        self.clock = clock
        self.opened_at: float | None = None  # None: closed
        self.retry_at = 0.0
        self._lock = threading.Lock()  # green under nameko: nothing in it yields anyway

    @property
    def closed(self) -> bool:
        return self.opened_at is None

    def allow(self) -> bool:
        """True if the replica may be tried now (always while closed)."""
        if self.opened_at is None:
            return True
        with self._lock:
            if self.opened_at is None:
                return True
            now = self.clock()
            if now < self.retry_at:
                return False
            self.retry_at = now + self.rest  # this caller is the probe
            return True

    def failed(self) -> bool:
        """Record a failure; True if it opened the breaker (it was closed)."""
        with self._lock:
            now = self.clock()
            opened = self.opened_at is None
            if opened:
                self.opened_at = now
            self.retry_at = now + self.rest
            return opened

    def succeeded(self, started_at: float) -> bool:
        """Record a success of an attempt begun at ``started_at``; True if it closed the
        breaker."""
        with self._lock:
            if self.opened_at is None or started_at < self.opened_at:
                return False
            self.opened_at = None
            return True


class ReplicaReads:
    """Routes reads between ``engine`` (the replica's; None: no replica, every read on
    the primary, counted as such) and the primary (see the module docstring).
    ``open_session(engine)`` is a context manager giving an autocommit session on an
    engine (:func:`common.db.autocommit_session`)."""

    def __init__(
        self,
        engine: Engine | None,
        service: str,
        open_session: Callable[[Engine], AbstractContextManager[Session]],
        timeout: float = DEFAULT_TIMEOUT_MS / 1000,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.service = service
        self.open_session = open_session
        self.timeout = timeout
        self.clock = clock
        self.breaker = Breaker(retry_seconds, clock)
        self.counters = {source: DB_READS.labels(service, source) for source in SOURCES}
        self.up = DB_REPLICA_UP.labels(service)
        if engine is not None:
            self.up.set(1)

    def read(
        self,
        query: Callable[[Session], T],
        primary: Callable[[], AbstractContextManager[Session]],
        complete: Callable[[T], bool] = always,
    ) -> T:
        """``query(session)`` answered by the replica when it can, else by the primary;
        ``primary()`` opens a read session on the primary (``ShopDatabaseWrapper.reading``).
        ``query`` must only read, and return plain data (not ORM objects): its session is
        closed when it returns."""
        if self.engine is None or not self.breaker.allow():
            source = "primary"
        else:
            started_at = self.clock()
            try:
                result = self._on_replica(query)
            except ReplicaFailed as exc:
                self._failed(exc.reason)
                source = "fallback_error"
            else:
                if self.breaker.succeeded(started_at):
                    self.up.set(1)
                    log.info("%s: the read replica answers again; reads go to it", self.service)
                if complete(result):
                    self.counters["replica"].inc()
                    return result
                source = "fallback_miss"
        with primary() as session:
            result = query(session)
        self.counters[source].inc()
        return result

    def _on_replica(self, query):
        """``query`` on the replica within ``timeout``; raises :class:`ReplicaFailed`."""
        assert self.engine is not None  # read() calls this only with a replica
        timeout = eventlet.Timeout(self.timeout)
        try:
            with self.open_session(self.engine) as session:
                return query(session)
        except eventlet.Timeout as exc:
            if exc is not timeout:
                raise
            raise ReplicaFailed(f"no answer within {self.timeout:g}s") from None
        except SQLAlchemyError as exc:
            raise ReplicaFailed(" ".join(str(getattr(exc, "orig", exc)).split())[:200]) from None
        finally:
            timeout.cancel()

    def _failed(self, reason):
        if self.breaker.failed():
            self.up.set(0)
            log.warning(
                "%s: the read replica failed (%s); reads go to the primary, the "
                "replica is tried again in %gs",
                self.service,
                reason,
                self.breaker.rest,
            )

    def dispose(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
