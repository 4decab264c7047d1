"""The read replica's replay lag, as the process reading from it sees it:
``shop_db_replica_lag_seconds{service}`` (:mod:`common.metrics`).

:class:`ReplicaLagProbe` asks the replica itself, every ``interval`` seconds (never per
request), in one autocommit statement (:data:`LAG`) that needs no privilege:

* **caught up** (everything the WAL receiver got is replayed): 0, however long ago the
  primary last wrote. ``now() - pg_last_xact_replay_timestamp()`` alone would grow while
  the primary is idle;
* **behind**: ``now() - pg_last_xact_replay_timestamp()``, the age of the last
  transaction replayed, i.e. how stale a read there may be;
* not a standby at all (the URI names a primary): 0.

The blind spot, documented in docs/ALERTS.md: a replica whose WAL receiver lost the
primary, and replayed all it had received, reports 0 (the primary's replay lag, which
would see it, is readable only with the ``pg_monitor`` role, which the services' roles
do not have). A measurement that fails or is not answered within ``timeout`` sets NaN:
the lag is unknown, and the replica's own trouble shows in ``shop_db_replica_up``.
"""

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import eventlet
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from common.metrics import DB_REPLICA_LAG

log = logging.getLogger(__name__)

PROBE_INTERVAL = 5.0  # seconds between measurements (a Prometheus scrape interval)

LAG = text("""
    SELECT CASE
        WHEN NOT pg_is_in_recovery() THEN 0
        WHEN pg_last_wal_receive_lsn() IS NOT NULL
             AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
        ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))
    END
""")


def replica_lag(session: Session) -> float:
    """Seconds the replica behind ``session`` is behind (see the module docstring); NaN
    if it has replayed nothing yet."""
    value = session.execute(LAG).scalar()
    return math.nan if value is None else float(value)


class ReplicaLagProbe:
    """Measures the lag of the replica ``engine`` for ``service`` and shows it in the
    gauge; ``open_session(engine)`` gives an autocommit session
    (:func:`common.db.autocommit_session`). :meth:`run` loops (a container's managed
    thread) until :meth:`stop`, and never raises."""

    def __init__(
        self,
        engine: Engine,
        service: str,
        open_session: Callable[[Engine], AbstractContextManager[Session]],
        timeout: float,
        interval: float = PROBE_INTERVAL,
        sleep: Callable[[float], Any] = eventlet.sleep,
    ) -> None:
        self.engine = engine
        self.open_session = open_session
        self.timeout = timeout
        self.interval = interval
        self.sleep = sleep
        self.gauge = DB_REPLICA_LAG.labels(service)
        self.stopped = False

    def measure(self) -> float:
        """One measurement, bounded by ``timeout``; sets and returns the gauge's value
        (NaN when the replica fails or is silent)."""
        if self.stopped:
            return math.nan
        started = time.monotonic()
        try:
            with eventlet.Timeout(self.timeout):
                with self.open_session(self.engine) as session:
                    lag = replica_lag(session)
        except eventlet.Timeout:
            log.debug("replica lag: no answer within %gs", self.timeout)
            lag = math.nan
        except Exception as exc:  # noqa: BLE001 - a probe never kills its container
            log.debug("replica lag: %s (after %.2fs)", exc, time.monotonic() - started)
            lag = math.nan
        self.gauge.set(lag)
        return lag

    def run(self) -> None:
        while not self.stopped:
            self.measure()
            self.sleep(self.interval)

    def stop(self) -> None:
        """No measurement starts after this (the engine is being disposed)."""
        self.stopped = True
