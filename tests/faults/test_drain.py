"""`make down` under load: the gateways drain, nothing needs SIGKILL, no connection with a
request on it is aborted, and every order is accounted for once the stack is back."""

import os
import time

import eventlet

from tests.faults.conftest import FAST_RECOVERY, OrderLoad

# Gateways drain within their longest bound + 1 s, then orders, products and customers
# stop in turn; each of those finishes its in-flight work within its own bound.
STOP_BOUND_SECONDS = FAST_RECOVERY["ORDERS_RPC_TIMEOUT"] + 1 + 3 * FAST_RECOVERY["RPC_TIMEOUT"] + 5


def test_stopping_the_stack_under_load_drains_every_gateway(stack, shop, check_books):
    customer_id, stock_added = shop
    load = OrderLoad(
        stack.urls, customer_id, sorted(stock_added), count=600, concurrency=30, pace=0.005
    )
    load.start()
    deadline = time.monotonic() + 20
    while len(load.answers) < 30:  # in full flow, every client with a request in flight
        assert time.monotonic() < deadline, "the load never got going"
        eventlet.sleep(0.1)
    started = time.monotonic()
    stack.stop()  # what `make down` does: supervisorctl shutdown
    stop_seconds = time.monotonic() - started
    load.wait()

    with open(os.path.join(stack.run_dir, "logs", "supervisord.log")) as log:
        supervisor_log = log.read()
    assert "SIGKILL" not in supervisor_log
    assert stop_seconds < STOP_BOUND_SECONDS, stop_seconds
    assert "aborted" not in load.connection_failures, load.aborted
    assert "refused" in load.connection_failures  # the load ran into the stop

    stack.start()
    load.settle()
    check_books()
