"""Whether RabbitMQ is blocking publishers, known to the process within a fraction of a second.

When RabbitMQ raises a memory or disk alarm it stops reading from every connection that
publishes: a publish (Nameko waits for the broker's confirm) and then kombu's cleanup of
the channel wait for as long as the alarm lasts. The broker says so with
``connection.blocked`` / ``connection.unblocked``, but only to a connection that publishes,
and only a connection that reads its socket hears it.

:class:`BrokerWatch` (one per container, shared by every RPC proxy of it) keeps its own
connection for that: it publishes a tiny transient message nobody receives every
``PROBE_INTERVAL`` seconds (the default exchange, a routing key no queue has), reads the
broker's notifications in between, and publishes nothing while blocked (the broker reads
nothing then). Each probe is confirmed: one whose confirm does not come within
:data:`CONFIRM_TIMEOUT` means the broker went silent (a partition: no error, no data), and
:attr:`BrokerWatch.connected` is then False within about two seconds; a service's
``/ready`` says so (:mod:`common.ops_http`). :attr:`BrokerWatch.blocked` is what callers consult before publishing:
:mod:`common.rpc` answers 503 ``service_unavailable`` with ``details.reason:
"broker_blocked"`` instead of queueing work behind the alarm. The process's
``shop_broker_blocked{service}`` gauge (:mod:`common.metrics`) follows it: 1 while
blocked, 0 otherwise.

The watch never delays its container: connecting is bounded, stopping closes the socket
without a handshake, and a broken connection is replaced (with the URIs of
``AMQP_URI``, ``;``-separated alternates included, through kombu).
"""

import logging
from typing import Any

import eventlet
from amqp import Message
from kombu import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import SharedExtension

from common.metrics import BROKER_BLOCKED

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.5  # seconds between probes, and so the longest a new alarm goes unnoticed
PROBE_ROUTING_KEY = "shop.broker-watch.probe"  # bound to no queue: the broker drops it
CONNECT_TIMEOUT = 2.0
CONFIRM_TIMEOUT = 1.5  # seconds a probe's confirm may take: a silent broker shows in 2 s
RECONNECT_DELAY = 1.0


class BrokerWatch(SharedExtension):
    """See the module docstring. ``blocked`` is False until the broker says otherwise,
    and again as soon as the watch's connection is lost (a broker that restarted is not
    blocking anyone). ``connected`` is True while the watch's connection is up: the
    broker is reachable from this process."""

    def __init__(self) -> None:
        super().__init__()
        self.connected = False  # the watch's own connection is up (the broker answers)
        self.blocked = False
        self.reason: str | None = None
        self._connection: Connection | None = None
        self._thread: Any = None  # eventlet's GreenThread
        self._gauge: Any = None  # shop_broker_blocked of this container's service

    def setup(self) -> None:
        self._gauge = BROKER_BLOCKED.labels(self.container.service_name)
        self._gauge.set(0)

    def start(self) -> None:
        self._thread = self.container.spawn_managed_thread(self._watch)

    def stop(self) -> None:
        self._close()
        if self._thread is not None:
            self._thread.kill()

    def kill(self) -> None:
        self.stop()

    def _on_blocked(self, reason=None):
        if not self.blocked:
            log.warning("RabbitMQ blocks publishers: %s", reason)
        self.blocked, self.reason = True, reason
        self._show(1)

    def _on_unblocked(self):
        if self.blocked:
            log.warning("RabbitMQ accepts publishers again")
        self.blocked, self.reason = False, None
        self._show(0)

    def _show(self, value):
        if self._gauge is not None:
            self._gauge.set(value)

    def _watch(self):
        while True:
            try:
                self._probe_forever()
            except Exception as exc:  # noqa: BLE001 - any broken connection: start again
                log.debug("broker watch reconnecting: %s", exc)
            self._close()
            self._on_unblocked()
            eventlet.sleep(RECONNECT_DELAY)

    def _probe_forever(self):
        self._connection = Connection(
            self.container.config[AMQP_URI_CONFIG_KEY],
            connect_timeout=CONNECT_TIMEOUT,
            heartbeat=0,  # each probe is confirmed: a silent broker shows up sooner
            transport_options={"on_blocked": self._on_blocked, "on_unblocked": self._on_unblocked},
        )
        self._connection.ensure_connection(max_retries=1)
        channel = self._connection.default_channel
        self.connected = True
        probe = Message(b"", delivery_mode=1)
        while True:
            if not self.blocked:
                self._confirmed(channel, probe)
            try:
                self._connection.drain_events(timeout=PROBE_INTERVAL)
            except TimeoutError:
                pass

    def _confirmed(self, channel, probe):
        """Publish ``probe`` and wait for the broker's confirm, at most CONFIRM_TIMEOUT:
        a broker that went silent (a partition: no error, no data) raises TimeoutError,
        and the watch starts again, disconnected. One that blocks publishers meanwhile
        (its ``connection.blocked`` arrives during the wait) is not silent: the confirm
        comes once the alarm clears, and the watch publishes nothing until then."""
        try:
            channel.basic_publish_confirm(
                probe, exchange="", routing_key=PROBE_ROUTING_KEY, confirm_timeout=CONFIRM_TIMEOUT
            )
        except TimeoutError:
            if not self.blocked:
                raise

    def _close(self):
        self.connected = False
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.collect()  # no closing handshake: the broker may not be reading
