"""`make bench`: a reproducible load benchmark of the running stack (`make up` first).

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/run.py

It prepares data (through the HTTP API, and scripts/seed.py for the big catalog), runs
each scenario with wrk for a fixed time, with the Lua scripts of bench/lua, then a burst
of new TCP connections from Python, and prints one table. Traffic goes to 127.0.0.1 only;
every run is bounded in time and stops by itself. See docs/BENCHMARKS.md.

Environment knobs (defaults in brackets):
  BENCH_DURATION     seconds of load per scenario [10]
  BENCH_CONNECTIONS  wrk connections, spread evenly over the ports [50, rounded down to a
                     multiple of the threads: 48]
  BENCH_THREADS      wrk threads; each one drives one port, round-robin [one per port: 3]
  BENCH_PORTS        gateway ports on 127.0.0.1 [8000,8001,8002]
  BENCH_DRAIN        at most this many seconds to wait, after the load, for the answers
                     to requests in flight [25: the gateway's bound on an order is 20 s]
  BENCH_TIMEOUT      wrk --timeout: slower answers count as timeouts [25]
  BENCH_SMALL_CATALOG / BENCH_BIG_CATALOG   products present for scenarios 2-3 [1000 / 100000]
  BENCH_ORDER_PRODUCTS  products created for the spread-orders scenario [200]
  BENCH_BURST        simultaneous new connections of the burst check [500]
  BENCH_ONLY         comma-separated subset of: ceiling,by_id,list_small,list_big,customers,
                     orders,hot,burst [all]
  BENCH_PAUSE        seconds of rest between scenarios [1]
  BENCH_DEBUG        set: print the traceback of a harness error

Exit status: 0 when the run completed (service errors are results, shown in the table),
1 when the stock invariant failed, 2 on a harness error, 3 when the stack is not up or
wrk is missing.
"""
import asyncio
import datetime
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA_DIR = os.path.join(ROOT, "bench", "lua")
RESULTS_DIR = os.path.join(ROOT, ".run", "bench")
HOST = "127.0.0.1"  # never anything else: the benchmark only loads this machine
SCENARIOS = ("ceiling", "by_id", "list_small", "list_big", "customers", "orders", "hot", "burst")


class HarnessError(Exception):
    """The benchmark itself could not do its job (not a finding about the services)."""


def env_number(name, default, kind=float):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise HarnessError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise HarnessError(f"{name} must be positive")
    return value


class Settings:
    def __init__(self):
        self.duration = env_number("BENCH_DURATION", 10.0)
        self.ports = [int(p) for p in re.findall(r"\d+", os.environ.get("BENCH_PORTS", "8000,8001,8002"))]
        if not self.ports:
            raise HarnessError("BENCH_PORTS names no port")
        self.threads = env_number("BENCH_THREADS", len(self.ports), int)
        self.connections_asked = env_number("BENCH_CONNECTIONS", 50, int)
        self.drain = env_number("BENCH_DRAIN", 25.0)
        self.timeout = env_number("BENCH_TIMEOUT", 25, int)
        self.small_catalog = env_number("BENCH_SMALL_CATALOG", 1000, int)
        self.big_catalog = env_number("BENCH_BIG_CATALOG", 100_000, int)
        self.order_products = env_number("BENCH_ORDER_PRODUCTS", 200, int)
        self.burst = env_number("BENCH_BURST", 500, int)
        self.pause = float(os.environ.get("BENCH_PAUSE", "1") or 0)
        only = os.environ.get("BENCH_ONLY", "").strip()
        self.only = [s.strip() for s in only.split(",") if s.strip()] if only else list(SCENARIOS)
        unknown = set(self.only) - set(SCENARIOS)
        if unknown:
            raise HarnessError(f"BENCH_ONLY: unknown scenarios {sorted(unknown)}; known: {SCENARIOS}")
        self.threads = min(self.threads, self.connections_asked)
        # wrk gives every thread connections // threads connections.
        self.connections = (self.connections_asked // self.threads) * self.threads
        self.tag = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(8))

    def url(self, path, port=None):
        return f"http://{HOST}:{port or self.ports[0]}{path}"


# --------------------------------------------------------------------------------------
# The machine


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem = subprocess.run(["free", "-h"], capture_output=True, text=True, timeout=5).stdout
        mem_total = mem.splitlines()[1].split()[1]
    except Exception:
        mem_total = "?"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem_total,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "kernel": platform.release(),
        "wrk": wrk_version(),
    }


def wrk_version():
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
        return (out.stdout + out.stderr).split("Copyright")[0].strip()
    except Exception:
        return "not installed"


# --------------------------------------------------------------------------------------
# Where the CPU goes: /proc accounting around each scenario

COMPONENTS = ("gateway", "customers", "products", "orders", "rabbitmq", "postgres", "wrk", "bench")
RABBITMQ_COMMS = {"beam.smp", "erl_child_setup", "inet_gethost", "epmd"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def supervisord_pid():
    try:
        with open(os.path.join(ROOT, ".run", "supervisord.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def classify(pid, comm, ppid, stack_parent):
    if comm in RABBITMQ_COMMS:
        return "rabbitmq"
    if comm.startswith("postgres"):
        return "postgres"
    if comm == "wrk":
        return "wrk"
    if pid == os.getpid():
        return "bench"
    if stack_parent is not None and ppid == stack_parent:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            return "other"
        for service in ("gateway", "customers", "products", "orders"):
            if f"{service}.service" in cmdline:
                return service
    return "other"  # anything else, the stack's own tests included


def cpu_snapshot():
    """CPU seconds used so far by each process, classified; and the machine's busy time."""
    stack_parent = supervisord_pid()
    per_pid = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        pid, ppid = int(entry), int(fields[1])
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        per_pid[pid] = (classify(pid, comm, ppid, stack_parent), seconds, comm, ppid)
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return {"pids": per_pid, "busy": (sum(ticks) - idle) / CLOCK_TICKS,
            "total": sum(ticks) / CLOCK_TICKS}


def cpu_usage(before, after):
    """CPU seconds per component between two snapshots (processes that exited meanwhile
    are missing: short-lived ones are undercounted)."""
    used = {}
    for pid, (component, seconds, _, _) in after["pids"].items():
        previous = before["pids"].get(pid)
        start = previous[1] if previous and previous[0] == component else 0.0
        used[component] = used.get(component, 0.0) + max(seconds - start, 0.0)
    return {
        "components": used,
        "busy": after["busy"] - before["busy"],
        "total": after["total"] - before["total"],
    }


def long_lived(snapshot):
    """The processes whose restart disturbs a measurement: the stack's services and
    gateways, RabbitMQ's VM, PostgreSQL's postmaster."""
    pids = snapshot["pids"]
    found = {}
    for pid, (component, _, comm, ppid) in pids.items():
        if component in ("gateway", "customers", "products", "orders"):
            found[pid] = component
        elif comm == "beam.smp" and is_rabbitmq_server(pid):
            found[pid] = "RabbitMQ"
        elif component == "postgres" and not pids.get(ppid, ("", 0, ""))[2].startswith("postgres"):
            found[pid] = "PostgreSQL"
    return found


def is_rabbitmq_server(pid):
    """The broker's VM, not a short-lived CLI VM (rabbitmqctl, rabbitmq-plugins: `make
    seed` checks the backing services) whose exit is no restart."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"rabbit\x00boot" in f.read()
    except OSError:
        return False


def restarts(before, after):
    """What stopped during a run (a pid gone), e.g. ['RabbitMQ', 'gateway']."""
    gone = long_lived(before).keys() - long_lived(after).keys()
    names = long_lived(before)
    return sorted({names[pid] for pid in gone})


def children_cpu():
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_note(usage, answers):
    used = usage["components"]
    parts = []
    for component in COMPONENTS:
        seconds = used.get(component, 0.0)
        if seconds >= 0.01 and answers:
            parts.append(f"{component} {seconds * 1000 / answers:.2f}")
    machine = usage["total"] or 1.0
    other = used.get("other", 0.0)
    return (
        "CPU ms per answer: " + (", ".join(parts) or "-")
        + f"; machine busy {100 * usage['busy'] / machine:.0f}%, of which processes outside "
        + f"the stack and the bench {100 * other / machine:.0f}%"
    )


# --------------------------------------------------------------------------------------
# Preflight


def preflight(settings):
    try:
        response = requests.get(settings.url("/health"), timeout=3)
        ok = response.status_code == 200
    except requests.RequestException as exc:
        ok, response = False, exc
    if not ok:
        print(
            f"bench: the gateway on {HOST}:{settings.ports[0]} does not answer GET /health "
            f"({response}).\nbench: start the stack first: `make up`, then `make bench`.",
            file=sys.stderr,
        )
        sys.exit(3)
    up = []
    for port in settings.ports:
        try:
            if requests.get(settings.url("/health", port), timeout=3).status_code == 200:
                up.append(port)
                continue
        except requests.RequestException:
            pass
        print(f"bench: warning: gateway port {port} does not answer /health; not using it")
    settings.ports = up
    if shutil.which("wrk") is None:
        print(
            "bench: wrk is not installed: `apt-get install -y wrk` (as root), or `make bench` "
            "which installs it when run as root.",
            file=sys.stderr,
        )
        sys.exit(3)


# --------------------------------------------------------------------------------------
# Data: HTTP API, and the products database for counts and id samples


class Api:
    def __init__(self, settings):
        self.settings = settings
        self.session = requests.Session()

    def _check(self, response, expected):
        if response.status_code != expected:
            raise HarnessError(
                f"{response.request.method} {response.request.path_url} answered "
                f"{response.status_code} (expected {expected}): {response.text[:300]}"
            )
        return response.json()

    @staticmethod
    def _retrying(call):
        """Preparation requests are retried on 5xx and connection errors (3 tries, 1 s
        apart): the data must exist before the measurement, whatever happens meanwhile."""
        for attempt in range(3):
            try:
                response = call()
                if response.status_code < 500 or attempt == 2:
                    return response
            except requests.ConnectionError:
                if attempt == 2:
                    raise
            time.sleep(1)

    def post(self, path, body, session=None):
        session = session or self.session
        response = self._retrying(
            lambda: session.post(self.settings.url(path), json=body, timeout=30)
        )
        return self._check(response, 201)

    def get(self, path):
        response = self._retrying(lambda: self.session.get(self.settings.url(path), timeout=30))
        return self._check(response, 200)

    def create_products(self, count, stock, label):
        def create(index):
            with requests.Session() as session:
                return self.post(
                    "/api/products",
                    {"name": f"bench {label} {self.settings.tag} {index}", "price": "1.00", "stock": stock},
                    session,
                )["id"]

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(create, range(count)))

    def create_customer(self, label):
        return self.post(
            "/api/customers",
            {"name": f"bench {label}", "email": f"bench.{label}.{self.settings.tag}@example.com"},
        )["id"]

    def stock(self, product_id):
        return self.get(f"/api/products/{product_id}")["stock"]


def products_db_uri():
    if os.environ.get("PRODUCTS_DB_URI"):
        return os.environ["PRODUCTS_DB_URI"]
    import yaml

    path = os.environ.get("SHOP_CONFIG", os.path.join(ROOT, "config.yml"))
    with open(path) as f:
        text = re.sub(
            r"\$\{(\w+):([^}]*)\}", lambda m: os.environ.get(m.group(1), m.group(2)), f.read()
        )
    return yaml.safe_load(text)["DB_URIS"]["products:Base"]


class Catalog:
    """Read-only look at the products table (count, id samples); seeding by scripts/seed.py."""

    def __init__(self):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        # A new connection per query: nothing stale if PostgreSQL restarts meanwhile.
        self.engine = create_engine(products_db_uri(), poolclass=NullPool)

    def _query(self, sql, **params):
        from sqlalchemy import exc, text

        for attempt in range(5):
            try:
                with self.engine.connect() as conn:
                    return conn.execute(text(sql), params).fetchall()
            except exc.OperationalError as error:
                if attempt == 4:
                    raise HarnessError(f"products database: {error}") from None
                time.sleep(2)

    def count(self):
        return self._query("SELECT count(*) FROM products")[0][0]

    def sample_ids(self, limit=10_000):
        rows = self._query("SELECT id FROM products ORDER BY random() LIMIT :n", n=limit)
        return [row[0] for row in rows]

    def ensure(self, at_least):
        present = self.count()
        if present >= at_least:
            print(f"  products present: {present:,} (>= {at_least:,}, nothing to seed)")
            return present
        missing = at_least - present
        print(f"  products present: {present:,}; seeding {missing:,} with scripts/seed.py ...")
        started = time.monotonic()
        for attempt in range(2):  # once more if the database went away meanwhile
            result = subprocess.run(
                [sys.executable, os.path.join(ROOT, "scripts", "manage.py"), "seed",
                 "--customers", "0", "--products", str(at_least - self.count())],
                cwd=ROOT, capture_output=True, text=True, timeout=600,
            )
            if result.returncode == 0:
                break
            if attempt == 1:
                raise HarnessError(
                    f"seeding failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
                )
            time.sleep(3)
        present = self.count()
        print(f"  seeded in {time.monotonic() - started:.1f}s; products present: {present:,}")
        return present

    def close(self):
        self.engine.dispose()


# --------------------------------------------------------------------------------------
# wrk


class Row:
    def __init__(self, key, label):
        self.key = key
        self.label = label
        self.rps = None
        self.p50 = self.p95 = self.p99 = None
        self.errors = 0
        self.invariant = "-"
        self.notes = []
        self.raw = None
        self.failed = False
        self.disturbed = False

    def as_dict(self):
        return {k: v for k, v in vars(self).items()}


def run_wrk(settings, workdir, script, row, path="/", env_extra=None):
    """One wrk run: load for BENCH_DURATION, then drain; fills ``row``; returns wrk's JSON."""
    mark_dir = tempfile.mkdtemp(prefix="marks-", dir=workdir)
    env = dict(os.environ)
    env.update({
        "WRKB_LUA_DIR": LUA_DIR,
        "WRKB_HOST": HOST,
        "WRKB_PORTS": ",".join(str(p) for p in settings.ports),
        "WRKB_DURATION": str(settings.duration),
        "WRKB_MARK_DIR": mark_dir,
        "WRKB_TAG": settings.tag,
        "WRKB_CONNECTIONS_PER_THREAD": str(settings.connections // settings.threads),
    })
    env.update({k: str(v) for k, v in (env_extra or {}).items()})
    # wrk's own bound: load + drain + slack. It stops by itself then, whatever happens.
    bound = math.ceil(settings.duration + settings.drain + 2)
    cmd = [
        "wrk", "-t", str(settings.threads), "-c", str(settings.connections), "-d", f"{bound}s",
        "--timeout", f"{settings.timeout}s", "-s", os.path.join(LUA_DIR, script),
        settings.url(path),
    ]
    started = time.monotonic()
    cpu_before = cpu_snapshot()
    children_before = children_cpu()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    interrupted = False
    try:
        while proc.poll() is None:
            if len(os.listdir(mark_dir)) >= settings.threads and not interrupted:
                proc.send_signal(signal.SIGINT)  # every thread drained: wrk reports now
                interrupted = True
            if time.monotonic() - started > bound + 30:
                proc.kill()
                raise HarnessError(f"wrk did not stop after {bound + 30}s: killed")
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=30)
        cpu_after = cpu_snapshot()
        cpu = cpu_usage(cpu_before, cpu_after)
        stopped = restarts(cpu_before, cpu_after)
        # wrk has exited by now: its CPU is in our children's rusage, not in /proc.
        cpu["components"]["wrk"] = children_cpu() - children_before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = next((l for l in stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise HarnessError(
            f"wrk ({' '.join(cmd)}) exited {proc.returncode} without results:\n"
            f"{stdout[-2000:]}\n{stderr[-2000:]}"
        )
    if stderr.strip():
        row.notes.append(f"wrk stderr: {stderr.strip()[:300]}")
    data = json.loads(line[len("BENCH_JSON "):])
    data["wall_s"] = time.monotonic() - started
    data["cpu"] = cpu
    fill_row(row, data, settings)
    row.notes.append(cpu_note(cpu, data["received"]))
    if stopped:
        row.disturbed = True
        row.notes.append(
            "DISTURBED: these processes stopped or restarted during the run: "
            + ", ".join(stopped) + " (see `make ps`, .run/logs, the broker's and database's logs)"
        )
    return data


def fill_row(row, data, settings):
    row.raw = data
    # Answers over the time they took: the load phase, stretched by the drain's last
    # answers (never shorter than the load phase, even if the answers stopped early).
    span = max(data["span_s"] or 0.0, settings.duration)
    row.rps = data["received"] / span
    lat = data["latency_us"]
    row.p50, row.p95, row.p99 = (lat[k] / 1000.0 for k in ("p50", "p95", "p99"))
    errs = data["errors"]
    socket_errors = errs["connect"] + errs["read"] + errs["write"]
    # A refused or reset connection is both a socket error and a lost request: count once.
    row.errors = data["non2xx"] + errs["timeout"] + max(socket_errors, data["lost"], 0)
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(data["statuses"].items()))
    ports = ", ".join(f"{k}: {v}" for k, v in sorted(data["per_port"].items()))
    row.notes.append(
        f"{data['received']} answers in {span:.2f}s (statuses {statuses}; per port {ports})"
    )
    if socket_errors or errs["timeout"] or data["lost"]:
        row.notes.append(
            f"socket errors connect {errs['connect']} read {errs['read']} write {errs['write']}, "
            f"slower than {settings.timeout}s {errs['timeout']}, unanswered {data['lost']} "
            "(write errors in a burst usually mean a refused connection: a gateway down)"
        )
    if data["finished"] < data["threads"]:
        row.notes.append(
            f"only {data['finished']}/{data['threads']} wrk threads drained within "
            f"{settings.drain:.0f}s (requests lost to socket errors, or answers slower than that)"
        )
    row.notes.append(
        f"latency min {lat['min'] / 1000:.1f} mean {lat['mean'] / 1000:.1f} "
        f"p90 {lat['p90'] / 1000:.1f} p99.9 {lat['p999'] / 1000:.1f} max {lat['max'] / 1000:.1f} ms"
    )


# --------------------------------------------------------------------------------------
# Scenarios


def scenario_ceiling(ctx):
    settings = ctx["settings"]
    probe = requests.get(settings.url("/api/ping"), timeout=10)
    if probe.status_code == 404:
        path = "/health"
        row = Row("ceiling", "1 ceiling: GET /health (no RPC; /api/ping is 404)")
    else:
        path = "/api/ping"
        row = Row("ceiling", "1 ceiling: GET /api/ping (1 RPC)")
        if probe.status_code != 200:
            row.notes.append(f"probe: /api/ping answered {probe.status_code}: {probe.text[:200]}")
    run_wrk(settings, ctx["workdir"], "get.lua", row, path, {"WRKB_PATH": path})
    return row


def scenario_by_id(ctx):
    settings, catalog = ctx["settings"], ctx["catalog"]
    present = catalog.ensure(settings.small_catalog)
    ids = catalog.sample_ids()
    ids_file = os.path.join(ctx["workdir"], "product-ids.txt")
    with open(ids_file, "w") as f:
        f.write("\n".join(map(str, ids)) + "\n")
    row = Row("by_id", f"2 GET /api/products/<id> (random of {present:,})")
    run_wrk(settings, ctx["workdir"], "product_by_id.lua", row, "/api/products/1",
            {"WRKB_IDS_FILE": ids_file})
    row.notes.append(f"ids drawn from a random sample of {len(ids):,} existing products")
    return row


def scenario_list(ctx, key, at_least):
    settings, catalog = ctx["settings"], ctx["catalog"]
    present = catalog.ensure(at_least)
    row = Row(key, f"3 GET /api/products page 1 (>= {short(at_least)}: {present:,})")
    run_wrk(settings, ctx["workdir"], "get.lua", row, "/api/products", {"WRKB_PATH": "/api/products"})
    return row


def scenario_customers(ctx):
    row = Row("customers", "4 POST /api/customers (unique emails)")
    data = run_wrk(ctx["settings"], ctx["workdir"], "create_customer.lua", row, "/api/customers")
    taken = data["statuses"].get("409", 0)
    row.invariant = "no 409" if taken == 0 else f"{taken} x 409"
    return row


def scenario_orders(ctx):
    settings, api = ctx["settings"], ctx["api"]
    print(f"  creating {settings.order_products} products (stock 100,000,000) and a customer via the API ...")
    ids = api.create_products(settings.order_products, 100_000_000, "spread")
    customer = api.create_customer("orders-spread")
    ids_file = os.path.join(ctx["workdir"], "order-product-ids.txt")
    with open(ids_file, "w") as f:
        f.write("\n".join(map(str, ids)) + "\n")
    row = Row("orders", f"5 POST /api/orders (1-3 lines over {len(ids)} products)")
    run_wrk(settings, ctx["workdir"], "create_order.lua", row, "/api/orders",
            {"WRKB_IDS_FILE": ids_file, "WRKB_CUSTOMER": customer, "WRKB_MAX_LINES": 3})
    return row


def settled_stock(api, product_id, limit_s=15.0):
    """The stock once it stops moving (two equal reads 1 s apart), at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last = api.stock(product_id)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = api.stock(product_id)
        if current == last:
            return current
        last = current
    return last


def scenario_hot(ctx):
    settings, api = ctx["settings"], ctx["api"]
    stock = 10_000_000
    product = api.create_products(1, stock, "hot")[0]
    customer = api.create_customer("orders-hot")
    before = api.stock(product)
    print(f"  hot product {product}: stock {before:,}; customer {customer}")
    row = Row("hot", f"6 POST /api/orders, 1 hot product x1")
    data = run_wrk(settings, ctx["workdir"], "create_order.lua", row, "/api/orders",
                   {"WRKB_PRODUCT": product, "WRKB_CUSTOMER": customer})
    after = settled_stock(api, product)
    confirmed = data["statuses"].get("201", 0)
    sold = before - after
    lost = max(data["lost"], 0)
    detail = f"stock {before:,} -> {after:,}: {sold} sold, {confirmed} x 201"
    if after < 0:
        row.invariant, row.failed = "FAIL (stock < 0)", True
    elif lost == 0 and sold == confirmed:
        row.invariant = f"PASS ({sold} = {confirmed})"
    elif lost == 0:
        row.invariant, row.failed = f"FAIL ({sold} sold != {confirmed})", True
    elif confirmed <= sold <= confirmed + lost:
        row.invariant = f"UNSURE ({lost} unanswered)"
    else:
        row.invariant, row.failed = f"FAIL ({sold} sold, {confirmed}+{lost})", True
    row.notes.append(f"invariant: {detail}; {lost} requests unanswered")
    return row


async def burst(settings, count, port):
    request = (
        f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
    ).encode()
    go = asyncio.Event()

    async def one():
        await go.wait()
        started = time.monotonic()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
            writer.write(request)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), 10)
            while data and b"\r\n\r\n" not in data:
                more = await asyncio.wait_for(reader.read(65536), 10)
                if not more:
                    break
                data += more
            if not data:
                return "closed without answer", None
            status = data.split(b"\r\n", 1)[0].split()
            code = status[1].decode() if len(status) > 1 else "?"
            return ("ok" if code == "200" else f"HTTP {code}"), time.monotonic() - started
        except ConnectionResetError:
            return "reset", None
        except ConnectionRefusedError:
            return "refused", None
        except asyncio.TimeoutError:
            return "timeout (10s)", None
        except OSError as exc:
            return f"OSError {exc.errno}", None
        finally:
            if writer is not None:
                writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    await asyncio.sleep(0.2)  # every task waiting at the gate
    started = time.monotonic()
    go.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return results, time.monotonic() - started


def scenario_burst(ctx):
    settings = ctx["settings"]
    port = 8000 if 8000 in settings.ports else settings.ports[0]
    count = settings.burst
    row = Row("burst", f"7 burst: {count} new conns at once, GET /health :{port}")
    results, elapsed = asyncio.run(burst(settings, count, port))
    outcomes = {}
    for outcome, _ in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    times = sorted(t for outcome, t in results if outcome == "ok")
    ok = outcomes.get("ok", 0)
    row.rps = ok / elapsed if elapsed > 0 else 0.0
    if times:
        row.p50, row.p95, row.p99 = (percentile(times, q) * 1000 for q in (50, 95, 99))
    row.errors = count - ok
    resets = outcomes.get("reset", 0)
    row.invariant = f"{ok}/{count} ok, {resets} resets"
    row.notes.append(
        f"every connection finished within {elapsed:.2f}s; outcomes "
        + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
        + "; latency = connect + request + full answer"
    )
    row.raw = {"outcomes": outcomes, "elapsed_s": elapsed}
    return row


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def short(n):
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


# --------------------------------------------------------------------------------------
# Output


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_table(rows, ceiling_rps):
    headers = ["scenario", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "x ceiling", "invariant"]
    lines = []
    for row in rows:
        ratio = None
        if ceiling_rps and row.rps is not None and row.key != "burst":
            ratio = row.rps / ceiling_rps
        lines.append([
            row.label + (" (!)" if row.disturbed else ""), fmt(row.rps, ".1f"), fmt(row.p50, ".1f"), fmt(row.p95, ".1f"),
            fmt(row.p99, ".1f"), str(row.errors), fmt(ratio, ".2f"), row.invariant,
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(headers)]

    def render(cells):
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.ljust(widths[i]) if i in (0, 7) else cell.rjust(widths[i]))
        return "| " + " | ".join(out) + " |"

    print(render(headers))
    print("|" + "|".join(("-" * (w + 2)) for w in widths) + "|")
    for l in lines:
        print(render(l))
    if any(row.disturbed for row in rows):
        print("(!) a stack process, RabbitMQ or PostgreSQL stopped during that scenario: "
              "its figures are not a measurement of the steady state (notes below)")


def main():
    try:
        settings = Settings()
    except HarnessError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    preflight(settings)
    if settings.threads % len(settings.ports):
        print(f"bench: note: {settings.threads} threads over {len(settings.ports)} ports: "
              "the ports get unequal shares")
    info = machine_info()
    print(
        f"bench: {info['date']}, {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"load average {info['loadavg']}, {info['wrk']}"
    )
    print(
        f"bench: {settings.duration:g}s per scenario, {settings.connections} connections "
        f"({settings.threads} wrk threads) over ports {','.join(map(str, settings.ports))} "
        f"on {HOST}; run tag {settings.tag}"
    )
    workdir = tempfile.mkdtemp(prefix="shop-bench-")
    ctx = {"settings": settings, "workdir": workdir, "api": Api(settings)}
    rows, status = [], 0
    plan = [
        ("ceiling", scenario_ceiling),
        ("by_id", scenario_by_id),
        ("list_small", lambda c: scenario_list(c, "list_small", settings.small_catalog)),
        ("list_big", lambda c: scenario_list(c, "list_big", settings.big_catalog)),
        ("customers", scenario_customers),
        ("orders", scenario_orders),
        ("hot", scenario_hot),
        ("burst", scenario_burst),
    ]
    try:
        if {"by_id", "list_small", "list_big"} & set(settings.only):
            ctx["catalog"] = Catalog()
        for key, run in plan:
            if key not in settings.only:
                continue
            print(f"bench: {key} ...", flush=True)
            row = run(ctx)
            rows.append(row)
            print(f"  {row.rps or 0:.1f} req/s, {row.errors} errors", flush=True)
            if settings.pause:
                time.sleep(settings.pause)
    except HarnessError as exc:
        print(f"bench: harness error: {exc}", file=sys.stderr)
        status = 2
    except Exception as exc:  # noqa: BLE001 (reported, the table of what ran still prints)
        if os.environ.get("BENCH_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"bench: harness error: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 2
    finally:
        if "catalog" in ctx:
            ctx["catalog"].close()
        shutil.rmtree(workdir, ignore_errors=True)

    if not rows:
        return status or 2
    ceiling = next((r.rps for r in rows if r.key == "ceiling"), None)
    print()
    print_table(rows, ceiling)
    print()
    for row in rows:
        print(f"{row.label}:")
        for note in row.notes:
            print(f"    {note}")
    if any(r.failed for r in rows):
        status = status or 1
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RESULTS_DIR, f"bench-{stamp}.json")
    with open(path, "w") as f:
        json.dump({
            "machine": info,
            "settings": {k: v for k, v in vars(settings).items()},
            "rows": [r.as_dict() for r in rows],
            "exit_status": status,
        }, f, indent=2, default=str)
    print(f"\nbench: results saved to {os.path.relpath(path, ROOT)}"
          + ("" if status == 0 else f"; exit status {status}"))
    return status


if __name__ == "__main__":
    sys.exit(main())
