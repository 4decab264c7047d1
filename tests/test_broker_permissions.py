"""The shop's RabbitMQ user (common/broker_permissions.py), on the local default broker.

Each test makes a vhost and a user of its own (the management API, as the broker's
administrator: the nameko plugin's ``--rabbit-api-uri``, guest on this machine), gives the
user exactly the shop's permissions, and deletes both afterwards, whatever happens. Nothing
else on the broker is changed.

* the real services (customers, products, orders, the gateway: in-process containers)
  run as that user: an order flows end to end through HTTP, the customer's event is
  handled, ``nameko shell``'s ``ClusterRpcProxy`` and event dispatch work, and every queue
  and exchange they made is one the permissions name;
* the user is refused (AMQP ``access_refused``) what the shop never does: declaring a
  queue outside its names, publishing to ``amq.topic`` or another exchange, reading
  another queue. The same attempts succeed with ``.*`` permissions: the checks can fail.
"""

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
import types
from urllib.parse import quote, urlparse

import amqp
import pytest
import requests
from amqp.exceptions import AccessRefused
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from common import broker_permissions
from common.broker import PROBE_ROUTING_KEY
from common.config import ROOT
from customers.service import CustomersService
from gateway.service import GatewayService
from orders.service import OrdersService
from products.service import ProductsService
from tests.harness import free_port

UUID = "0b8f3c1e-2a4d-4e6f-8a9b-1c2d3e4f5a6b"
WAIT = 15  # seconds, for anything asynchronous (an event, a listener's readiness)


# --- the regexes themselves ----------------------------------------------------------


def test_the_regexes_are_anchored_and_name_only_the_shop():
    for permission, regex in broker_permissions.PERMISSIONS.items():
        assert regex.startswith("^(") and regex.endswith(")$"), permission
        assert ".*" not in regex, permission
        re.compile(regex)
    allowed = broker_permissions.allowed
    for name in (
        "nameko-rpc",
        "customers.events",
        "rpc-orders",
        f"rpc.reply-gateway-{UUID}",
        f"rpc.reply-standalone_rpc_proxy-{UUID}",
        "evt-customers-customer_created--orders.remember_customer",
    ):
        assert all(allowed(p, name) for p in ("configure", "write", "read")), name
    for name in (
        "xrpc-orders",
        "rpc-orders2",
        "rpc-payments",
        "nameko-rpc.x",
        "rpc.reply-gateway-not-a-uuid",
        f"rpc.reply-intruder-{UUID}",
        "evt-billing-paid--orders.x",
        "billing.events",
        "amq.topic",
        "amq.direct",
        "amq.gen-JzTY20BRgKO",
        "audit",
        "",
    ):
        assert not any(allowed(p, name) for p in ("configure", "write", "read")), name
    # the default exchange (common/broker.py's probe): published to, never declared or read
    assert allowed("write", "amq.default")
    assert not allowed("configure", "amq.default") and not allowed("read", "amq.default")


# --- a vhost and a user of the test's own ----------------------------------------------


@pytest.fixture
def scratch(request, rabbit_manager):
    """A fresh name for a vhost and a user (the same), deleted after, whatever happened."""
    api = request.config.getoption("RABBIT_API_URI")
    broker = urlparse(request.config.getoption("RABBIT_AMQP_URI"))
    name = f"shop_perms_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    try:
        yield types.SimpleNamespace(
            vhost=name,
            user=name,
            password=password,
            api=api,
            manager=rabbit_manager,
            host=broker.hostname,
            port=broker.port or 5672,
            uri=f"pyamqp://{name}:{password}@{broker.hostname}:{broker.port or 5672}/{name}",
        )
    finally:
        broker_permissions.remove(api, vhost=name, user=name)


@pytest.fixture
def shop_user(scratch):
    """That vhost and user, with exactly the shop's permissions on it. ``uri`` is the
    user's AMQP URI, ``api`` the management API as the administrator."""
    broker_permissions.apply(scratch.api, scratch.vhost, scratch.user, scratch.password)
    return scratch


def admin_api(user, method, path, **kwargs):
    """The management API as the administrator (the nameko plugin's API URI)."""
    parsed = urlparse(user.api)
    response = requests.request(
        method,
        f"{parsed.scheme}://{parsed.hostname}:{parsed.port}/api/{path}",
        auth=(parsed.username, parsed.password),
        timeout=10,
        **kwargs,
    )
    response.raise_for_status()
    return response.json() if response.content else None


def test_apply_sets_exactly_the_shop_permissions_and_no_tags(shop_user):
    permissions = admin_api(shop_user, "GET", f"permissions/{shop_user.vhost}/{shop_user.user}")
    assert {key: permissions[key] for key in ("configure", "write", "read")} == (
        broker_permissions.PERMISSIONS
    )
    assert admin_api(shop_user, "GET", f"users/{shop_user.user}")["tags"] in ("", [])
    # on no other vhost
    others = admin_api(shop_user, "GET", f"users/{shop_user.user}/permissions")
    assert [p["vhost"] for p in others] == [shop_user.vhost]


def test_manage_broker_user_makes_them_from_amqp_uri(scratch):
    """What docker-compose's one-shot rabbitmq-setup runs."""
    env = {**os.environ, "AMQP_URI": scratch.uri, "RABBIT_ADMIN_URI": scratch.api}
    command = [
        sys.executable,
        os.path.join(ROOT, "scripts", "manage.py"),
        "broker-user",
        "--default-queue-type",
        "quorum",
        "--timeout",
        "5",
    ]
    for _ in range(2):  # idempotent
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    permissions = admin_api(scratch, "GET", f"permissions/{scratch.vhost}/{scratch.user}")
    assert {key: permissions[key] for key in ("configure", "write", "read")} == (
        broker_permissions.PERMISSIONS
    )
    assert admin_api(scratch, "GET", f"vhosts/{scratch.vhost}")["default_queue_type"] == "quorum"
    with amqp_connection(scratch):  # the password of AMQP_URI
        pass
    # never for guest, nor as the administrator's own user
    refused = subprocess.run(
        command,
        env={**env, "AMQP_URI": "pyamqp://guest:guest@x/"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "user of its own" in refused.stderr


# --- what the shop never does: refused -------------------------------------------------


@contextlib.contextmanager
def amqp_connection(user):
    connection = amqp.Connection(
        host=f"{user.host}:{user.port}",
        userid=user.user,
        password=user.password,
        virtual_host=user.vhost,
        confirm_publish=True,
        connect_timeout=5,
    )
    connection.connect()
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def attempt(user, action):
    """``"refused"`` if the broker answers access_refused (403) to ``action(channel)``,
    ``"ok"`` if it does not. One connection per attempt: a refusal closes the channel,
    and RabbitMQ caches a channel's permission checks."""
    with amqp_connection(user) as connection:
        channel = connection.channel()
        try:
            action(channel)
        except AccessRefused:
            return "refused"
        return "ok"


def publish(exchange, routing_key="x"):
    # confirm_publish: the broker's answer (ack, or the channel closed) is waited for
    return lambda channel: channel.basic_publish(
        amqp.Message(b"{}"), exchange=exchange, routing_key=routing_key
    )


FORBIDDEN = {
    "declare a queue outside the shop's names": lambda ch: ch.queue_declare("audit-copy"),
    "declare a look-alike of a service queue": lambda ch: ch.queue_declare("xrpc-orders"),
    "declare a reply queue not named by a uuid": lambda ch: ch.queue_declare(
        "rpc.reply-gateway-mine"
    ),
    "declare an exchange outside the shop's names": lambda ch: ch.exchange_declare(
        "audit.fanout", "fanout", durable=True, auto_delete=False
    ),
    "publish to amq.topic": publish("amq.topic"),
    "publish to another exchange": publish("billing.events"),
    "read another queue": lambda ch: ch.basic_get("audit"),
    "consume another queue": lambda ch: ch.basic_consume("audit", callback=lambda m: None),
    "bind a shop queue to amq.topic": lambda ch: ch.queue_bind("rpc-orders", "amq.topic", "#"),
}
ALLOWED = {
    "declare the RPC exchange": lambda ch: ch.exchange_declare(
        "nameko-rpc", "topic", durable=True, auto_delete=False
    ),
    "declare a service queue": lambda ch: ch.queue_declare(
        "rpc-orders", durable=True, auto_delete=False
    ),
    "bind it to the RPC exchange": lambda ch: ch.queue_bind("rpc-orders", "nameko-rpc", "orders.*"),
    "publish a call": publish("nameko-rpc", "orders.ping"),
    "read a service queue": lambda ch: ch.basic_get("rpc-orders"),
    "publish the broker watch's probe": publish("", PROBE_ROUTING_KEY),
}


def foreign_objects(user):
    """What the shop must not touch, made by the administrator in the test's vhost: a
    queue ``audit`` and an exchange ``billing.events``."""
    vhost = quote(user.vhost, safe="")
    admin_api(user, "PUT", f"queues/{vhost}/audit", json={"durable": True, "auto_delete": False})
    admin_api(
        user,
        "PUT",
        f"exchanges/{vhost}/billing.events",
        json={"type": "topic", "durable": True, "auto_delete": False},
    )


def test_the_shop_user_is_refused_what_the_shop_never_does(shop_user):
    foreign_objects(shop_user)
    # the shop's own operations first (they also make rpc-orders, bound)
    assert {name: attempt(shop_user, action) for name, action in ALLOWED.items()} == {
        name: "ok" for name in ALLOWED
    }
    assert {name: attempt(shop_user, action) for name, action in FORBIDDEN.items()} == {
        name: "refused" for name in FORBIDDEN
    }

    # The same attempts with every right: all go through, so the refusals above are the
    # permissions' doing (RabbitMQ's argument order: configure, read, write).
    shop_user.manager.set_vhost_permissions(shop_user.vhost, shop_user.user, ".*", ".*", ".*")
    assert {name: attempt(shop_user, action) for name, action in FORBIDDEN.items()} == {
        name: "ok" for name in FORBIDDEN
    }


# --- the shop itself, as that user -----------------------------------------------------


@pytest.fixture
def shop(shop_user, runner_factory, service_config):
    """customers, products (with its ops listener), orders and a gateway, in-process
    containers connected as the shop user; ``.gateway`` and ``.ops`` are base URLs."""
    config = {**service_config, "AMQP_URI": shop_user.uri, "AUTH_MODE": "off"}
    ops = f"127.0.0.1:{free_port()}"
    runner_factory({**config, "OPS_HTTP_ADDRESS": ops}, ProductsService).start()
    runner_factory(config, CustomersService, OrdersService).start()
    web = f"127.0.0.1:{free_port()}"
    runner_factory({**config, "WEB_SERVER_ADDRESS": web}, GatewayService).start()
    return types.SimpleNamespace(
        user=shop_user, config=config, gateway=f"http://{web}", ops=f"http://{ops}"
    )


def eventually(check, what, within=WAIT):
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        time.sleep(0.2)


def known_customer(engines, customer_id):
    with engines["orders"].connect() as conn:
        return (
            conn.scalar(
                text("SELECT count(*) FROM known_customers WHERE id = :id"), {"id": customer_id}
            )
            == 1
        )


def test_the_shop_runs_end_to_end_as_the_shop_user(shop, clean_databases):
    api = f"{shop.gateway}/api"

    def ready():
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{shop.gateway}/ready", timeout=5).status_code == 200
        return False

    eventually(ready, "the gateway's /ready (every service answering its RPC)")
    # products' ops listener: its broker watch connected and publishing its probe
    ops_ready = requests.get(f"{shop.ops}/ready", timeout=5)
    assert (ops_ready.status_code, ops_ready.json()["checks"]["rabbitmq"]) == (
        200,
        {"status": "ok"},
    )

    customer = requests.post(
        f"{api}/customers", json={"name": "p", "email": "p@example.com"}, timeout=10
    )
    assert customer.status_code == 201, customer.text
    customer_id = customer.json()["id"]
    # customers' event customer_created, handled by orders (evt-customers-... queue)
    eventually(lambda: known_customer(clean_databases, customer_id), "customer_created handled")

    product = requests.post(
        f"{api}/products", json={"name": "ruler", "price": "3.5", "stock": 3}, timeout=10
    )
    assert product.status_code == 201, product.text
    product_id = product.json()["id"]
    order = requests.post(
        f"{api}/orders",
        json={"customer_id": customer_id, "products": [{"id": product_id, "quantity": 2}]},
        timeout=30,
    )
    assert order.status_code == 201, order.text
    assert (order.json()["status"], order.json()["total"]) == ("confirmed", "7.00")

    # `nameko shell` as the shop user: ClusterRpcProxy calls and an event dispatch
    with ClusterRpcProxy({"AMQP_URI": shop.user.uri}, timeout=10) as n:
        assert n.customers.ping() == "pong"
        assert n.orders.get_order(order.json()["id"])["status"] == "confirmed"
        assert n.products.get_product(product_id)["stock"] == 1
    event_dispatcher({"AMQP_URI": shop.user.uri})("customers", "customer_created", {"id": 4242})
    eventually(lambda: known_customer(clean_databases, 4242), "a dispatched event handled")

    assert requests.get(f"{shop.ops}/ready", timeout=5).status_code == 200

    # Everything the shop made is named by the permissions, and is what
    # common/broker_permissions.py says Nameko makes.
    vhost = quote(shop.user.vhost, safe="")
    queues = {q["name"] for q in admin_api(shop.user, "GET", f"queues/{vhost}")}
    exchanges = {
        e["name"]
        for e in admin_api(shop.user, "GET", f"exchanges/{vhost}")
        if e["name"] and not e["name"].startswith("amq.")
    }
    for name in queues | exchanges:
        assert broker_permissions.allowed("configure", name), name
    assert exchanges == {"nameko-rpc", "customers.events"}
    assert {
        "rpc-customers",
        "rpc-products",
        "rpc-orders",
        "evt-customers-customer_created--orders.remember_customer",
    } <= queues
    reply_owners = {
        re.match(r"rpc\.reply-(\w+)-", q).group(1) for q in queues if q.startswith("rpc.reply-")
    }
    assert {"gateway", "orders", "standalone_rpc_proxy"} <= reply_owners
