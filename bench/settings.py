"""What a `make bench` run is asked to do: paths, the ``BENCH_*`` environment knobs and
the ``BENCH_PROFILE`` they default from, the harness error, and where the products
database is (config.yml read through ``common/config.py``, like the services' own).

Profiles (``BENCH_PROFILE``) only change defaults; an explicit ``BENCH_ONLY`` or
``BENCH_DURATION`` still wins:

* ``full`` (the default): every scenario, ``BENCH_DURATION`` 10 s each, the fixed-rate
  scenario ``BENCH_LATENCY_DURATION`` 15 s per load (about 4 minutes);
* ``quick``: ceiling, product read by id, orders (spread), hot product and the fixed-rate
  scenario, 5 s each (about 1.5 minutes on a 2-CPU machine once the 1,000-product catalog
  exists).

``BENCH_SKIP`` takes scenarios out of whatever ``BENCH_ONLY`` or the profile chose
(``BENCH_SKIP=latency``: today's run without the fixed-rate scenario).
"""

import os
import random
import re
import string

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA_DIR = os.path.join(ROOT, "bench", "lua")
RESULTS_DIR = os.path.join(ROOT, ".run", "bench")
HOST = "127.0.0.1"  # never anything else: the benchmark only loads this machine
SCENARIOS = (
    "ceiling",
    "by_id",
    "list_small",
    "list_big",
    "customers",
    "orders",
    "hot",
    "burst",
    "latency",
)
PROFILES = {
    "full": {"only": SCENARIOS, "duration": 10.0, "latency_duration": 15.0},
    "quick": {
        "only": ("ceiling", "by_id", "orders", "hot", "latency"),
        "duration": 5.0,
        "latency_duration": 5.0,
    },
}
# The fixed-rate scenario (bench/latency.py): what it loads, and at which fractions of the
# capacity measured just before.
LATENCY_TARGETS = ("by_id", "orders")


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


def env_list(name, default, kind):
    """A comma-separated ``$name`` (else ``default``) as a list of ``kind``, each positive."""
    raw = os.environ.get(name, "").strip() or default
    try:
        values = [kind(part.strip()) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise HarnessError(f"{name}={raw!r} is not a list of {kind.__name__}") from None
    if not values or (kind is not str and min(values) <= 0):
        raise HarnessError(f"{name}={raw!r}: a comma-separated list of positive values")
    return values


class Settings:
    def __init__(self):
        self.profile = os.environ.get("BENCH_PROFILE", "").strip() or "full"
        if self.profile not in PROFILES:
            raise HarnessError(
                f"BENCH_PROFILE={self.profile!r} is not a profile; known: {', '.join(PROFILES)}"
            )
        defaults = PROFILES[self.profile]
        self.duration = env_number("BENCH_DURATION", defaults["duration"])
        self.ports = [
            int(p) for p in re.findall(r"\d+", os.environ.get("BENCH_PORTS", "8000,8001,8002"))
        ]
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
        # unmeasured GET /api/ping load before the first scenario: a stack just started
        # (`make restart`) answered its first seconds at up to 30 % more CPU per answer
        self.warmup = env_number("BENCH_WARMUP", 3.0)
        only = os.environ.get("BENCH_ONLY", "").strip()
        self.only = (
            [s.strip() for s in only.split(",") if s.strip()] if only else list(defaults["only"])
        )
        skip = [s.strip() for s in os.environ.get("BENCH_SKIP", "").split(",") if s.strip()]
        unknown = (set(self.only) | set(skip)) - set(SCENARIOS)
        if unknown:
            raise HarnessError(
                f"BENCH_ONLY/BENCH_SKIP: unknown scenarios {sorted(unknown)}; known: {SCENARIOS}"
            )
        self.only = [key for key in self.only if key not in skip]
        self.latency_duration = env_number("BENCH_LATENCY_DURATION", defaults["latency_duration"])
        self.latency_loads = env_list("BENCH_LATENCY_LOADS", "0.5,0.8", float)
        self.latency_targets = env_list("BENCH_LATENCY_TARGETS", ",".join(LATENCY_TARGETS), str)
        if set(self.latency_targets) - set(LATENCY_TARGETS):
            raise HarnessError(
                f"BENCH_LATENCY_TARGETS: known targets are {', '.join(LATENCY_TARGETS)}"
            )
        self.latency_connections = env_number("BENCH_LATENCY_CONNECTIONS", 512, int)
        self.threads = min(self.threads, self.connections_asked)
        # wrk gives every thread connections // threads connections.
        self.connections = (self.connections_asked // self.threads) * self.threads
        self.tag = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(8))

    def url(self, path, port=None):
        return f"http://{HOST}:{port or self.ports[0]}{path}"


def products_db_uri():
    """``$PRODUCTS_DB_URI``, else config.yml's (or ``$SHOP_CONFIG``'s) products URI, with
    ``${VAR:default}`` substituted by nameko's own loader (``common.config``)."""
    if os.environ.get("PRODUCTS_DB_URI"):
        return os.environ["PRODUCTS_DB_URI"]
    from common.config import load_config

    return load_config()["DB_URIS"]["products:Base"]
