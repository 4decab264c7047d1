"""Admission control (gateway/admission.py): a lane alone, then a real gateway whose writes
are saturated by a slow orders service while reads go on."""

import time

import eventlet
import pytest
import requests

from common.errors import ServiceUnavailable
from common.rpc import rpc
from gateway.admission import Lane


def held(lane, seconds, deadline=None):
    """Hold a slot of ``lane`` for ``seconds`` in a green thread; returns it."""

    def hold():
        with lane.admitted(deadline or time.time() + 60):
            eventlet.sleep(seconds)

    thread = eventlet.spawn(hold)
    eventlet.sleep(0)  # it takes its slot now
    return thread


def test_a_full_lane_sheds_after_the_queue_budget_with_retry_after():
    lane = Lane("writes", limit=2, queue_seconds=0.2, max_waiting=10)
    holders = [held(lane, 1) for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as shed, lane.admitted(time.time() + 60):
        pass
    assert 0.15 < time.monotonic() - started < 0.6
    assert shed.value.details == {
        "reason": "overloaded",
        "lane": "writes",
        "retry_after_seconds": 1,
    }
    assert shed.value.headers == {"Retry-After": "1"}
    for thread in holders:
        thread.wait()


def test_a_waiter_is_admitted_when_a_slot_frees_in_time():
    lane = Lane("reads", limit=1, queue_seconds=1, max_waiting=10)
    holder = held(lane, 0.1)
    started = time.monotonic()
    with lane.admitted(time.time() + 60):
        waited = time.monotonic() - started
    assert 0.05 < waited < 0.5
    holder.wait()


def test_a_freed_slot_goes_to_the_oldest_waiter_not_to_a_newcomer():
    lane = Lane("writes", limit=1, queue_seconds=5, max_waiting=10)
    admitted = []

    def wait_then_hold(name):
        with lane.admitted(time.time() + 60):
            admitted.append(name)
            eventlet.sleep(0.05)

    with lane.admitted(time.time() + 60):
        oldest = eventlet.spawn(wait_then_hold, "oldest")
        eventlet.sleep(0.01)  # it waits
    # the slot was handed to the waiter as it was freed: a newcomer finds none
    assert not lane._take(0)
    oldest.wait()
    assert admitted == ["oldest"]
    assert (lane.in_flight, lane.waiting) == (0, 0)


def test_a_waiter_killed_while_waiting_loses_no_slot():
    lane = Lane("writes", limit=1, queue_seconds=5, max_waiting=10)
    with lane.admitted(time.time() + 60):
        waiter = held(lane, 0)
        eventlet.sleep(0.01)
        waiter.kill()
        assert lane.waiting == 0
    assert lane.in_flight == 0


def test_a_request_never_waits_past_its_deadline():
    lane = Lane("reads", limit=1, queue_seconds=5, max_waiting=10)
    holder = held(lane, 1)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable), lane.admitted(time.time() + 0.2):
        pass
    assert time.monotonic() - started < 0.5
    holder.wait()


def test_past_max_waiting_a_request_is_shed_at_once():
    lane = Lane("writes", limit=1, queue_seconds=5, max_waiting=1)
    holder = held(lane, 0.5)
    waiter = held(lane, 0)  # the one allowed to wait
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable), lane.admitted(time.time() + 60):
        pass
    assert time.monotonic() - started < 0.1
    assert lane.waiting == 1
    holder.wait()
    waiter.wait()
    assert lane.waiting == 0


class SlowOrdersService:
    name = "orders"

    @rpc
    def create_order(self, payload, idempotency_key=None):
        eventlet.sleep(1)
        return {"id": 1}


class FastProductsService:
    name = "products"

    @rpc
    def get_product(self, product_id):
        return {"id": product_id}


def test_saturated_writes_are_shed_early_while_reads_go_on(
    start_gateway, container_factory, rabbit_config
):
    """Writes limited to 2 in flight, a 0.3 s queue budget: of 8 concurrent orders that
    take 1 s each, 2 are served and the others shed with 503 + Retry-After well before
    their bound; meanwhile reads are served at once by their own lane."""
    container_factory(SlowOrdersService, rabbit_config).start()
    container_factory(FastProductsService, rabbit_config).start()
    url = start_gateway(ADMISSION_WRITES=2, ADMISSION_READS=2, ADMISSION_QUEUE_SECONDS=0.3)

    def order(_):
        started = time.monotonic()
        response = requests.post(f"{url}/api/orders", json={}, timeout=10)
        return response, time.monotonic() - started

    def read(_):
        started = time.monotonic()
        response = requests.get(f"{url}/api/products/3", timeout=10)
        return response.status_code, time.monotonic() - started

    pool = eventlet.GreenPool(20)
    orders = [pool.spawn(order, n) for n in range(8)]
    eventlet.sleep(0.1)  # the orders hold the write lane
    reads = list(pool.imap(read, range(6)))
    answers = [thread.wait() for thread in orders]

    assert sorted(response.status_code for response, _ in answers) == [201] * 2 + [503] * 6
    for response, seconds in answers:
        if response.status_code == 503:
            assert response.json()["details"]["reason"] == "overloaded"
            assert response.headers["Retry-After"] == "1"
            assert seconds < 1.0  # early: not after the slow orders, nor the bound
    assert [status for status, _ in reads] == [200] * 6
    assert max(seconds for _, seconds in reads) < 0.5
