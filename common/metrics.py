"""Prometheus metrics of every shop process (``prometheus_client``).

Each process keeps its own numbers in ``prometheus_client``'s default registry and serves
them as ``GET /metrics`` in the Prometheus text format: a gateway on its own port
(:mod:`gateway.service`), a service process on its operations listener
(:mod:`common.ops_http`, ``OPS_HTTP_ADDRESS``). Prometheus tells the processes apart by
their ``instance``; a restarted process starts its own counters from zero, which
``rate()`` and ``increase()`` handle.

Why ``prometheus_client`` and not nameko-prometheus: nameko-prometheus 1.6.0 records an
entrypoint's latency but not its outcome by error code, serves ``/metrics`` through a
nameko ``@http`` route (a worker: a busy pool delays the scrape, and every service process
would need a web server of its own), and knows nothing of RPC calls made, the database
pool or the shop's own events. What it would save is the one dependency below.

The metrics (``service`` is the nameko service name; ``outcome`` is ``ok``, the error
code of a :class:`common.errors.ShopError` such as ``insufficient_stock`` or
``timeout``, or ``internal_error`` for a crash: the same word the worker's log
line carries):

* ``shop_entrypoint_calls_total{service,entrypoint,kind,outcome}`` and
  ``shop_entrypoint_duration_seconds{service,entrypoint,kind}``: every worker; ``kind`` is
  ``rpc``, ``http``, ``event`` or ``timer``;
* ``shop_workers_in_flight{service}`` against ``shop_workers_max{service}``;
* ``shop_rpc_client_calls_total{service,target,method,outcome}`` and
  ``shop_rpc_client_duration_seconds{service,target,method}``: every RPC a process makes
  (``outcome`` ``service_unavailable`` is a 503, ``timeout`` a 504);
* ``shop_rpc_expired_total{service,method}``: requests a service dropped before any work
  because their deadline had passed (:mod:`common.deadline`);
* ``shop_in_rotation{service}``: 1 while a service process consumes its RPC queue, 0
  while it is out of rotation because its database does not answer (:mod:`common.rotation`);
* ``shop_admission_in_flight{lane}`` and ``shop_admission_shed_total{lane}``: a gateway's
  requests in flight and shed, ``lane`` ``reads`` or ``writes`` (:mod:`gateway.admission`);
* ``shop_http_responses_total{route,status}``: every answer of a gateway, including those
  no worker made (404 routing, 401, 413, 499...);
* ``shop_db_pool_connections{service,state}`` (``checked_out``, ``size``) and
  ``shop_db_errors_total{service,reason}`` (``lock_timeout``, ``statement_timeout``,
  ``idle_in_transaction_timeout``, ``connection``: PostgreSQL unreachable, restarting or
  refusing connections; a constraint violation is an answer, not counted);
* ``shop_db_reads_total{service,source}``: reads a read replica may serve (products'
  ``get_product``, ``list_products``) by where they were answered: ``replica``,
  ``primary`` (no replica configured, or it rests after a failure), ``fallback_miss``
  (the replica lacked the row or the page's end: replica lag) or ``fallback_error`` (it
  failed or timed out), and ``shop_db_replica_up{service}`` (1: reads go to the replica,
  0: it rests after a failure; only with a replica configured; :mod:`common.replica`),
  and ``shop_db_replica_lag_seconds{service}``: how far the replica's replay is behind
  the WAL it received (0: caught up; NaN: it could not be asked), measured every few
  seconds (:mod:`common.replica_lag`);
* ``shop_broker_blocked{service}``: 1 while RabbitMQ blocks this process's publishers
  (a memory or disk alarm; :class:`common.broker.BrokerWatch`), else 0;
* ``shop_reconciler_oldest_hold_age_seconds{service}``: a products process's view of the oldest
  hold still ``reserved`` (0: none), as of its reconciler's last tick and ageing since
  (:mod:`products.reconcile`): a stopped reconciler shows as an ever older hold;
* the shop: ``shop_orders_total{status,reason}`` (final status reached: ``confirmed``,
  ``rejected`` with the error code as ``reason``, ``failed``, ``cancelled``),
  ``shop_stock_units_reserved_total``, ``shop_stock_units_released_total{cause}``
  (``release``: an order cancelled or compensated; ``reconciler``),
  ``shop_idempotent_replays_total{service}``, ``shop_orders_recovered_total{status}``,
  ``shop_reconciler_holds_released_total``, ``shop_customers_created_total``.

Each shop counter counts a committed change once: a replayed or redelivered call that
changes nothing counts as a replay, not again.
"""

import functools
import time
from typing import Any, TypeVar, cast

from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from nameko.timer import Timer
from nameko.web.handlers import HttpRequestHandler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy import Engine, QueuePool, event
from sqlalchemy.orm import Session

from common.errors import ExcInfo, outcome_of

M = TypeVar("M", bound=MetricWrapperBase)

disable_created_metrics()  # no *_created series: half the scrape, nothing a query here uses

# From a cached product read (a few ms) to an order waiting out its 20 s bound.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)

ENTRYPOINT_CALLS = Counter(
    "shop_entrypoint_calls",
    "Workers run, by entrypoint and outcome.",
    ["service", "entrypoint", "kind", "outcome"],
)
ENTRYPOINT_DURATION = Histogram(
    "shop_entrypoint_duration_seconds",
    "Time a worker took, from setup to result.",
    ["service", "entrypoint", "kind"],
    buckets=LATENCY_BUCKETS,
)
WORKERS_IN_FLIGHT = Gauge("shop_workers_in_flight", "Workers running now.", ["service"])
WORKERS_MAX = Gauge("shop_workers_max", "The container's max_workers.", ["service"])

RPC_CLIENT_CALLS = Counter(
    "shop_rpc_client_calls",
    "RPCs made by this process, by target and outcome.",
    ["service", "target", "method", "outcome"],
)
RPC_CLIENT_DURATION = Histogram(
    "shop_rpc_client_duration_seconds",
    "Time an RPC made by this process took, bounded.",
    ["service", "target", "method"],
    buckets=LATENCY_BUCKETS,
)
RPC_EXPIRED = Counter(
    "shop_rpc_expired",
    "RPC requests dropped unstarted: their deadline had passed (common/deadline.py).",
    ["service", "method"],
)
IN_ROTATION = Gauge(
    "shop_in_rotation",
    "1 while this process takes requests, 0 while its database does not answer.",
    ["service"],
)
ADMISSION_IN_FLIGHT = Gauge(
    "shop_admission_in_flight", "Requests a gateway is working on, by lane.", ["lane"]
)
ADMISSION_SHED = Counter(
    "shop_admission_shed", "Requests a gateway shed (503 overloaded), by lane.", ["lane"]
)
HTTP_RESPONSES = Counter(
    "shop_http_responses",
    "Answers of a gateway, by route and status.",
    ["route", "status"],
)

DB_POOL_CONNECTIONS = Gauge(
    "shop_db_pool_connections",
    "Database pool connections (checked_out, size).",
    ["service", "state"],
)
DB_ERRORS = Counter(
    "shop_db_errors",
    "Database errors seen by the driver, by reason.",
    ["service", "reason"],
)
DB_READS = Counter(
    "shop_db_reads",
    "Reads a read replica may serve, by where they were answered.",
    ["service", "source"],
)
DB_REPLICA_UP = Gauge(
    "shop_db_replica_up",
    "1 while reads go to the read replica, 0 while it rests after a failure.",
    ["service"],
)
DB_REPLICA_LAG = Gauge(
    "shop_db_replica_lag_seconds",
    "Seconds the read replica's replay is behind (0: caught up; NaN: not measured).",
    ["service"],
)
BROKER_BLOCKED = Gauge(
    "shop_broker_blocked",
    "1 while RabbitMQ blocks this process's publishers (a memory or disk alarm).",
    ["service"],
)
OLDEST_HOLD_AGE = Gauge(
    "shop_reconciler_oldest_hold_age_seconds",
    "Age of the oldest stock hold still reserved, as of the reconciler's last tick (0: none).",
    ["service"],
)

ORDERS = Counter("shop_orders", "Orders that reached a final status.", ["status", "reason"])
STOCK_UNITS_RESERVED = Counter("shop_stock_units_reserved", "Units of stock reserved.")
STOCK_UNITS_RELEASED = Counter(
    "shop_stock_units_released",
    "Units of stock given back, by cause.",
    ["cause"],
)
IDEMPOTENT_REPLAYS = Counter(
    "shop_idempotent_replays",
    "Calls answered with a stored outcome (same key).",
    ["service"],
)
ORDERS_RECOVERED = Counter(
    "shop_orders_recovered",
    "Orders settled by recovery (pending ones resolved, cancelling ones cancelled), by final status.",
    ["status"],
)
HOLDS_RELEASED = Counter(
    "shop_reconciler_holds_released",
    "Stock holds given back by the reconciler.",
)
CUSTOMERS_CREATED = Counter("shop_customers_created", "Customers created.")

# PostgreSQL SQLSTATEs of the errors an operator watches for.
PGCODE_REASONS = {
    "55P03": "lock_timeout",
    "57014": "statement_timeout",  # also a cancelled query
    "25P03": "idle_in_transaction_timeout",
}


def entrypoint_kind(entrypoint: Any) -> str:
    """``rpc``, ``http``, ``event``, ``timer`` or ``other``."""
    for cls, kind in (
        (Rpc, "rpc"),
        (HttpRequestHandler, "http"),
        (EventHandler, "event"),
        (Timer, "timer"),
    ):
        if isinstance(entrypoint, cls):
            return kind
    return "other"


def db_error_reason(exc: BaseException) -> str | None:
    """The ``reason`` label of a database error, or None for an error that is an answer,
    not a failure (a unique violation is how an idempotent replay finds its first
    outcome; a check violation is a refused write)."""
    original = getattr(exc, "orig", None) or exc
    reason = PGCODE_REASONS.get(getattr(original, "pgcode", None) or "")
    if reason:
        return reason
    if getattr(exc, "connection_invalidated", False) or type(original).__name__ in (
        "OperationalError",
        "InterfaceError",
    ):
        return "connection"
    return None


def exposition() -> tuple[bytes, str]:
    """``(body, content_type)`` of this process's metrics in the text format."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class Metrics(DependencyProvider):
    """Counts and times every worker of the service (see the module docstring). Declared
    once per service class; it gives workers nothing."""

    def setup(self) -> None:
        service = self.container.service_name
        WORKERS_MAX.labels(service).set(self.container.max_workers)
        self.in_flight = WORKERS_IN_FLIGHT.labels(service)
        self.started: dict[Any, float] = {}  # worker_ctx -> monotonic start

    def worker_setup(self, worker_ctx: Any) -> None:
        self.in_flight.inc()
        self.started[worker_ctx] = time.monotonic()

    def worker_result(
        self, worker_ctx: Any, result: Any = None, exc_info: ExcInfo | None = None
    ) -> None:
        started = self.started.pop(worker_ctx, None)
        entrypoint = worker_ctx.entrypoint
        labels = (worker_ctx.service_name, entrypoint.method_name, entrypoint_kind(entrypoint))
        child(ENTRYPOINT_CALLS, *labels, outcome_of(exc_info[1] if exc_info else None)).inc()
        if started is not None:
            child(ENTRYPOINT_DURATION, *labels).observe(time.monotonic() - started)

    def worker_teardown(self, worker_ctx: Any) -> None:
        self.started.pop(worker_ctx, None)
        self.in_flight.dec()


@functools.lru_cache(maxsize=4096)
def child(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, looked up once (``labels()`` takes a lock and builds
    a key on every call; a label set here is a handful of names, never a value)."""
    return metric.labels(*labels)


def observe_rpc_call(
    service: str, target: str, method: str, seconds: float, exc: BaseException | None = None
) -> None:
    """Count one RPC made by ``service`` to ``target.method``."""
    child(RPC_CLIENT_CALLS, service, target, method, outcome_of(exc)).inc()
    child(RPC_CLIENT_DURATION, service, target, method).observe(seconds)


def watch_pool(service: str, engine: Engine) -> None:
    """``shop_db_pool_connections`` of ``engine``'s pool (read at scrape time) and
    ``shop_db_errors_total`` for every error its connections raise."""
    pool = cast(QueuePool, engine.pool)  # engine_options() sets pool_size: a QueuePool
    DB_POOL_CONNECTIONS.labels(service, "checked_out").set_function(pool.checkedout)
    DB_POOL_CONNECTIONS.labels(service, "size").set_function(pool.size)

    @event.listens_for(engine, "handle_error")
    def count_error(context: Any) -> None:
        reason = db_error_reason(context.original_exception)
        if reason is not None:
            DB_ERRORS.labels(service, reason).inc()


PENDING_COUNTS_KEY = "shop.metrics.pending"  # in Session.info: increments awaiting a commit


def count_on_commit(session: Session, counter: Any, amount: float = 1) -> None:
    """Add ``amount`` to ``counter`` when ``session``'s transaction commits; nothing if it
    rolls back. A change is counted once, when it is durable."""
    if amount:
        session.info.setdefault(PENDING_COUNTS_KEY, []).append((counter, amount))


@event.listens_for(Session, "after_commit")
def _count_committed(session):
    for counter, amount in session.info.pop(PENDING_COUNTS_KEY, ()):
        counter.inc(amount)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session):
    session.info.pop(PENDING_COUNTS_KEY, None)
