"""RPC plumbing shared by the services: a bounded proxy and the ``rpc`` entrypoint.

Nameko 2.x's ``RpcProxy`` waits for a reply forever: a call to a service whose queue exists
but has no live consumer hangs the caller (and a gateway hung that way ignores SIGTERM).
:class:`BoundedRpcProxy` puts every call, publish included, under one deadline
(``RPC_TIMEOUT`` seconds in config.yml, ``RPC_TIMEOUTS`` per target service) and turns the failure modes
into errors of the shared hierarchy:

* no queue bound for the service (never started)  -> :class:`ServiceUnavailable` (503)
* no reply within the deadline                    -> :class:`GatewayTimeout` (504)
* the broker unreachable, or the connection broken  -> :class:`ServiceUnavailable` (503,
  (a node died mid-publish)                          ``details.reason: "broker"``)
* the service failing the call because its own     -> :class:`ServiceUnavailable` (503,
  broker connection broke (:data:`TRANSPORT_FAILURES`) ``reason: "service_restarting"``)
* the broker blocking publishers (memory or disk  -> :class:`ServiceUnavailable` (503,
  alarm, :mod:`common.broker`): nothing is sent      ``details.reason: "broker_blocked"``)

The deadline holds whatever the broker does: the publish runs in a green thread of its
own, which the caller stops waiting for at the deadline. A publish caught by an alarm
waits for the broker's confirm, and kombu's cleanup of its channel then waits too, for as
long as the alarm lasts; that thread finishes by itself once the alarm clears (its
message may then still be delivered: a 504 never says the call did not happen).
"""

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar, cast

import eventlet
from amqp.exceptions import AMQPError
from kombu.exceptions import EncodeError
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.serialization import registry
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    NON_PERSISTENT,
    SERIALIZER_CONFIG_KEY,
)
from nameko.exceptions import (
    RemoteError,
    UnknownService,
    UnserializableValueError,
    serialize,
)
from nameko.messaging import QueueConsumer
from nameko.rpc import (
    MethodProxy,
    RpcProxy,
    ServiceProxy,
    get_rpc_exchange,
)
from nameko.rpc import (
    ReplyListener as NamekoReplyListener,
)
from nameko.rpc import (
    Responder as NamekoResponder,
)
from nameko.rpc import (
    Rpc as NamekoRpc,
)
from nameko.rpc import (
    RpcConsumer as NamekoRpcConsumer,
)

from common.broker import BrokerWatch
from common.deadline import DEADLINE_KEY, call_timeout, expired
from common.errors import ExcInfo, GatewayTimeout, Reason, ServiceUnavailable, ShopError
from common.metrics import RPC_EXPIRED, child, observe_rpc_call
from common.rotation import RotatingQueueConsumer
from common.settings import settings_of
from common.tracing import client_span, mark_outcome, provider_for

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Errors a service replies with when its own broker connection broke mid-call, or when it
# was stopping (nameko 2.x sends them as RemoteError): transient, the call is retryable.
TRANSPORT_FAILURES = frozenset(
    {
        "ContainerBeingKilled",
        "ConnectionError",
        "ConnectionResetError",
        "BrokenPipeError",
        "ConnectionRefusedError",
        "ConnectionAbortedError",
        "OSError",
        "TimeoutError",
        "RecoverableConnectionError",
        "ConnectionForced",
        "OperationalError",
    }
)


# What a publish or an ack raises when the broker connection is broken or the broker
# refused it (py-amqp's "Server unexpectedly closed connection" is a bare OSError).
BROKER_FAILURES = (KombuOperationalError, AMQPError, OSError)


def call_bound(config: Mapping[str, Any], target_service: str) -> float:
    """Seconds a call to ``target_service`` may take: ``RPC_TIMEOUTS[target_service]``,
    else ``RPC_TIMEOUT`` (:class:`common.settings.Settings`)."""
    return settings_of(config).call_bound(target_service)


def longest_call_bound(config: Mapping[str, Any]) -> float:
    """The longest bound of any call made with ``config``, in seconds."""
    return settings_of(config).longest_call_bound()


class ReplyPublisher(Publisher):
    """How a service publishes an RPC's reply: transient, still confirmed.

    nameko 2.14 publishes replies like requests, persistent. A reply goes to the caller's
    reply queue, which is not durable (``x-expires``): persistence keeps nothing across a
    broker restart, and it is what makes RabbitMQ's confirm wait for the disk (most of
    what RabbitMQ spent per message: docs/BENCHMARKS.md, issue 14's tuning log). A
    transient message is confirmed as soon as it is routed.

    The confirm stays. Without it (tried), a service whose reply connection went to a
    cluster node that was killed stopped answering for good: the unconfirmed writes were
    not seen to fail, so kombu never failed over to a live node, and every call to it
    ended in the caller's 504 (tests/faults/test_cluster.py caught it).
    """

    use_confirms = True
    delivery_mode = NON_PERSISTENT


class Responder(NamekoResponder):
    """nameko's responder with :class:`ReplyPublisher`, and the result serialized once:
    nameko 2.14 encodes every result a first time only to check that it can be encoded,
    then again to publish it. Here the publish is the check; a result that cannot be
    encoded is answered as nameko answers it (``UnserializableValueError``)."""

    publisher_cls = ReplyPublisher

    def send_response(self, result: Any, exc_info: ExcInfo | None) -> tuple[Any, ExcInfo | None]:
        error = serialize(exc_info[1]) if exc_info is not None else None
        serializer = registry.type_to_name[self.message.properties["content_type"]]
        publisher = self.publisher_cls(self.amqp_uri, ssl=self.ssl, login_method=self.login_method)
        publish = partial(
            publisher.publish,
            serializer=serializer,
            exchange=self.exchange,
            routing_key=self.message.properties["reply_to"],
            correlation_id=self.message.properties.get("correlation_id"),
        )
        try:
            publish({"result": result, "error": error})
        except EncodeError:
            exc_info = cast(ExcInfo, sys.exc_info())  # in an except block: never Nones
            publish({"result": None, "error": serialize(UnserializableValueError(result))})
            result = None
        return result, exc_info


class RpcConsumer(NamekoRpcConsumer):
    """nameko's RPC consumer, answering through :class:`Responder`, on a queue consumer
    that stops consuming while its process is out of rotation (:mod:`common.rotation`)."""

    queue_consumer = RotatingQueueConsumer()

    def handle_result(
        self, message: Any, result: Any, exc_info: ExcInfo | None
    ) -> tuple[Any, ExcInfo | None]:
        config = self.container.config
        responder = Responder(
            config[AMQP_URI_CONFIG_KEY],
            get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER),
            message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
        )
        try:
            result, exc_info = responder.send_response(result, exc_info)
            self.queue_consumer.ack_message(message)
        except BROKER_FAILURES as exc:
            # The broker went away under the answer (a partition, a cluster node killed):
            # the request goes back to the queue, to be delivered again (every RPC is
            # idempotent; past its deadline it is dropped unstarted): requeued now if its
            # own channel is alive, else by RabbitMQ when that connection is gone. Raising
            # here would kill the container (nameko: "thread exited with error") where
            # its consumer reconnects by itself.
            log.warning(
                "could not answer or ack %s (%r): it will be delivered again",
                message.delivery_info.get("routing_key"),
                exc,
            )
            with contextlib.suppress(*BROKER_FAILURES):
                self.queue_consumer.requeue_message(message)
        return result, exc_info


class Rpc(NamekoRpc):
    """nameko's ``@rpc`` entrypoint, answering through :class:`Responder`.

    It drops a request whose deadline (:mod:`common.deadline`) has passed before it takes
    a worker: its caller has stopped waiting, so any work done for it would be wasted
    (and, under overload, taken from requests that can still be answered in time). The
    request is answered with a :class:`GatewayTimeout` (its caller may still be
    listening if its clock runs behind) and acked; ``shop_rpc_expired_total`` counts it.
    Nothing the method would have done happens: a client retry (idempotent) does it.

    A request that reaches a process out of rotation (:mod:`common.rotation`) is put back
    in the queue, unstarted, for another process."""

    rpc_consumer = RpcConsumer()

    def handle_message(self, body: Any, message: Any) -> None:
        late = expired({DEADLINE_KEY: message.headers.get(f"{self.header_prefix}.{DEADLINE_KEY}")})
        if late is None:
            if self.rpc_consumer.queue_consumer.rotation.serving:
                super().handle_message(body, message)
            else:  # out of rotation (common/rotation.py): for another process, unstarted
                self.rpc_consumer.queue_consumer.requeue_message(message)
            return
        child(RPC_EXPIRED, self.container.service_name, self.method_name).inc()
        error = GatewayTimeout(
            f"{self.container.service_name}.{self.method_name} was not started: its deadline "
            f"had passed {late:.3f}s before a worker could take it",
            {"service": self.container.service_name, "late_seconds": round(late, 3)},
        )
        self.rpc_consumer.handle_result(message, None, (GatewayTimeout, error, None))


def rpc(fn: F) -> F:
    """``@rpc`` whose ShopErrors are expected outcomes (not logged as crashes), answered
    by :class:`Responder`. Every ``@rpc`` of a service must be this one: two consumer
    classes would consume the service's queue twice."""
    return Rpc.decorator(expected_exceptions=ShopError)(fn)


class ReplyConsumer(QueueConsumer):
    """The consumer of a container's reply queue: a connection of its own, replies taken
    without acks and handed to their callers inline.

    nameko 2.14 consumes replies through the container's one ``QueueConsumer``, with an
    ack each (a frame the caller writes and RabbitMQ processes, per call) and a managed
    green thread spawned per reply only to wake the caller. The reply queue belongs to
    this process alone and is not durable (``x-expires``). What an ack would save is a
    reply delivered but not yet read when the connection broke: RabbitMQ would deliver
    it again after the reconnect. Without the ack it is lost, and its caller answers at
    its bound (504) and the call is retried idempotently: the path of any lost reply
    (the tests' broker restarts and killed cluster nodes go through it). Waking a caller
    is ``Event.send``, which never blocks the consumer's thread.

    Its own connection (a shared extension is keyed by its class) is what nameko 3 does
    too: replies are not held up behind the service's own requests, which are consumed
    with acks and a prefetch window.
    """

    def get_consumers(self, consumer_cls, channel):
        for provider in self._providers:
            self._consumers[provider] = consumer_cls(
                queues=[provider.queue],
                callbacks=[provider.handle_message],
                accept=self.accept,
                no_ack=True,
            )
        return self._consumers.values()


class ReplyListener(NamekoReplyListener):
    """nameko's reply listener on :class:`ReplyConsumer`: a reply is not acked."""

    queue_consumer = ReplyConsumer()

    def handle_message(self, body: Any, message: Any) -> None:
        reply_event = self._reply_events.pop(message.properties.get("correlation_id"), None)
        if reply_event is not None:
            reply_event.send(body)


def broker_blocked_error(service_name: str, broker_watch: BrokerWatch) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the message broker is blocking publishers (resource alarm): cannot call {service_name}",
        {
            "service": service_name,
            "reason": Reason.BROKER_BLOCKED,
            **({"broker_reason": broker_watch.reason} if broker_watch.reason else {}),
        },
    )


class BoundedMethodProxy(MethodProxy):
    def __init__(
        self, *args: Any, timeout: float, broker_watch: BrokerWatch | None = None, **options: Any
    ) -> None:
        self.timeout = timeout
        self.broker_watch = broker_watch
        super().__init__(*args, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The call, bounded; counted (``shop_rpc_client_*``) and traced as a CLIENT span
        whose context travels in the message's headers."""
        caller = self.worker_ctx.service_name
        provider = provider_for(self.container.config, caller)
        started, failure = time.monotonic(), None
        with client_span(provider, caller, self.service_name, self.method_name) as (span, headers):
            self.trace_headers = headers
            try:
                return self._bounded_call(*args, **kwargs)
            except Exception as exc:
                failure = exc
                raise
            finally:
                mark_outcome(span, failure)
                observe_rpc_call(
                    caller, self.service_name, self.method_name, time.monotonic() - started, failure
                )

    def get_message_headers(self, worker_ctx: Any) -> dict[str, Any]:
        """nameko's headers (the caller's context data), this call's span as the parent,
        and this call's deadline (:mod:`common.deadline`)."""
        headers = super().get_message_headers(worker_ctx)
        for key, value in getattr(self, "trace_headers", {}).items():
            headers[self._get_header_name(key)] = value
        call_ends = getattr(self, "call_ends", None)
        if call_ends is not None:
            headers[self._get_header_name(DEADLINE_KEY)] = call_ends
        return headers

    def _bounded_call(self, *args, **kwargs):
        if self.broker_watch is not None and self.broker_watch.blocked:
            raise broker_blocked_error(self.service_name, self.broker_watch)
        # The call's own bound, or less: what is left of the request's (common.deadline)
        timeout = call_timeout(self.worker_ctx.data, self.timeout)
        self.call_ends = time.time() + timeout
        if timeout <= 0:  # nothing left: the callee would drop it, do not even send it
            raise self._timed_out(0.0)
        self.publisher.expiration = timeout  # RabbitMQ drops it once nobody waits for it
        deadline = eventlet.Timeout(timeout)
        publishing = None
        try:
            publishing = eventlet.spawn(self._call, *args, **kwargs)
            reply = publishing.wait()
            return reply.result()
        except eventlet.Timeout as exc:
            if exc is not deadline:
                raise
            if publishing is not None:  # forget the reply slot once the publish is over
                publishing.link(self._forget_when_published)
            if self.broker_watch is not None and self.broker_watch.blocked:
                raise broker_blocked_error(self.service_name, self.broker_watch) from None
            raise self._timed_out(timeout) from None
        except RemoteError as exc:
            if exc.exc_type not in TRANSPORT_FAILURES:
                raise
            # the service's process failed to take or answer the call because its own
            # broker connection broke (nameko then stops that process; its supervisor
            # restarts it) or it was being stopped: the call may be redelivered, retry
            raise ServiceUnavailable(
                f"{self.service_name} could not handle the call ({exc.exc_type}); retry later",
                {"service": self.service_name, "reason": Reason.SERVICE_RESTARTING},
            ) from None
        except UnknownService:
            raise ServiceUnavailable(
                f"service {self.service_name!r} is not running",
                {"service": self.service_name},
            ) from None
        except BROKER_FAILURES as exc:
            # the broker connection broke (a node died, py-amqp's "Server unexpectedly
            # closed connection" is a bare OSError) or refused the publish
            log.warning(
                "call to %s.%s failed at the broker: %r", self.service_name, self.method_name, exc
            )
            raise ServiceUnavailable(
                f"the message broker is unavailable: cannot call {self.service_name}",
                {"service": self.service_name, "reason": Reason.BROKER},
            ) from exc
        finally:
            deadline.cancel()

    def _timed_out(self, waited: float) -> GatewayTimeout:
        """The 504 of a call that got no reply after ``waited`` seconds (its own bound,
        or what was left of its request's deadline: 0 when nothing was)."""
        return GatewayTimeout(
            f"{self.service_name}.{self.method_name} did not answer within {waited:.3g}s"
            + ("" if waited >= self.timeout else " (what was left of the request's deadline)"),
            {"service": self.service_name, "timeout_seconds": round(waited, 3)},
        )

    def _forget_when_published(self, publishing):
        """Drop the reply slot of a timed-out call so late replies do not pile up."""
        try:
            reply = publishing.wait()
        except BaseException:  # noqa: BLE001 - nothing was registered to wait for
            return
        events = self.reply_listener._reply_events
        for correlation_id, event in list(events.items()):
            if event is reply.reply_event:
                events.pop(correlation_id, None)


class BoundedServiceProxy(ServiceProxy):
    def __getattr__(self, name: str) -> BoundedMethodProxy:
        return BoundedMethodProxy(
            self.worker_ctx, self.service_name, name, self.reply_listener, **self.options
        )


def broker_status(broker_watch: BrokerWatch) -> dict[str, Any]:
    """The ``rabbitmq`` entry of a readiness answer, from the process's own watch."""
    if broker_watch.blocked:
        return {
            "status": "service_unavailable",
            "reason": Reason.BROKER_BLOCKED,
            **({"message": broker_watch.reason} if broker_watch.reason else {}),
        }
    return {"status": "ok"}


class BoundedRpcProxy(RpcProxy):
    """Drop-in for ``RpcProxy`` whose calls never wait longer than ``timeout`` seconds.

    ``timeout`` defaults to ``RPC_TIMEOUTS[target_service]``, else ``RPC_TIMEOUT``, from
    the container config. Calls fail fast while the broker blocks publishers
    (:class:`common.broker.BrokerWatch`, shared by every proxy of the container).
    """

    broker_watch = BrokerWatch()
    rpc_reply_listener = ReplyListener()

    def __init__(
        self, target_service: str | None, timeout: float | None = None, **options: Any
    ) -> None:
        self.timeout_override = timeout
        options.setdefault("delivery_mode", NON_PERSISTENT)
        super().__init__(target_service, **options)

    def get_dependency(self, worker_ctx: Any) -> BoundedServiceProxy:
        timeout = float(
            self.timeout_override or call_bound(self.container.config, self.target_service)
        )
        return BoundedServiceProxy(
            worker_ctx,
            self.target_service,
            self.rpc_reply_listener,
            timeout=timeout,
            broker_watch=self.broker_watch,
            **self.options,
        )
