"""common.rpc.BoundedRpcProxy against real RabbitMQ: no call waits past its bound."""

import time
from unittest.mock import Mock

import eventlet
import pytest
from nameko.exceptions import RemoteError
from nameko.rpc import rpc
from nameko.standalone.rpc import ClusterRpcProxy

from common.errors import GatewayTimeout, ServiceUnavailable
from common.rpc import BoundedMethodProxy, BoundedRpcProxy


class SlowService:
    name = "slow"

    @rpc
    def wait(self, seconds):
        eventlet.sleep(seconds)
        return "done"

    @rpc
    def fail(self, error):
        raise {"reset": ConnectionResetError, "bug": ValueError}[error]("boom")


class CallerService:
    name = "caller"

    slow = BoundedRpcProxy("slow", timeout=0.5)
    absent = BoundedRpcProxy("absent")

    @rpc
    def call_slow(self, seconds):
        return self.slow.wait(seconds)

    @rpc
    def call_absent(self):
        return self.absent.anything()

    @rpc
    def call_failing(self, error):
        try:
            return self.slow.fail(error)
        except ServiceUnavailable as exc:
            return exc.details


@pytest.fixture
def caller(container_factory, rabbit_config):
    config = {**rabbit_config, "RPC_TIMEOUT": 0.5}
    container_factory(SlowService, config).start()
    container = container_factory(CallerService, config)
    container.start()
    with ClusterRpcProxy(config, timeout=10) as cluster:
        yield cluster.caller, container


def test_fast_answers_pass_through(caller):
    proxy, _ = caller
    assert proxy.call_slow(0) == "done"


def test_a_slow_service_times_out_within_the_bound(caller):
    proxy, container = caller
    started = time.monotonic()
    with pytest.raises(GatewayTimeout) as raised:
        proxy.call_slow(3)
    assert time.monotonic() - started < 2
    assert raised.value.details == {"service": "slow", "timeout_seconds": 0.5}
    # the timed-out call's reply slot is dropped, not kept until a reply that may never come
    listener = next(ext for ext in container.extensions if type(ext).__name__ == "ReplyListener")
    assert listener._reply_events == {}


def test_a_service_whose_broker_connection_broke_mid_call_is_unavailable(caller):
    """What nameko 2.x replies when the service's own connection broke (e.g. a cluster node
    died under it) is transient: a 503 to retry, not a 500."""
    proxy, _ = caller
    assert proxy.call_failing("reset") == {"service": "slow", "reason": "service_restarting"}


def test_a_bug_in_a_service_is_still_a_remote_error(caller):
    proxy, _ = caller
    with pytest.raises(RemoteError) as raised:
        proxy.call_failing("bug")
    assert "ValueError" in str(raised.value)  # the bug, passed on as it was


def test_a_service_that_never_started_is_unavailable(caller):
    proxy, _ = caller
    with pytest.raises(ServiceUnavailable) as raised:
        proxy.call_absent()
    assert raised.value.details == {"service": "absent"}


def test_an_unreachable_broker_is_unavailable():
    """Publishing to a broker that refuses connections is a 503, not an opaque 500."""
    worker_ctx = Mock()
    worker_ctx.container.config = {"AMQP_URI": "pyamqp://guest:guest@127.0.0.1:1/"}
    worker_ctx.context_data = {}
    listener = Mock(routing_key="reply", _reply_events={})
    proxy = BoundedMethodProxy(worker_ctx, "slow", "wait", listener, timeout=30)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as raised:
        proxy(0)
    assert raised.value.details == {"service": "slow", "reason": "broker"}
    assert time.monotonic() - started < 30


def test_a_broker_blocking_publishers_is_unavailable_at_once_and_nothing_is_sent():
    """While the process's BrokerWatch says the broker blocks publishers, a call publishes
    nothing (the broker here does not even exist) and answers 503 broker_blocked."""
    worker_ctx = Mock()
    worker_ctx.container.config = {"AMQP_URI": "pyamqp://guest:guest@127.0.0.1:1/"}
    worker_ctx.context_data = {}
    listener = Mock(routing_key="reply", _reply_events={})
    watch = Mock(blocked=True, reason="memory alarm")
    proxy = BoundedMethodProxy(worker_ctx, "slow", "wait", listener, timeout=30, broker_watch=watch)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as raised:
        proxy(0)
    assert raised.value.details == {
        "service": "slow",
        "reason": "broker_blocked",
        "broker_reason": "memory alarm",
    }
    assert time.monotonic() - started < 0.1
    assert listener._reply_events == {}


def test_replies_are_consumed_without_acks_on_a_connection_of_their_own(
    caller, rabbit_manager, rabbit_config
):
    """The reply listener has its own consumer, apart from the one the service's requests
    come through, and RabbitMQ sees it take replies without acks while the service's
    request queue is still consumed with acks."""
    proxy, container = caller
    assert proxy.call_slow(0) == "done"
    listener = next(ext for ext in container.extensions if type(ext).__name__ == "ReplyListener")
    requests = next(ext for ext in container.extensions if type(ext).__name__ == "QueueConsumer")
    assert type(listener.queue_consumer).__name__ == "ReplyConsumer"
    assert listener.queue_consumer is not requests
    vhost = rabbit_config["AMQP_URI"].rsplit("/", 1)[1]

    def acks_required(queue_name):  # the management API's view, refreshed every few s
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            details = rabbit_manager.get_queue(vhost, queue_name).get("consumer_details")
            if details:
                return {consumer["ack_required"] for consumer in details}
            time.sleep(0.5)
        raise AssertionError(f"no consumer of {queue_name} seen")

    assert acks_required(listener.queue.name) == {False}
    assert acks_required("rpc-caller") == {True}
