"""Throughput of products' hold reconciler (products/reconcile.py), in holds per second.

    .venv/bin/python bench/reconciler.py

Needs PostgreSQL and RabbitMQ (config.yml's), not the running stack: it creates its own
databases (``shop_{products,orders}_reconbench_<pid>``, migrated), its own RabbitMQ
vhost, and runs real ``nameko run`` processes of products and orders on them, configured
as `make up` does except where stated below. For each process count of
``BENCH_PROCESSES``:

* **backlog**: ``BENCH_HOLDS`` holds ``reserved`` an hour ago, each with its
  ``confirmed`` order, are committed at once; the products processes' timers take them
  (one ``orders.order_states`` RPC per batch) until none is left;
* **orphans**: ``BENCH_ORPHANS`` holds of one line each whose order does not exist:
  every one is released, its stock given back (the slow path: one transaction each).

holds/s = holds / (last hold's change - first hold's change), read from the holds'
``updated_at``; the wall time from the commit to the last change is shown too (it
includes up to one HOLD_CHECK_INTERVAL before the first tick). The share of each process
comes from its log. Everything it creates is removed at the end; nothing is written to
the repository.

Environment knobs [defaults]:
  BENCH_PROCESSES      products process counts to measure [1,2]
  BENCH_ORDERS_PROCESSES  orders processes answering order_states [1, as `make up`]
  BENCH_HOLDS          backlog size [40000]
  BENCH_ORPHANS        orphan holds [2000]
  HOLD_CHECK_BATCH     holds per batch [config.yml: 500]
  HOLD_CHECK_INTERVAL  timer interval and tick budget [1: every process starts within a
                       second of the commit, so the window measures them all at work]
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import urlparse

sys.dont_write_bytecode = True  # nothing written to the repository, not even __pycache__
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nameko.testing.rabbit import Client as RabbitClient  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from common import admin  # noqa: E402
from common.config import load_config  # noqa: E402
from common.registry import SERVICE_CLASSES  # noqa: E402
from common.settings import settings_of  # noqa: E402
from scripts.readiness import wait_until_ready  # noqa: E402

START_TIMEOUT = 60


def env_int(name, default):
    return int(os.environ.get(name) or default)


class Bench:
    def __init__(self):
        self.config = load_config()
        self.admin_uri = self.config.get("DB_ADMIN_URI") or admin.DEFAULT_ADMIN_URI
        self.suffix = f"_reconbench_{os.getpid()}"
        self.uris = {}
        for service in ("products", "orders"):
            url = make_url(self.config["DB_URIS"][f"{service}:Base"])
            self.uris[service] = url.set(database=url.database + self.suffix).render_as_string(
                hide_password=False
            )
        self.engines = {}
        self.rabbit = RabbitClient(self.config["RABBIT_MANAGEMENT_URI"])
        amqp = urlparse(self.config["AMQP_URI"])
        self.amqp = amqp
        self.vhost = f"reconbench_{uuid.uuid4().hex[:8]}"
        self.amqp_uri = f"{amqp.scheme}://{amqp.netloc}/{self.vhost}"
        self.logs = tempfile.mkdtemp(prefix="reconbench-")
        self.processes = []
        self.interval = os.environ.get("HOLD_CHECK_INTERVAL") or "1"

    def setup(self):
        for service, uri in self.uris.items():
            admin.drop_database(uri, self.admin_uri)
            admin.create_database(uri, self.admin_uri)  # owned by the service's role
            admin.migrate(service, uri)
            self.engines[service] = create_engine(uri)
        self.rabbit.create_vhost(self.vhost)
        self.rabbit.set_vhost_permissions(self.vhost, self.amqp.username, ".*", ".*", ".*")

    def teardown(self):
        self.stop()
        for engine in self.engines.values():
            engine.dispose()
        for uri in self.uris.values():
            admin.drop_database(uri, self.admin_uri)
        try:
            self.rabbit.delete_vhost(self.vhost)
        except Exception:  # noqa: BLE001 - best effort
            pass
        for name in os.listdir(self.logs):
            os.remove(os.path.join(self.logs, name))
        os.rmdir(self.logs)

    # -- processes ---------------------------------------------------------------------

    def start(self, service, count):
        env = {
            **os.environ,
            "PYTHONPATH": ROOT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "AMQP_URI": self.amqp_uri,
            "PRODUCTS_DB_URI": self.uris["products"],
            "ORDERS_DB_URI": self.uris["orders"],
            "LOG_LEVEL": "INFO",
            "WORKER_LOG_LEVEL": "WARNING",
            "HOLD_CHECK_INTERVAL": self.interval,
            "RECOVERY_INTERVAL": "0",  # orders' own recovery has nothing to do here
        }
        nameko = os.path.join(os.path.dirname(sys.executable), "nameko")
        for n in range(count):
            log = open(os.path.join(self.logs, f"{service}-{n}.log"), "w")
            self.processes.append(
                (
                    f"{service}-{n}",
                    subprocess.Popen(
                        [
                            nameko,
                            "run",
                            "--config",
                            os.path.join(ROOT, "config.yml"),
                            SERVICE_CLASSES[service],
                        ],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )

    def wait_ready(self, services):
        pending = wait_until_ready(self.amqp_uri, services, timeout=START_TIMEOUT)
        if pending:
            raise SystemExit(f"{', '.join(pending)} did not start; logs in {self.logs}")

    def stop(self):
        for _, process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, log in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        self.processes = []

    def shares(self, prefix):
        """{process: holds it reconciled}, from each products process's log."""
        counts = {}
        for name in sorted(os.listdir(self.logs)):
            if not name.startswith(prefix):
                continue
            total = 0
            with open(os.path.join(self.logs, name)) as stream:
                for line in stream:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if entry.get("event") == "holds_reconciled":
                        total += entry["confirmed"] + entry["released"]
            counts[name.removesuffix(".log")] = total
        return counts

    # -- data ----------------------------------------------------------------------------

    def clean(self):
        for engine in self.engines.values():
            admin.empty_tables(engine)

    def insert_backlog(self, count):
        with self.engines["orders"].begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO orders (order_ref, customer_id, status, total, requested, "
                    "created_at, updated_at) SELECT 'bench-' || n, 1, 'confirmed', 0, '[]', "
                    "now() - interval '1 hour', now() - interval '1 hour' "
                    "FROM generate_series(1, :count) AS n"
                ),
                {"count": count},
            )
        with self.engines["products"].begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO order_holds (order_ref, status, created_at, updated_at) "
                    "SELECT 'bench-' || n, 'reserved', t, t FROM generate_series(1, :count) AS n, "
                    "LATERAL (SELECT now() - interval '1 hour' + n * interval '1 ms') AS c(t)"
                ),
                {"count": count},
            )
        return time.time()

    def insert_orphans(self, count):
        with self.engines["products"].begin() as conn:
            conn.execute(
                text("INSERT INTO products (name, price, stock) VALUES ('orphaned', 1, 0)")
            )
            conn.execute(
                text(
                    "INSERT INTO order_holds (order_ref, status, created_at, updated_at) "
                    "SELECT 'orphan-' || n, 'reserved', t, t FROM generate_series(1, :count) AS n, "
                    "LATERAL (SELECT now() - interval '1 hour' + n * interval '1 ms') AS c(t)"
                ),
                {"count": count},
            )
            conn.execute(
                text(
                    "INSERT INTO reservations (order_ref, product_id, quantity, unit_price) "
                    "SELECT 'orphan-' || n, 1, 1, 1 FROM generate_series(1, :count) AS n"
                ),
                {"count": count},
            )
        return time.time()

    def wait_done(self, prefix, count, committed_at):
        deadline = time.monotonic() + 60 + count / 50
        with self.engines["products"].connect() as conn:
            while conn.scalar(
                text(
                    "SELECT count(*) FROM order_holds WHERE status = 'reserved' "
                    "AND order_ref LIKE :prefix"
                ),
                {"prefix": prefix + "%"},
            ):
                if time.monotonic() > deadline:
                    raise SystemExit(f"reconciler did not finish; logs in {self.logs}")
                time.sleep(0.2)
                conn.rollback()
            first, last, done = conn.execute(
                text(
                    "SELECT extract(epoch FROM min(updated_at)), extract(epoch FROM max(updated_at)),"
                    " count(*) FROM order_holds WHERE order_ref LIKE :prefix"
                ),
                {"prefix": prefix + "%"},
            ).one()
            stock = (
                conn.scalar(text("SELECT stock FROM products WHERE id = 1"))
                if prefix == "orphan-"
                else None
            )
        assert done == count
        if stock is not None:
            assert stock == count, f"stock given back {stock}, expected {count}"
        window = float(last) - float(first)
        return {
            "holds": count,
            "holds_per_s": count / window if window else float("inf"),
            "window_s": window,
            "wall_s": float(last) - committed_at,
        }

    # -- one run -------------------------------------------------------------------------

    def run(self, products_processes, orders_processes, holds, orphans):
        self.clean()
        for name in os.listdir(self.logs):
            os.remove(os.path.join(self.logs, name))
        self.start("orders", orders_processes)
        self.start("products", products_processes)
        self.wait_ready(["orders", "products"])
        results = {}
        try:
            results["backlog"] = self.wait_done("bench-", holds, self.insert_backlog(holds))
            if orphans:
                results["orphans"] = self.wait_done(
                    "orphan-", orphans, self.insert_orphans(orphans)
                )
        finally:
            self.stop()
        results["shares"] = self.shares("products-")
        return results


def main():
    processes = [int(n) for n in os.environ.get("BENCH_PROCESSES", "1,2").split(",")]
    orders_processes = env_int("BENCH_ORDERS_PROCESSES", 1)
    holds = env_int("BENCH_HOLDS", 40000)
    orphans = env_int("BENCH_ORPHANS", 2000)
    bench = Bench()
    batch = settings_of(bench.config).hold_check_batch  # the environment's, else the default
    print(
        f"reconciler bench: {holds} confirmed holds, {orphans} orphans; batch {batch}, "
        f"interval {bench.interval} s; orders x{orders_processes}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    bench.setup()
    try:
        for count in processes:
            result = bench.run(count, orders_processes, holds, orphans)
            for kind in ("backlog", "orphans"):
                if kind in result:
                    r = result[kind]
                    print(
                        f"products x{count} {kind:8s}: {r['holds_per_s']:8.0f} holds/s "
                        f"({r['holds']} in {r['window_s']:.2f} s; {r['wall_s']:.2f} s from "
                        f"the commit)",
                        flush=True,
                    )
            print(f"products x{count} shares  : {result['shares']}", flush=True)
    finally:
        bench.teardown()


if __name__ == "__main__":
    main()
