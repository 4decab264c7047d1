"""A service process's operations listener (common/ops_http.py), on real containers over
real RabbitMQ and PostgreSQL: the probes a supervisor or Kubernetes asks."""

import time

import requests

from products.service import ProductsService
from tests.harness import free_port


def start_products(runner_factory, config, **overrides):
    """A products container with its listener on a free port; returns the listener's URL."""
    address = f"127.0.0.1:{free_port()}"
    runner_factory(
        {**config, "HOLD_CHECK_INTERVAL": 0, "OPS_HTTP_ADDRESS": address, **overrides},
        ProductsService,
    ).start()
    return f"http://{address}"


def wait_ready(url, deadline=10):
    """``/ready``'s answer once the broker watch has connected (it starts with the
    container), or the last answer at the deadline."""
    started = time.monotonic()
    while True:
        answer = requests.get(f"{url}/ready", timeout=5)
        if answer.status_code == 200 or time.monotonic() - started > deadline:
            return answer
        time.sleep(0.1)


def test_ready_when_the_broker_and_the_database_answer(runner_factory, service_config):
    ops = start_products(runner_factory, service_config)
    assert requests.get(f"{ops}/health", timeout=5).json() == {"status": "ok"}
    ready = wait_ready(ops)
    assert (ready.status_code, ready.json()) == (
        200,
        {
            "status": "ready",
            "checks": {"rabbitmq": {"status": "ok"}, "database": {"status": "ok"}},
        },
    )


def test_not_ready_within_the_bound_when_the_database_is_unreachable(
    runner_factory, service_config
):
    """Nothing listens on the database's port: ``/ready`` says so, within
    ``READY_TIMEOUT``, while ``/health`` (liveness) stays green."""
    unreachable = {"products:Base": "postgresql+psycopg2://postgres@127.0.0.1:1/shop_products"}
    ops = start_products(runner_factory, service_config, DB_URIS=unreachable, READY_TIMEOUT=1)
    wait_ready(ops, deadline=3)  # the broker watch connects meanwhile
    started = time.monotonic()
    ready = requests.get(f"{ops}/ready", timeout=10)
    assert time.monotonic() - started < 1 + 0.5
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["rabbitmq"] == {"status": "ok"}
    assert body["checks"]["database"]["status"] != "ok"
    assert requests.get(f"{ops}/health", timeout=5).status_code == 200
