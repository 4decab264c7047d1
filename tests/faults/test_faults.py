"""Fault tests, Jepsen bank style: real processes, real RabbitMQ and PostgreSQL, a
concurrent order load with an Idempotency-Key per request; a fault mid-load; then every
request without a definite answer is re-sent with its key until it has one, and the books
must balance (see conftest.check_books).

Bounded: 200 orders per test, each request times out after 20 s, settling after 120 s.
Traffic goes to 127.0.0.1 only."""

import os
import signal
import subprocess
import time

import eventlet
import pytest

from tests.faults.conftest import FAST_RECOVERY


def run(*command):
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def mid_load(load, seconds=0.7):
    load.start()
    eventlet.sleep(seconds)


@pytest.mark.parametrize("process", ["products-0", "orders-0"])
def test_process_killed_mid_load(stack, load, check_books, process):
    """kill -9 one of two processes of the service mid-load; supervisord restarts it."""
    mid_load(load)
    stack.kill(process, signal.SIGKILL)
    load.wait()
    load.settle()
    check_books()


def test_graceful_stop_loses_nothing(stack, load, check_books):
    """SIGTERM (what supervisord and `make down` send): in-flight workers finish, queued
    messages go to the other process; no request is left without an answer."""
    mid_load(load)
    stack.kill("orders-0", signal.SIGTERM)
    stack.kill("products-0", signal.SIGTERM)
    load.wait()
    assert load.indefinite() == []
    check_books()


def test_rabbitmq_restarted_mid_load(stack, load, check_books):
    mid_load(load)
    run("rabbitmqctl", "stop_app")
    time.sleep(2)
    run("rabbitmqctl", "start_app")
    run("rabbitmqctl", "await_startup")
    load.wait()
    stack.wait_ready()  # every service answers again, restarted by supervisord if it died
    load.settle()
    check_books()


def test_postgresql_restarted_mid_load(stack, load, check_books):
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    mid_load(load)
    run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast")
    load.wait()
    load.settle()
    check_books()


def test_stopped_service_answers_within_the_bound_then_settles(stack, load, check_books):
    mid_load(load, seconds=0.3)
    stack.stop_service("products")
    load.wait()
    bound = FAST_RECOVERY["ORDERS_RPC_TIMEOUT"] + 2
    failed = [
        (status, body, seconds)
        for status, body, seconds in load.answers.values()
        if status not in (201, 409)
    ]
    assert failed, "products was down: some orders must have failed"
    assert {status for status, _, _ in failed} <= {503, 504}
    assert all(body["error"] in ("service_unavailable", "timeout") for _, body, _ in failed)
    assert max(seconds for _, _, seconds in failed) < bound
    stack.start_service("products")
    load.settle()
    check_books()
