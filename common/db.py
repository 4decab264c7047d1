"""Database access shared by the services.

:class:`Database` is nameko-sqlalchemy's dependency with production engine defaults, all
overridable in config.yml under ``DB_ENGINE_OPTIONS``:

* no ``pool_pre_ping`` (a ``SELECT 1`` round trip before every worker's first statement;
  dropping it cut the products process's CPU per product read by 15 %, measured with
  `make bench`); instead :func:`ping_when_idle`
  pings only a connection that sat unused in the pool for ``DB_PING_IDLE_SECONDS``, so a
  connection that died with a PostgreSQL restart while idle is replaced, not used;
* ``pool_size`` equal to the container's ``max_workers`` (a worker uses one connection at
  most), so a process never holds more: PostgreSQL's default ``max_connections`` of 100
  fits `make up` and the test suite's stacks at once;
* ``executemany_mode="values_plus_batch"``: a multi-row UPDATE flushed by the ORM (a
  release giving back each line's stock) is one round trip, not one per row;
* a connect bounded by ``connect_timeout`` (5 s) for real (:func:`bound_connect`);
* ``lock_timeout`` / ``statement_timeout`` (``DB_LOCK_TIMEOUT_MS``, ``DB_STATEMENT_TIMEOUT_MS``):
  a worker waiting on a row lock gives up instead of waiting forever;
* ``idle_in_transaction_session_timeout`` (``DB_IDLE_IN_TRANSACTION_TIMEOUT_MS``): a
  transaction left open by a stuck or dead worker is ended by PostgreSQL, which bounds
  how long an order can stay invisible (products' reconciler relies on it).

A service may also have a streaming **read replica** (``DB_READ_URIS``, same keys as
``DB_URIS``; empty: none): :class:`Database` then builds a second engine with the same
options (its own pool of ``max_workers``, ``statement_timeout``, a short
``connect_timeout``, and ``default_transaction_read_only``, so nothing can write there
even if the URI names a primary by mistake), and ``db.read(query, complete)`` routes a
read there with the primary as the fallback (:mod:`common.replica`). ``db.reading()``,
``db.session`` and ``db.get_session()`` always use the primary. The replica's replay lag
is measured in the background every few seconds (:mod:`common.replica_lag`).
"""

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import eventlet
from nameko_sqlalchemy import Database as NamekoDatabase
from nameko_sqlalchemy.database import DB_ENGINE_OPTIONS_KEY, DatabaseWrapper
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from common.errors import Reason, ServiceUnavailable
from common.metrics import watch_pool
from common.replica import ReplicaReads, always
from common.replica_lag import ReplicaLagProbe
from common.settings import settings_of
from common.tracing import provider_for, records_spans, trace_statements

DEFAULT_CONNECT_TIMEOUT = 5
MAX_INT4 = 2**31 - 1
REPLICA_CONNECT_TIMEOUT = 2  # seconds; libpq's minimum (the eventlet bound is shorter)

log = logging.getLogger(__name__)

T = TypeVar("T")


def engine_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Engine keyword arguments for a service container's ``config``."""
    settings = settings_of(config)
    lock_ms = settings.db_lock_timeout_ms
    statement_ms = settings.db_statement_timeout_ms
    idle_ms = settings.db_idle_in_transaction_timeout_ms
    options: dict[str, Any] = {
        "pool_pre_ping": False,
        "pool_size": settings.max_workers,
        "max_overflow": 0,  # a worker holds one connection at most: never more than max_workers
        # The ORM's multi-row UPDATEs (a release's stock increments) in one round trip
        # (psycopg2's execute_batch), not one per row. Their rowcount is then unknown;
        # nothing here reads it (no version counter).
        "executemany_mode": "values_plus_batch",
        "connect_args": {
            "options": (
                f"-c lock_timeout={lock_ms} -c statement_timeout={statement_ms} "
                f"-c idle_in_transaction_session_timeout={idle_ms}"
            ),
            "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        },
    }
    options.update(config.get(DB_ENGINE_OPTIONS_KEY) or {})
    return options


def replica_engine_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The read replica's engine options: the primary's ``options`` with a short
    ``connect_timeout`` and every transaction read-only."""
    connect_args = dict(options.get("connect_args") or {})
    connect_args["connect_timeout"] = REPLICA_CONNECT_TIMEOUT
    connect_args["options"] = (
        f"{connect_args.get('options', '')} -c default_transaction_read_only=on".strip()
    )
    return {**options, "connect_args": connect_args}


def read_replica_uri(config: Mapping[str, Any], key: str, primary_uri: str | None) -> str | None:
    """The read replica's URI for ``key`` (``"products:Base"``) in ``DB_READ_URIS``, or
    None when it is unset, empty or the primary's own URI."""
    uris: Mapping[str, Any] = settings_of(config).db_read_uris or {}
    uri = str(uris.get(key) or "").strip()
    return uri if uri and uri != primary_uri else None


def bound_connect(engine: Engine, seconds: float) -> None:
    """Give up a new connection after ``seconds``, as an ``OperationalError`` (a 503).

    libpq's ``connect_timeout`` is not enforced on psycopg2's green (asynchronous)
    connections: a PostgreSQL host that accepts the TCP connection and then says nothing
    (frozen, black-holed, its backlog full) would hold the worker until TCP gives up,
    minutes later. Here the whole connect runs under an eventlet timer."""

    @event.listens_for(engine, "do_connect")
    def connect_within(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        error = dialect.loaded_dbapi.OperationalError(
            f"no connection to PostgreSQL within {seconds:g}s"
        )
        with eventlet.Timeout(seconds, error):
            return dialect.connect(*cargs, **cparams)


def ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection on checkout only if it was idle ``idle_seconds`` or more.

    A busy pool's connections are reused within milliseconds and skip the round trip; one
    that sat idle (when a PostgreSQL restart would have killed it unnoticed) is pinged, and
    replaced when dead (the pool retries the checkout on ``DisconnectionError``). A
    connection that dies while in use fails that worker (503), and SQLAlchemy then
    invalidates every older connection of the pool."""

    @event.listens_for(engine, "checkin")
    def remember_when(dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at < idle_seconds:
            return  # new, or used moments ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("idle connection is gone") from exc
        if not alive:
            raise DisconnectionError("idle connection is gone")


@contextmanager
def autocommit_connection(engine: Engine) -> Iterator[Connection]:
    """A Core connection from ``engine``'s pool in autocommit: each statement is its own
    transaction, so a read or a one-statement write costs one round trip, not BEGIN +
    statement + COMMIT or ROLLBACK.

    psycopg2's ``autocommit`` is switched on the pooled connection and back, which
    sends nothing. (SQLAlchemy's ``isolation_level="AUTOCOMMIT"`` execution option
    would restore the level with psycopg2's ``set_isolation_level``: one more round
    trip per read, 14 % of the products process under product reads.)"""
    with engine.connect() as connection:
        # psycopg2's connection: ``autocommit`` and ``closed`` are not in the DBAPI protocol
        dbapi_connection: Any = connection.connection.dbapi_connection
        dbapi_connection.autocommit = True
        try:
            yield connection
        finally:
            if not dbapi_connection.closed:  # a dead one is discarded by the pool
                dbapi_connection.autocommit = False


@contextmanager
def autocommit_session(engine: Engine) -> Iterator[Session]:
    """An ORM session on an :func:`autocommit_connection` of ``engine``."""
    with autocommit_connection(engine) as connection, Session(bind=connection) as session:
        yield session


class ShopDatabaseWrapper(DatabaseWrapper):
    """What a worker's ``self.db`` is: nameko-sqlalchemy's wrapper (``session``,
    ``get_session()``) plus :meth:`reading` (the primary) and :meth:`read` (the read
    replica when there is one)."""

    def __init__(
        self, session_factory: Any, engine: Engine, reads: ReplicaReads | None = None
    ) -> None:
        super().__init__(session_factory)
        self.engine = engine
        self.reads = reads

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for read-only work on the primary, on an autocommit connection
        (:func:`autocommit_session`). Not for anything that writes or needs one
        snapshot across statements. PostgreSQL unreachable or busy, inside the block
        too, raises ServiceUnavailable (:func:`database_errors_as_unavailable`)."""
        with database_errors_as_unavailable(), autocommit_session(self.engine) as session:
            yield session

    @contextmanager
    def single_statements(self) -> Iterator[Connection]:
        """A Core connection of the primary in autocommit (:func:`autocommit_connection`)
        for work that is one statement each (a read, or a server-side function that locks,
        decides and writes: :mod:`products.stock`): every statement is its own transaction, one
        round trip, and no lock outlives it. No ORM session around it: it cost 53-82 us of
        CPU per call (docs/BENCHMARKS.md, issue 24). Errors as :meth:`reading`; an
        IntegrityError passes."""
        with database_errors_as_unavailable(), autocommit_connection(self.engine) as connection:
            yield connection

    def read(self, query: Callable[[Session], T], complete: Callable[[T], bool] = always) -> T:
        """``query(session)``'s result, for a read that may be stale by the read
        replica's lag: on the replica when one is configured and answering, falling
        back to the primary (:meth:`reading`) when ``complete(result)`` is false or the
        replica fails (:class:`common.replica.ReplicaReads`); on the primary otherwise.
        ``query`` only reads and returns plain data. Raises ServiceUnavailable when the
        primary is needed and unavailable. Never for a read a write or a stock decision
        depends on: use :meth:`reading` or a transaction on the primary."""
        if self.reads is None:  # a wrapper made outside a Database dependency
            with self.reading() as session:
                return query(session)
        return self.reads.read(query, self.reading, complete)


class Database(NamekoDatabase):
    """nameko-sqlalchemy ``Database`` whose engine is built with :func:`engine_options`,
    pings idle connections (:func:`ping_when_idle`), reports its pool and errors as
    metrics (:func:`common.metrics.watch_pool`), traces its statements when spans are
    exported (:mod:`common.tracing`) and gives workers a :class:`ShopDatabaseWrapper`.

    With a read replica in ``DB_READ_URIS`` (module docstring), a second engine with the
    same options is built for it, bounded by ``DB_REPLICA_TIMEOUT_MS`` and resting
    ``DB_REPLICA_RETRY_SECONDS`` after a failure; ``self.reads`` routes (and counts)
    ``db.read()``s either way (:class:`common.replica.ReplicaReads`)."""

    reads: ReplicaReads | None = None
    lag_probe: ReplicaLagProbe | None = None  # with a replica: shop_db_replica_lag_seconds
    engine_options: dict  # set by nameko-sqlalchemy (untyped), extended in setup()

    def setup(self) -> None:
        config = self.container.config
        self.engine_options = {**engine_options(config), **self.engine_options}
        super().setup()
        settings = settings_of(config)
        idle = settings.db_ping_idle_seconds
        ping_when_idle(self.engine, idle)
        connect_args = self.engine_options.get("connect_args", {})
        bound_connect(
            self.engine, float(connect_args.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
        )
        service = self.container.service_name
        watch_pool(service, self.engine)
        provider = provider_for(config, service)
        if records_spans(provider):  # each statement a child span of the worker's
            trace_statements(self.engine, provider, service)
        key = f"{service}:{self.declarative_base.__name__}"
        replica_uri = read_replica_uri(config, key, self.db_uri)
        engine = None
        if replica_uri:
            engine = create_engine(replica_uri, **replica_engine_options(self.engine_options))
            ping_when_idle(engine, idle)
            if records_spans(provider):
                trace_statements(engine, provider, service)
            self.lag_probe = ReplicaLagProbe(
                engine,
                service,
                autocommit_session,
                timeout=settings.db_replica_timeout_ms / 1000,
            )
        self.reads = ReplicaReads(
            engine,
            service,
            autocommit_session,
            timeout=settings.db_replica_timeout_ms / 1000,
            retry_seconds=settings.db_replica_retry_seconds,
        )

    def start(self) -> None:
        super().start()
        if self.lag_probe is not None:  # killed with the container's managed threads
            self.container.spawn_managed_thread(self.lag_probe.run)

    def stop(self) -> None:
        self._dispose_reads()
        super().stop()

    def kill(self) -> None:
        self._dispose_reads()
        super().kill()

    def _dispose_reads(self):
        if self.lag_probe is not None:
            self.lag_probe.stop()
        if self.reads is not None:
            self.reads.dispose()
            self.reads = None

    def get_dependency(self, worker_ctx: Any) -> ShopDatabaseWrapper:
        db = ShopDatabaseWrapper(self.Session, self.engine, self.reads)
        self.dbs[worker_ctx] = db
        return db

    def worker_teardown(self, worker_ctx: Any) -> None:
        """Close the worker's session. Closing rolls back what the worker left open; if
        PostgreSQL already ended that connection (e.g. ``idle_in_transaction_session_timeout``
        while the worker's reply waited on a blocked broker), there is nothing to roll
        back: the connection is discarded and a warning logged. An exception here would
        make Nameko kill the whole container."""
        try:
            super().worker_teardown(worker_ctx)
        except SQLAlchemyError as exc:
            log.warning(
                "discarded a worker's database session that PostgreSQL had closed: %s",
                " ".join(str(getattr(exc, "orig", exc)).split())[:200],
            )


def is_valid_id(value: object) -> bool:
    """True if ``value`` can be a primary key of an ``integer`` column."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INT4


@contextmanager
def database_errors_as_unavailable() -> Iterator[None]:
    """Turn PostgreSQL being unreachable or busy (``OperationalError``: connection lost,
    ``lock_timeout``, ``statement_timeout``) into a retryable 503. The transaction it
    interrupted is rolled back by the session, so nothing was written."""
    try:
        yield
    except OperationalError as exc:
        code = getattr(exc.orig, "pgcode", None)
        raise ServiceUnavailable(
            "the database is unavailable or busy; retry later",
            {"reason": Reason.DATABASE, "pgcode": code},
        ) from None


def check_database(db: ShopDatabaseWrapper) -> str:
    """``"ok"`` if the database answers ``SELECT 1`` (on an autocommit connection: no
    transaction outlives the check); raises ServiceUnavailable."""
    with db.reading() as session:
        session.execute(text("SELECT 1"))
    return "ok"
