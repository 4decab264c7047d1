"""Out of rotation: a service process that cannot reach its database stops taking requests.

A process cut off from PostgreSQL (a partition, its host's network) used to keep taking
its share of the RPC queue: every request it took waited out its caller's bound, a 504
for the client, while the other processes of the service were fine. Now the process
watches its database and, within about two seconds of losing it, takes itself out of
rotation:

* it stops consuming its RPC queue (``basic.cancel``): RabbitMQ gives the requests to
  the other processes of the service;
* a request that still reaches it (prefetched before) is put back in the queue
  (``basic.reject`` with requeue), unstarted, for another process;
* its ``/ready`` (:mod:`common.ops_http`) answers 503, so an orchestrator stops routing
  to it too; ``shop_in_rotation{service}`` is 0.

It keeps watching, and consumes again as soon as the database answers. The watch is a
``SELECT 1`` every :data:`PROBE_INTERVAL` on a connection of its own (never one of the
workers' pool, which a burst of legitimate work may hold), bounded by
:data:`PROBE_TIMEOUT`, connect included; a probe that fails drops its connection and the
next one connects anew.

Consumers are cancelled and restarted from the consumer's own green thread (between two
reads of its connection, :meth:`RotatingQueueConsumer.on_iteration`), never from another
one: two green threads reading one socket is an error in eventlet.
"""

import logging
from typing import Any

import eventlet
from nameko.extensions import SharedExtension
from nameko.messaging import QueueConsumer
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from common.db import Database
from common.metrics import IN_ROTATION, child

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.5  # seconds between two probes of the database
PROBE_TIMEOUT = 1.5  # seconds a probe may take, connect included: out after at most 2 s


class Rotation(SharedExtension):
    """Whether this process takes requests (``serving``): True while its database
    answers, or when it has none (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.serving = True
        self._engine: Any = None
        self._connection: Any = None
        self._thread: Any = None

    def setup(self) -> None:
        self._gauge = child(IN_ROTATION, self.container.service_name)
        self._gauge.set(1)

    def start(self) -> None:
        """Watch the service's database (set up by now: every extension's ``setup`` runs
        before any ``start``), if it has one."""
        databases = [ext for ext in self.container.dependencies if isinstance(ext, Database)]
        if not databases:
            return
        database = databases[0]
        connect_args = database.engine_options.get("connect_args", {})
        self._engine = create_engine(database.db_uri, poolclass=NullPool, connect_args=connect_args)
        self._thread = self.container.spawn_managed_thread(self._watch)

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.kill()
            self._thread = None
        self._drop_connection()
        if self._engine is not None:
            self._engine.dispose()

    kill = stop

    def _watch(self):
        while True:
            answered = self.probe()
            if answered != self.serving:
                self.serving = answered
                self._gauge.set(1 if answered else 0)
                if answered:
                    log.warning("the database answers again: back in rotation")
                else:
                    log.warning("the database does not answer: out of rotation")
            eventlet.sleep(PROBE_INTERVAL)

    def probe(self) -> bool:
        """True if the database answered ``SELECT 1`` within :data:`PROBE_TIMEOUT`."""
        try:
            with eventlet.Timeout(PROBE_TIMEOUT):
                if self._connection is None:
                    self._connection = self._engine.connect()
                self._connection.execute(text("SELECT 1"))
            return True
        except (eventlet.Timeout, Exception):  # noqa: BLE001 - any failure: no answer
            self._drop_connection()
            return False

    def _drop_connection(self):
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()  # closes the socket: no goodbye to a silent server
            except Exception:  # noqa: BLE001, S110 - already broken: nothing to close
                pass


class RotatingQueueConsumer(QueueConsumer):
    """nameko's queue consumer (of the RPC queue) that stops consuming while its process
    is out of :class:`Rotation` and consumes again once it is back."""

    rotation = Rotation()

    def __init__(self) -> None:
        super().__init__()
        self._paused = False

    def get_consumers(self, consumer_cls, channel):
        self._paused = False  # a (re)connection starts every consumer
        return super().get_consumers(consumer_cls, channel)

    def on_iteration(self) -> None:
        super().on_iteration()
        serving = self.rotation.serving
        if serving == (not self._paused):
            return
        for consumer in self._consumers.values():
            if serving:
                consumer.consume()
            else:
                consumer.cancel()
        self._paused = not serving
