"""The real stack as separate processes, for the end-to-end and fault layers.

The processes run under supervisord with the configuration `make up` writes
(scripts/supervisor.py), on the environment given (their own RabbitMQ vhost, the test
databases, free gateway ports), each with its log under ``<run_dir>/logs``. The fault
tests kill processes by name and let supervisord restart them, as in production.
"""

import contextlib
import importlib
import os
import secrets
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse

from sqlalchemy import text

from common.config import ROOT
from common.registry import SERVICE_CLASSES
from scripts.processes import children, free_port, free_port_block, process_alive
from scripts.readiness import wait_until_ready
from scripts.supervisor import (
    HEADER,
    PRIORITY,
    PROGRAM,
    STOP_WAIT_SECONDS,
    metrics_targets,
    write_supervisor_conf,
)

START_TIMEOUT = 60


def service_class(kind):
    """The class ``nameko run`` starts for ``kind`` (common/registry.py), imported by its
    registered name: a service's integration tests run the other services' containers
    this way, as supervisord does, without importing their packages (no service package
    imports another, tests included: tests/test_import_graph.py)."""
    module, _, name = SERVICE_CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


@contextlib.contextmanager
def rabbit_vhost(rabbit_manager, amqp_uri, prefix):
    """An AMQP URI on a new vhost (deleted afterwards) of the broker at ``amqp_uri``."""
    amqp = urlparse(amqp_uri)
    vhost = f"{prefix}_{secrets.token_hex(4)}"
    rabbit_manager.create_vhost(vhost)
    rabbit_manager.set_vhost_permissions(vhost, amqp.username, ".*", ".*", ".*")
    try:
        yield f"{amqp.scheme}://{amqp.netloc}/{vhost}"
    finally:
        with contextlib.suppress(Exception):
            rabbit_manager.delete_vhost(vhost)


@contextlib.contextmanager
def stack_on_vhost(
    request,
    rabbit_manager,
    db_uris,
    run_dir,
    prefix,
    processes,
    gateway_processes=None,
    **overrides,
):
    """A running :class:`Stack` (``processes``, ``gateway_processes``, the settings
    ``overrides``) on a vhost of its own (``<prefix>_<random>``, deleted afterwards) of the
    test broker, in front of ``db_uris``: what the e2e and fault layers' ``stack`` fixtures
    share."""
    amqp_uri = request.config.getoption("RABBIT_AMQP_URI")
    with rabbit_vhost(rabbit_manager, amqp_uri, prefix) as vhost_uri:
        env = stack_env(vhost_uri, db_uris, **overrides)
        with Stack(env, run_dir, processes, gateway_processes=gateway_processes) as running:
            yield running


def stack_env(amqp_uri, db_uris, **overrides):
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "AMQP_URI": amqp_uri,
        "CUSTOMERS_DB_URI": db_uris["customers"],
        "PRODUCTS_DB_URI": db_uris["products"],
        "ORDERS_DB_URI": db_uris["orders"],
        "LOG_LEVEL": "WARNING",
        # 6 connections per process: a test stack and `make up` fit in max_connections=100
        "MAX_WORKERS": "6",
        **{key: str(value) for key, value in overrides.items()},
    }


class Stack:
    """The stack under supervisord, configured exactly as `make up` configures it
    (scripts/supervisor.py), in a directory of its own: a process that dies is restarted.
    ``urls`` are the gateways' base URLs; processes are named ``products-0`` etc.
    ``config`` holds what the configuration was written from (processes, gateway
    addresses, operations ports); ``metrics_targets`` is every process's metrics address
    by service (``gateway`` included).
    ``gateway_processes`` serve the ``gateways`` addresses (default: one process each, so
    that a test can kill one gateway while the others answer).
    ``with Stack(...) as running:`` starts it and always stops it."""

    def __init__(self, env, run_dir, processes, gateways=3, gateway_processes=None):
        self.env = env
        self.run_dir = run_dir
        self.counts = processes
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(gateways)]
        self.urls = [f"http://{address}" for address in self.addresses]
        self.config = {
            "PROCESSES": processes,
            "GATEWAY_ADDRESSES": self.addresses,
            "GATEWAY_PROCESSES": gateway_processes or gateways,
            "OPS_HTTP_HOST": "127.0.0.1",
            "OPS_HTTP_PORTS": {service: free_port_block() for service in processes},
        }
        self.metrics_targets = metrics_targets(self.config)
        self.conf = write_supervisor_conf(self.config, run_dir)
        self.supervisord = None

    def ctl(self, *args):
        return subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "supervisorctl"),
                "-c",
                self.conf,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()

    def start(self):
        self.supervisord = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "supervisord"),
                "--nodaemon",
                "-c",
                self.conf,
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_ready()

    def program(self, name):
        """supervisord's name for ``products-0`` or ``gateway-1`` (gateways go by port)."""
        service, index = name.rsplit("-", 1)
        if service == "gateway":
            port = self.addresses[int(index)].rsplit(":", 1)[1]
            return f"gateways:gateway-{port}-0"
        return f"{service}:{name}"

    def pid(self, name):
        return int(self.ctl("pid", self.program(name)))

    def kill(self, name, sig=signal.SIGKILL):
        """Send ``sig`` to the process: supervisord restarts it, as in production."""
        pid = self.pid(name)
        os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while process_alive(pid):
            assert time.monotonic() < deadline, f"{name} ({pid}) ignored signal {sig}"
            time.sleep(0.1)

    def stop_service(self, service):
        """Stop every process of ``service`` (SIGTERM, as `make down`); not restarted."""
        self.ctl("stop", f"{service}:*")

    def start_service(self, service):
        self.ctl("start", f"{service}:*")
        self.wait_ready([service])

    def wait_ready(self, services=None):
        """Every service in ``services`` (default: all, and the gateways) answers."""
        pending = wait_until_ready(
            self.env["AMQP_URI"],
            services or list(self.counts),
            self.urls if services is None else (),
            timeout=START_TIMEOUT,
        )
        assert not pending, (
            f"stack not ready: {pending}; {self.ctl('status')}; logs in {self.run_dir}/logs"
        )

    def __enter__(self):
        try:
            self.start()
        except BaseException:  # a stack that never became ready still has processes
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def stop(self):
        """SIGTERM every process (as `make down`), then supervisord itself exits. A
        program still running after that (supervisord killed at the 90 s bound, or not
        answering) is SIGKILLed: supervisord puts each in a process group of its own, so
        nothing else would ever stop it."""
        if self.supervisord is None:
            return
        programs = children(self.supervisord.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ctl("shutdown")
        try:
            self.supervisord.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.supervisord.kill()
            self.supervisord.wait()
        self.supervisord = None
        for pid in programs:
            with contextlib.suppress(ProcessLookupError):
                if process_alive(pid):
                    os.kill(pid, signal.SIGKILL)


def program(name, kind, root, run_dir, env=None):
    """A supervisord ``[program:<name>]`` running one ``kind`` process (a service, or
    ``gateway``) of the code checked out at ``root`` (this checkout, or a release's git
    worktree), as `make up` runs it (scripts/supervisor.py's template): ``nameko run``
    in ``root`` with ``root`` first on PYTHONPATH and ``root``'s config.yml, the
    environment of supervisord plus ``env`` (e.g. ``OPS_HTTP_ADDRESS``,
    ``WEB_SERVER_ADDRESS``). Its process is ``<name>-0``, logging to
    ``<run_dir>/logs/<name>-0.log``."""
    extra_env = "".join(f',{key}="{value}"' for key, value in (env or {}).items())
    return PROGRAM.format(
        name=name,
        module=SERVICE_CLASSES[kind],
        processes=1,
        extra_env=extra_env,
        priority=PRIORITY.get("gateways" if kind == "gateway" else kind, 700),
        stopwaitsecs=STOP_WAIT_SECONDS,
        nameko=os.path.join(os.path.dirname(sys.executable), "nameko"),
        root=root,
        run=run_dir,
    )


class ProgramStack(Stack):
    """supervisord running the programs a test adds one by one (:func:`program`: any
    mix of code directories), for a test that replaces processes itself (the rolling
    upgrade). Starts with none; :meth:`add` starts a program, :meth:`stop_program` stops
    one gracefully. ``with ProgramStack(env, run_dir) as stack:`` always shuts it down
    (SIGTERM to every program still running, as `make down`)."""

    def __init__(self, env, run_dir):
        self.env = env
        self.run_dir = run_dir
        os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
        self.conf = os.path.join(run_dir, "supervisord.conf")
        with open(self.conf, "w") as stream:
            stream.write(HEADER.format(run=run_dir))
        self.supervisord = None

    def start(self):
        """supervisord, answering supervisorctl (within START_TIMEOUT)."""
        self.supervisord = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "supervisord"), "--nodaemon"]
            + ["-c", self.conf],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ctl("pid").isdigit():
            assert time.monotonic() < deadline, f"supervisord did not start: {self.run_dir}"
            time.sleep(0.2)

    def add(self, name, section):
        """Append ``section`` (a ``[program:<name>]``) to the configuration and start it
        (supervisord's ``reread`` + ``add``); returns once it is spawned (wait for its
        readiness probe)."""
        with open(self.conf, "a") as stream:
            stream.write(section)
        self.ctl("reread")
        added = self.ctl("add", name)
        assert "ERROR" not in added, f"{name}: {added}"

    def stop_program(self, name):
        """SIGTERM ``name``'s process (a graceful stop) and wait until it has exited;
        returns supervisorctl's answer."""
        return self.ctl("stop", f"{name}:*")


def books(engines):
    """What the databases say: ``(stock_left, held, sold)`` where ``stock_left`` is
    ``{product_id: stock}``, ``held`` maps ``"order_ref:product_id"`` to the quantity held
    for a live (reserved or confirmed) hold, and ``sold`` the same for confirmed orders."""
    with engines["products"].connect() as conn:
        stock_left = dict(conn.execute(text("SELECT id, stock FROM products")).all())
        held = dict(
            conn.execute(
                text(
                    "SELECT r.order_ref || ':' || r.product_id, r.quantity FROM reservations r "
                    "JOIN order_holds h ON h.order_ref = r.order_ref "
                    "WHERE h.status IN ('reserved', 'confirmed')"
                )
            ).all()
        )
    with engines["orders"].connect() as conn:
        sold = dict(
            conn.execute(
                text(
                    "SELECT o.order_ref || ':' || l.product_id, l.quantity FROM orders o "
                    "JOIN order_lines l ON l.order_id = o.id WHERE o.status = 'confirmed'"
                )
            ).all()
        )
    return stock_left, held, sold


def books_balance(engines, stock_added):
    """The bank invariant, as a list of violations (empty when it holds): per product,
    stock left + units in confirmed orders == stock added and stock >= 0; every confirmed
    order line has exactly one live hold of the same quantity, and no live hold lacks its
    confirmed order; no order is left ``cancelling`` (a cancel half done: its stock may be
    back while the order is not cancelled yet, so neither side counts it)."""
    stock_left, held, sold = books(engines)
    problems = []
    with engines["orders"].connect() as conn:
        cancelling = conn.scalars(
            text("SELECT id FROM orders WHERE status = 'cancelling' ORDER BY id")
        ).all()
    if cancelling:
        problems.append(f"orders left cancelling: {cancelling}")
    if held != sold:
        problems.append(
            f"holds without a confirmed order: {sorted(set(held) - set(sold))}; "
            f"confirmed lines without a hold: {sorted(set(sold) - set(held))}"
        )
    for product_id, added in stock_added.items():
        units_sold = sum(q for key, q in sold.items() if key.endswith(f":{product_id}"))
        if stock_left[product_id] < 0 or stock_left[product_id] + units_sold != added:
            problems.append(
                f"product {product_id}: added {added}, left "
                f"{stock_left[product_id]}, sold {units_sold}"
            )
    return problems
