"""One service process partitioned from PostgreSQL, then from RabbitMQ (issue 22), under
keyed clients on a few hot products: the rest of the shop goes on, every answer within
its bound, the cut-off process takes itself out of rotation and back, and no transient
fault burns an Idempotency-Key.

Before: a products process cut off from PostgreSQL in the middle of a reservation kept
the hot rows locked until ``idle_in_transaction_session_timeout`` (throughput fell from
about 180 to 3 orders/s for 25 s), went on taking its share of messages, and retries
then got ``409 order_failed`` for orders recovery had fenced; one cut off from RabbitMQ
exited after the heal instead of reconnecting.

The partitioned process is an :class:`~tests.faults.partition.Outsider`: a third products
process beside the stack's two, under a group id of its own whose packets iptables drops.
"""

import time

import eventlet
import pytest

from tests.faults.conftest import FAST_RECOVERY, PROCESSES, StoppableLoad, create_shop
from tests.faults.partition import Outsider, cut_off
from tests.harness import stack_on_vhost

CLIENTS = 16
HEARTBEAT = 5  # seconds: RabbitMQ drops a silent connection after two
STOCK = 100_000
BEFORE, CUT, AFTER = 8.0, 20.0, 8.0  # seconds of load before, during and after the cut
ORDER_BOUND = FAST_RECOVERY["ORDERS_RPC_TIMEOUT"]
CLIENT_SLACK = 1.0  # a client's own measure, 16 green threads on a loaded 2-core machine
OUT_OF_ROTATION_WITHIN = (
    3.5  # seconds from the cut to the outsider's /ready 503 (broker: 2 missed 1 s heartbeats)
)
BACK_WITHIN = 15.0  # seconds from the heal to its /ready 200


@pytest.fixture
def stack(request, rabbit_manager, clean_databases, test_db_uris, tmp_path_factory):
    """The fault layer's stack with 5 s AMQP heartbeats: a 20 s cut from RabbitMQ outlasts
    them, so the broker closes the cut-off process's connections (its requests go to the
    other processes) and the process must reconnect after the heal, as after any cut
    longer than the heartbeat timeout (60 s x 2 by default)."""
    with stack_on_vhost(
        request,
        rabbit_manager,
        test_db_uris,
        str(tmp_path_factory.mktemp("partition-stack")),
        "shop_partitions",
        PROCESSES,
        AMQP_HEARTBEAT=HEARTBEAT,
        **FAST_RECOVERY,
    ) as running:
        yield running


@pytest.fixture
def shop(stack):
    """A customer and three hot products with stock for every order."""
    return create_shop(stack.urls[0], products=3, stock=STOCK, prefix="hot")


@pytest.fixture
def load(stack, shop):
    customer_id, stock_added = shop
    return StoppableLoad(
        stack.urls, customer_id, sorted(stock_added), count=100_000, concurrency=CLIENTS, pace=0
    )


def wait_for_ready(outsider, status, within):
    """Seconds until the outsider's /ready answers ``status`` (fails after ``within``)."""
    started = time.monotonic()
    while outsider.ready_status() != status:
        assert time.monotonic() - started < within, f"/ready never {status} within {within} s"
        eventlet.sleep(0.2)
    return time.monotonic() - started


def partitioned_run(stack, load, port):
    """The load for BEFORE seconds, the outsider cut off from ``port`` for CUT, healed for
    AFTER; returns (outsider's seconds out of rotation after the cut, back after the heal,
    served/s before, during, after)."""
    with Outsider(stack, "products") as outsider:
        load.start()
        eventlet.sleep(BEFORE)
        cut_at = time.monotonic()
        with cut_off(port):
            out_after = wait_for_ready(outsider, 503, OUT_OF_ROTATION_WITHIN)
            print(f"\nout of rotation: {outsider.last_ready}")
            eventlet.sleep(CUT - (time.monotonic() - cut_at))
        healed_at = time.monotonic()
        back_after = wait_for_ready(outsider, 200, BACK_WITHIN)
        eventlet.sleep(max(0.0, AFTER - (time.monotonic() - healed_at)))
        load.stop()
        assert outsider.alive(), f"the outsider exited; see {outsider.log}"
    rates = (
        load.served_per_second(cut_at - BEFORE + 2, cut_at),  # past the ramp-up
        load.served_per_second(cut_at, healed_at),
        load.served_per_second(healed_at, healed_at + AFTER),
    )
    return out_after, back_after, rates


def check_answers(load):
    """Every attempt answered within its bound; each order, settled with its key, is
    confirmed: stock remained for all of them, so any other outcome burned a key."""
    slowest = max(seconds for _, seconds in load.attempts)
    assert slowest < ORDER_BOUND + CLIENT_SLACK, slowest
    load.settle()
    finals = {status for status, _, _ in load.answers.values()}
    assert finals == {201}, {k: v[:2] for k, v in load.answers.items() if v[0] != 201}


def report(what, out_after, back_after, rates, load):
    print(
        f"\n{what}: out of rotation {out_after:.1f} s after the cut, back {back_after:.1f} s "
        f"after the heal; orders/s before {rates[0]:.0f}, during {rates[1]:.0f}, after "
        f"{rates[2]:.0f}; {load.outage()}"
    )


@pytest.mark.parametrize("server, port", [("PostgreSQL", 5432), ("RabbitMQ", 5672)])
def test_a_process_cut_off_from(stack, shop, load, check_books, server, port):
    out_after, back_after, rates = partitioned_run(stack, load, port)
    report(f"{server} cut", out_after, back_after, rates, load)
    # the shop goes on: no hot row stays locked by the cut-off process, and its requests
    # go to the other processes
    assert rates[1] > 0.5 * rates[0], rates
    check_answers(load)
    check_books()
