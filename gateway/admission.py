"""Admission control: what a gateway process takes on at once, and what it sheds.

Without it, every request a gateway accepted waited for a worker however many were ahead
of it: under 16x the load it could serve, orders were answered after 15 s, and a product
read waited behind them for as long, three times its bound (docs/ARCHITECTURE.md,
"Overload"). Here each request with a deadline (:mod:`common.deadline`) goes through a
:class:`Lane`:

* **reads** (GET) and **writes** (POST) have a lane each, with its own limit of requests
  in flight (``ADMISSION_READS``, ``ADMISSION_WRITES``) and its own workers: reads keep
  their bound under any order load, and the other way round;
* a request that finds its lane full waits, strictly first come first served, for at most
  ``ADMISSION_QUEUE_SECONDS``, and never past its own deadline; then it is **shed**:
  ``503 service_unavailable`` with ``details.reason: overloaded`` and ``Retry-After``,
  early, instead of a 504 after its whole bound (and instead of work done for a client
  that has already given up). An admitted request then has the rest of its bound for
  its RPCs, which the limit keeps short: no more than the limit is ever waiting
  downstream;
* at most ``ADMISSION_MAX_WAITING`` requests wait in a lane; more are shed at once (the
  memory a flood of connections can take is bounded).

The queue-time budget, not an adaptive limit, is what bounds latency: whatever the limit,
an admitted request waited at most the budget. The limits only set how much work is in
flight downstream; the defaults fit `make up` (one orders process of ``MAX_WORKERS``
workers): with more gateway processes, or more service processes, size them so that
the gateways' sum is about the services' workers (docs/DEPLOY.md).

Routes without a deadline (``/ready``, the docs) take no lane: the gateway's worker pool
is sized for both lanes plus :data:`SPARE_WORKERS` for them.
"""

import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import eventlet
from eventlet.event import Event
from nameko.extensions import SharedExtension

from common.errors import Reason, ServiceUnavailable
from common.metrics import ADMISSION_IN_FLIGHT, ADMISSION_SHED, child
from common.settings import settings_of

SPARE_WORKERS = 4  # gateway workers beyond the lanes': /ready, /api/openapi.json, /api/docs
READ_METHODS = frozenset({"GET", "HEAD"})


class Lane:
    """At most ``limit`` requests in flight; others wait in arrival order, each at most
    ``queue_seconds`` and never past its deadline, at most ``max_waiting`` of them.

    First come, first served, strictly: a slot that frees up is handed to the oldest
    waiter, never taken by a request that arrives meanwhile (eventlet's Semaphore lets a
    newcomer take it, and under load a waiter could lose its turn again and again until
    its budget ran out: `make bench` saw 1 s waits at 48 connections)."""

    def __init__(self, name: str, limit: int, queue_seconds: float, max_waiting: int) -> None:
        self.name = name
        self.limit = limit
        self.queue_seconds = queue_seconds
        self.max_waiting = max_waiting
        self.in_flight = 0
        self._waiters: deque[Event] = deque()
        self._in_flight_gauge = child(ADMISSION_IN_FLIGHT, name)
        self._shed = child(ADMISSION_SHED, name)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextmanager
    def admitted(self, deadline: float) -> Iterator[None]:
        """Hold a slot of the lane for the block; raises :class:`ServiceUnavailable`
        (``reason: overloaded``, ``Retry-After``) when none frees up in time."""
        if not self._take(min(self.queue_seconds, deadline - time.time())):
            self._shed.inc()
            raise self.overloaded()
        self._in_flight_gauge.inc()
        try:
            yield
        finally:
            self._in_flight_gauge.dec()
            self._release()

    def _take(self, wait: float) -> bool:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        if wait <= 0 or len(self._waiters) >= self.max_waiting:
            return False
        turn = Event()
        self._waiters.append(turn)
        try:
            with eventlet.Timeout(wait, False):
                turn.wait()
        except BaseException:  # the waiter is killed (its connection went): no slot lost
            if turn.ready():
                self._release()
            else:
                self._waiters.remove(turn)
            raise
        if turn.ready():  # handed a slot (in time, or as the budget ran out)
            return True
        self._waiters.remove(turn)
        return False

    def _release(self) -> None:
        """Hand the slot to the oldest waiter, or free it."""
        if self._waiters:
            self._waiters.popleft().send(True)  # in_flight unchanged: the slot moves on
        else:
            self.in_flight -= 1

    def overloaded(self) -> ServiceUnavailable:
        retry_after = max(1, math.ceil(self.queue_seconds))
        error = ServiceUnavailable(
            f"the gateway is working on all the {self.name} it takes at once ({self.limit}) "
            f"and none finished in time for this one; retry in {retry_after} s",
            {"reason": Reason.OVERLOADED, "lane": self.name, "retry_after_seconds": retry_after},
        )
        error.headers = {"Retry-After": str(retry_after)}
        return error


class Admission(SharedExtension):
    """The lanes of a gateway process (module docstring), shared by its routes. Sizes
    the container's worker pool to fit both lanes and the spare workers."""

    lanes: dict[str, Lane]

    def setup(self) -> None:
        settings = settings_of(self.container.config)
        queue_seconds, max_waiting = (
            settings.admission_queue_seconds,
            settings.admission_max_waiting,
        )
        self.lanes = {
            "reads": Lane("reads", settings.admission_reads, queue_seconds, max_waiting),
            "writes": Lane("writes", settings.admission_writes, queue_seconds, max_waiting),
        }
        workers = settings.admission_reads + settings.admission_writes + SPARE_WORKERS
        container: Any = self.container
        if container.max_workers < workers:  # nameko sized its pool from max_workers
            container.max_workers = workers
            container._worker_pool.resize(workers)

    def lane_for(self, method: str) -> Lane:
        return self.lanes["reads" if method in READ_METHODS else "writes"]
