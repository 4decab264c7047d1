"""End-to-end layer: the real stack as separate processes, driven over HTTP.

One session-wide stack, started with ``nameko run`` exactly as supervisord does:
customers x1, products x2, orders x2 and three gateway processes on free ports, on their
own RabbitMQ vhost and the test databases. Tests talk to it only through HTTP (and read the
databases to check invariants).
"""
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from common.config import ROOT

PROCESSES = {"customers": 1, "products": 2, "orders": 2}
GATEWAYS = 3
START_TIMEOUT = 60


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def e2e_amqp_uri(request, rabbit_manager):
    """A RabbitMQ vhost of its own for the stack, deleted afterwards."""
    amqp = urlparse(request.config.getoption("RABBIT_AMQP_URI"))
    vhost = f"shop_e2e_{secrets.token_hex(4)}"
    rabbit_manager.create_vhost(vhost)
    rabbit_manager.set_vhost_permissions(vhost, amqp.username, ".*", ".*", ".*")
    yield f"{amqp.scheme}://{amqp.netloc}/{vhost}"
    rabbit_manager.delete_vhost(vhost)


class Stack:
    """The running processes; ``urls`` are the gateways' base URLs."""

    def __init__(self, env, log_dir):
        self.env = env
        self.log_dir = log_dir
        self.processes = []
        self.urls = []

    def spawn(self, module, name, extra_env=None):
        log = open(os.path.join(self.log_dir, f"{name}.log"), "wb")
        process = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "nameko"), "run",
             "--config", os.path.join(ROOT, "config.yml"), module],
            cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append((name, process))
        return process

    def start(self):
        for service, count in PROCESSES.items():
            for index in range(count):
                self.spawn(f"{service}.service", f"{service}-{index}")
        for index in range(GATEWAYS):
            port = free_port()
            self.spawn("gateway.service", f"gateway-{index}",
                       {"WEB_SERVER_ADDRESS": f"127.0.0.1:{port}"})
            self.urls.append(f"http://127.0.0.1:{port}")
        self.wait_ready()

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        config = {"AMQP_URI": self.env["AMQP_URI"]}
        pending_services = set(PROCESSES)
        pending_urls = set(self.urls)
        while pending_services or pending_urls:
            for name, process in self.processes:
                assert process.poll() is None, f"{name} exited; see {self.log_dir}/{name}.log"
            for url in list(pending_urls):
                try:
                    if requests.get(f"{url}/health", timeout=1).status_code == 200:
                        pending_urls.discard(url)
                except requests.RequestException:
                    pass
            for service in list(pending_services):
                try:
                    with ClusterRpcProxy(config, timeout=2) as cluster:
                        if getattr(cluster, service).ping() == "pong":
                            pending_services.discard(service)
                except Exception:
                    pass
            assert time.monotonic() < deadline, (
                f"stack not ready: {pending_services | pending_urls}; logs in {self.log_dir}"
            )
            time.sleep(0.3)

    def stop(self):
        for _, process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def stack(e2e_amqp_uri, databases, tmp_path_factory):
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "AMQP_URI": e2e_amqp_uri,
        "CUSTOMERS_DB_URI": databases["customers"],
        "PRODUCTS_DB_URI": databases["products"],
        "ORDERS_DB_URI": databases["orders"],
        "LOG_LEVEL": "WARNING",
    }
    running = Stack(env, str(tmp_path_factory.mktemp("e2e-logs")))
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def api(stack, clean_databases):
    """The first gateway's base URL, in front of empty databases."""
    return stack.urls[0]


def books(engines):
    """What the databases say: ``(stock_left, held, sold)`` where ``stock_left`` is
    ``{product_id: stock}``, ``held`` maps ``"order_ref:product_id"`` to the quantity held
    for a live (reserved or confirmed) hold, and ``sold`` the same for confirmed orders."""
    with engines["products"].connect() as conn:
        stock_left = dict(conn.execute(text("SELECT id, stock FROM products")).all())
        held = dict(conn.execute(text(
            "SELECT r.order_ref || ':' || r.product_id, r.quantity FROM reservations r "
            "JOIN order_holds h ON h.order_ref = r.order_ref "
            "WHERE h.status IN ('reserved', 'confirmed')")).all())
    with engines["orders"].connect() as conn:
        sold = dict(conn.execute(text(
            "SELECT o.order_ref || ':' || l.product_id, l.quantity FROM orders o "
            "JOIN order_lines l ON l.order_id = o.id WHERE o.status = 'confirmed'")).all())
    return stock_left, held, sold


def books_balance(engines, stock_added):
    """The bank invariant, as a list of violations (empty when it holds): per product,
    stock left + units in confirmed orders == stock added and stock >= 0; every confirmed
    order line has exactly one live hold of the same quantity, and no live hold lacks its
    confirmed order."""
    stock_left, held, sold = books(engines)
    problems = []
    if held != sold:
        problems.append(f"holds without a confirmed order: {sorted(set(held) - set(sold))}; "
                        f"confirmed lines without a hold: {sorted(set(sold) - set(held))}")
    for product_id, added in stock_added.items():
        units_sold = sum(q for key, q in sold.items() if key.endswith(f":{product_id}"))
        if stock_left[product_id] < 0 or stock_left[product_id] + units_sold != added:
            problems.append(f"product {product_id}: added {added}, left "
                            f"{stock_left[product_id]}, sold {units_sold}")
    return problems


@pytest.fixture
def assert_books_balance(clean_databases):
    def check(stock_added):
        assert books_balance(clean_databases, stock_added) == []

    return check
