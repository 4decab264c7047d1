"""Deadlines from arrival (common/deadline.py) on real RabbitMQ: a call waits at most what
is left of its request's deadline, carries it to the callee, and a callee drops a request
whose deadline has passed before doing any work."""

import time

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from common.deadline import DEADLINE_KEY, call_timeout, deadline_of, expired, from_arrival
from common.errors import GatewayTimeout
from common.metrics import RPC_EXPIRED
from common.rpc import BoundedRpcProxy, rpc

STARTED = []  # (method, the deadline its worker saw) of every call that ran


class DeadlinedService:
    name = "deadlined"

    @rpc
    def work(self, seconds):
        STARTED.append(("work", None))
        eventlet.sleep(seconds)
        return "done"


class RelayService:
    name = "relay"

    deadlined = BoundedRpcProxy("deadlined", timeout=5)

    @rpc
    def relay(self, seconds):
        return self.deadlined.work(seconds)


@pytest.fixture
def cluster(container_factory, rabbit_config):
    STARTED.clear()
    config = {**rabbit_config, "max_workers": 1}
    container_factory(DeadlinedService, config).start()
    container_factory(RelayService, rabbit_config).start()

    def proxy(deadline=None):
        context = {} if deadline is None else {DEADLINE_KEY: deadline}
        return ClusterRpcProxy(rabbit_config, context_data=context, timeout=10)

    return proxy


def expired_count():
    return RPC_EXPIRED.labels("deadlined", "work")._value.get()


def test_the_deadline_helpers():
    assert from_arrival(100.0, 5) == 105.0
    assert deadline_of({DEADLINE_KEY: 7}) == 7.0
    assert deadline_of({DEADLINE_KEY: "7"}) is None  # only a number is a deadline
    assert deadline_of({DEADLINE_KEY: True}) is None
    assert call_timeout({}, 5, clock=lambda: 100.0) == 5
    assert call_timeout({DEADLINE_KEY: 102.0}, 5, clock=lambda: 100.0) == 2.0
    assert call_timeout({DEADLINE_KEY: 110.0}, 5, clock=lambda: 100.0) == 5
    assert expired({DEADLINE_KEY: 99.5}, clock=lambda: 100.0) == 0.5
    assert expired({DEADLINE_KEY: 100.5}, clock=lambda: 100.0) is None
    assert expired({}, clock=lambda: 100.0) is None


def test_a_request_past_its_deadline_is_answered_504_and_never_started(cluster):
    before = expired_count()
    with cluster(deadline=time.time() - 1) as rpc_cluster, pytest.raises(GatewayTimeout) as late:
        rpc_cluster.deadlined.work(0)
    assert STARTED == []
    assert late.value.details["service"] == "deadlined"
    assert late.value.details["late_seconds"] >= 1
    assert expired_count() == before + 1


def test_a_request_within_its_deadline_runs(cluster):
    with cluster(deadline=time.time() + 5) as rpc_cluster:
        assert rpc_cluster.deadlined.work(0) == "done"
    assert len(STARTED) == 1


def test_a_nested_call_waits_only_what_is_left_of_its_callers_deadline(cluster):
    """relay's own bound for deadlined is 5 s; the request it serves has 0.6 s left: it
    answers 504 by then, not after 5 s."""
    started = time.monotonic()
    with cluster(deadline=time.time() + 0.6) as rpc_cluster, pytest.raises(GatewayTimeout) as late:
        rpc_cluster.relay.relay(3)
    assert time.monotonic() - started < 1.5
    assert late.value.details["service"] == "deadlined"
    assert late.value.details["timeout_seconds"] <= 0.6


def test_a_request_that_waited_out_its_deadline_in_the_queue_is_dropped(cluster):
    """One worker busy for 1.5 s; a second request, with 0.5 s left, waits in the queue
    behind it. It is never started: RabbitMQ expires it (AMQP expiration), or the
    service drops it when it gets it."""
    with cluster() as rpc_cluster:
        busy = rpc_cluster.deadlined.work.call_async(1.5)
        eventlet.sleep(0.2)  # the busy call has the only worker
        with pytest.raises(GatewayTimeout):
            with cluster(deadline=time.time() + 0.5) as short:
                short.relay.relay(0)
        assert busy.result() == "done"
        eventlet.sleep(0.3)
    assert STARTED == [("work", None)]  # the busy call only
