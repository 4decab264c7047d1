"""RabbitMQ blocks publishers (a memory alarm) under load: every answer still comes within
its bound, reads fail fast with ``reason: broker_blocked``, /ready says so, /health never
waits, and once the alarm clears everything flows again without a restart.

The stack runs on a private RabbitMQ node (tests/rabbit_node.py): the alarm is node-wide,
and the default broker serves other tests.
"""

import time

import eventlet
import pytest
import requests

from tests.faults.conftest import FAST_RECOVERY, PROCESSES
from tests.harness import Stack, stack_env
from tests.rabbit_node import private_rabbit_cluster

ALARM_SECONDS = (
    12  # longer than every bound below: an answer that waits for the alarm to clear shows
)
SLACK = 1.0  # the "within its bound + 1 s"
READY_TIMEOUT = 2
BOUNDS = {  # seconds, per kind of request
    "read": FAST_RECOVERY["RPC_TIMEOUT"] + SLACK,
    "order": FAST_RECOVERY["ORDERS_RPC_TIMEOUT"] + SLACK,
    "ready": READY_TIMEOUT + SLACK,
    "health": SLACK,
}


@pytest.fixture
def stack(clean_databases, test_db_uris, tmp_path_factory):
    """The fault stack, on a RabbitMQ node of its own."""
    with private_rabbit_cluster(str(tmp_path_factory.mktemp("rabbit")), count=1) as broker:
        with Stack(
            stack_env(broker.amqp_uri, test_db_uris, READY_TIMEOUT=READY_TIMEOUT, **FAST_RECOVERY),
            str(tmp_path_factory.mktemp("alarm-stack")),
            PROCESSES,
        ) as running:
            running.rabbit = broker.nodes[0]
            yield running


class Prober:
    """Loops ``GET path`` on every gateway until stopped; records every answer as
    ``(kind, status, body, seconds, sent_at)``."""

    def __init__(self, urls, answers):
        self.urls = urls
        self.answers = answers
        self.running = True
        self.pool = eventlet.GreenPool()

    def loop(self, kind, path, pause):
        http = requests.Session()
        while self.running:
            for url in self.urls:
                sent_at = time.monotonic()
                try:
                    response = http.get(f"{url}{path}", timeout=30)
                    answer = (response.status_code, response.json())
                except (requests.RequestException, ValueError) as exc:
                    answer = (None, repr(exc))
                self.answers.append((kind, *answer, time.monotonic() - sent_at, sent_at))
            eventlet.sleep(pause)

    def start(self, kind, path, clients=1, pause=0.05):
        for _ in range(clients):
            self.pool.spawn(self.loop, kind, path, pause)

    def stop(self):
        self.running = False
        self.pool.waitall()


def test_a_broker_alarm_under_load_keeps_every_bound(stack, shop, load, check_books):
    customer_id, stock_added = shop
    product_id = next(iter(stock_added))
    pids = {name: stack.pid(name) for name in ("products-0", "orders-0", "gateway-0")}
    answers = []
    probes = Prober(stack.urls, answers)
    probes.start("read", f"/api/products/{product_id}", clients=4)
    probes.start("read", f"/api/customers/{customer_id}", clients=2)
    probes.start("ready", "/ready", pause=0.3)
    probes.start("health", "/health", pause=0.3)
    load.start()
    eventlet.sleep(1)

    with stack.rabbit.memory_alarm():
        alarm_started = time.monotonic()
        eventlet.sleep(ALARM_SECONDS)
        alarm_clearing = time.monotonic()
    alarm_cleared = time.monotonic()
    eventlet.sleep(4)  # the flow resumes
    probes.stop()
    load.wait()

    during = [a for a in answers if alarm_started + 1 < a[4] < alarm_clearing]
    after = [a for a in answers if a[4] > alarm_cleared + 2]
    late = [
        (kind, status, round(seconds, 2))
        for kind, status, _, seconds, _ in answers
        if seconds > BOUNDS[kind]
    ]
    assert late == [], late
    order_seconds = [seconds for _, _, seconds in load.answers.values()]
    assert max(order_seconds) <= BOUNDS["order"], max(order_seconds)

    def blocked(answer):
        kind, status, body, _, _ = answer
        if kind == "ready":
            return status == 503 and body["checks"]["rabbitmq"].get("reason") == "broker_blocked"
        return status == 503 and body["details"].get("reason") == "broker_blocked"

    reads_during = [a for a in during if a[0] == "read"]
    assert reads_during and all(blocked(a) for a in reads_during), [
        a for a in reads_during if not blocked(a)
    ][:3]
    assert max(a[3] for a in reads_during) < 0.5  # failing fast, not waiting for a timer
    ready_during = [a for a in during if a[0] == "ready"]
    assert ready_during and all(blocked(a) for a in ready_during), ready_during[:3]
    assert all(a[1] == 200 for a in answers if a[0] == "health")

    assert after and all(a[1] == 200 for a in after), [a for a in after if a[1] != 200][:3]
    assert {name: stack.pid(name) for name in pids} == pids  # no process was restarted
    load.settle()
    check_books()
