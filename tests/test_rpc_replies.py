"""common.rpc's ``@rpc`` against real RabbitMQ: how a service answers.

Replies are published as transient messages (the reply queue is not durable), still
confirmed; the result is encoded once, and one that cannot be encoded
is still answered with nameko's ``UnserializableValueError``. Requests keep their
guarantees: persistent, and a call to a service that is not running fails at once."""

import uuid

import pytest
from kombu import Connection, Exchange, Producer, Queue
from nameko.exceptions import RemoteError, UnknownService
from nameko.standalone.rpc import ClusterRpcProxy

from common.rpc import ReplyPublisher, rpc


class EchoService:
    name = "echo"

    @rpc
    def echo(self, value):
        return value

    @rpc
    def unencodable(self):
        return object()


@pytest.fixture
def echo(container_factory, rabbit_config):
    container_factory(EchoService, rabbit_config).start()
    return rabbit_config


def test_results_and_errors_are_answered(echo):
    with ClusterRpcProxy(echo, timeout=10) as cluster:
        assert cluster.echo.echo({"a": [1, "2", None]}) == {"a": [1, "2", None]}
        with pytest.raises(RemoteError) as error:
            cluster.echo.unencodable()
        assert error.value.exc_type == "UnserializableValueError"
        assert cluster.echo.echo("still serving") == "still serving"  # nothing crashed
        with pytest.raises(UnknownService):  # mandatory + confirmed requests: at once
            cluster.absent.anything()


def test_a_reply_is_transient_and_a_request_persistent(echo):
    """A request published by hand, as nameko's proxies publish it, and its reply read
    from a queue of this test's: the broker's delivery properties of each."""
    reply_queue = Queue(
        f"rpc.reply-test-{uuid.uuid4().hex}",
        auto_delete=True,
        exchange=Exchange("nameko-rpc", type="topic", durable=True),
        routing_key=f"reply-{uuid.uuid4().hex}",
    )
    with Connection(echo["AMQP_URI"]) as connection:
        channel = connection.channel()
        reply_queue = reply_queue(channel)
        reply_queue.declare()
        received = []
        with connection.Consumer(
            reply_queue, callbacks=[lambda body, m: received.append(m)], accept=["json"]
        ):
            Producer(channel).publish(
                {"args": ["hello"], "kwargs": {}},
                exchange="nameko-rpc",
                routing_key="echo.echo",
                reply_to=reply_queue.routing_key,
                correlation_id="c1",
                serializer="json",
                delivery_mode=2,
            )
            while not received:
                connection.drain_events(timeout=10)
    (reply,) = received
    assert reply.properties["correlation_id"] == "c1"
    assert reply.payload == {"result": "hello", "error": None}
    assert reply.properties["delivery_mode"] == 1
    assert ReplyPublisher.use_confirms is True  # the cluster's failover needs it
