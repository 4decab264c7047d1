"""common.db against the real PostgreSQL: what replaced pool_pre_ping, and reads and
single statements on an autocommit connection."""

import socket
import time

import pytest
from nameko.rpc import rpc
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from common.db import Database, ShopDatabaseWrapper, check_database, ping_when_idle
from common.errors import ServiceUnavailable
from products.models import Base as ProductsBase

BACKEND_PID = text("SELECT pg_backend_pid()")


@pytest.fixture
def engine(databases):
    engine = create_engine(databases["products"], pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def pooled_connection_killed(engine, db_engines):
    """Use the pool's one connection, give it back, then end its backend from elsewhere
    (what a PostgreSQL restart does to every idle connection). Returns its backend pid."""
    with engine.connect() as connection:
        pid = connection.scalar(BACKEND_PID)
    with db_engines["products"].connect() as other:
        assert other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return pid


def test_an_idle_connection_that_died_is_replaced_before_use(engine, db_engines):
    ping_when_idle(engine, idle_seconds=0.2)
    dead_pid = pooled_connection_killed(engine, db_engines)
    time.sleep(0.3)
    with engine.connect() as connection:
        assert connection.scalar(BACKEND_PID) != dead_pid


def test_a_connection_used_moments_ago_is_not_pinged(engine, db_engines):
    """The round trip saved on a busy pool: a dead connection reused within the idle
    window reaches the worker, which answers 503 (database_errors_as_unavailable)."""
    ping_when_idle(engine, idle_seconds=60)
    pooled_connection_killed(engine, db_engines)
    with pytest.raises(OperationalError), engine.connect() as connection:
        connection.scalar(BACKEND_PID)
    with engine.connect() as connection:  # the pool replaced it after the failure
        assert connection.scalar(text("SELECT 1")) == 1


@pytest.mark.parametrize("opened", ["reading", "single_statements"])
def test_each_statement_runs_alone_and_the_connection_goes_back_transactional(engine, opened):
    """``reading()`` (an ORM session) and ``single_statements()`` (a Core connection)."""
    wrapper = ShopDatabaseWrapper(sessionmaker(bind=engine), engine)
    with getattr(wrapper, opened)() as session:  # autocommit: each statement its own transaction
        first, second = (session.scalar(text("SELECT now()")) for _ in "12")
    assert first != second
    with engine.connect() as connection:  # the pool's one connection, transactional again
        assert connection.scalar(text("SELECT now()")) == connection.scalar(text("SELECT now()"))
        connection.execute(text("CREATE TEMP TABLE t (x int)"))
        connection.rollback()
        assert connection.scalar(text("SELECT to_regclass('pg_temp.t')")) is None


@pytest.mark.parametrize("opened", ["reading", "single_statements"])
def test_a_503_when_the_connection_is_gone(engine, db_engines, opened):
    ping_when_idle(engine, idle_seconds=60)
    pooled_connection_killed(engine, db_engines)
    wrapper = ShopDatabaseWrapper(sessionmaker(bind=engine), engine)
    with pytest.raises(ServiceUnavailable), getattr(wrapper, opened)() as session:
        session.scalar(BACKEND_PID)
    with getattr(wrapper, opened)() as session:  # the pool replaced it
        assert session.scalar(text("SELECT 1")) == 1


class LeavesATransactionOpen:
    """A worker that leaves its session's transaction open, then finds its connection ended
    by PostgreSQL (as ``idle_in_transaction_session_timeout`` does while the worker's reply
    waits on a blocked broker) before Nameko tears the worker down."""

    name = "teardown"
    db = Database(ProductsBase)
    terminator = None  # an engine on the same database, set by the test

    @rpc
    def open_then_lose_the_connection(self):
        pid = self.db.session.scalar(BACKEND_PID)
        with self.terminator.connect() as other:
            other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return pid


def test_a_worker_session_that_postgresql_closed_does_not_kill_the_container(
    container_factory, rabbit_config, databases, db_engines
):
    LeavesATransactionOpen.terminator = db_engines["products"]
    config = {**rabbit_config, "DB_URIS": {"teardown:Base": databases["products"]}}
    container = container_factory(LeavesATransactionOpen, config)
    container.start()
    with ClusterRpcProxy(config, timeout=10) as cluster:
        first = cluster.teardown.open_then_lose_the_connection()
        second = cluster.teardown.open_then_lose_the_connection()  # the container lives on
    assert first != second
    assert not container._died.ready()


class ReadsProducts:
    name = "silent_db"
    db = Database(ProductsBase)

    @rpc
    def check(self):
        return check_database(self.db)


def test_a_database_that_accepts_and_then_says_nothing_is_a_503_within_the_connect_bound(
    container_factory, rabbit_config
):
    """A socket that listens but never answers (a frozen or black-holed PostgreSQL):
    libpq's connect_timeout is not enforced on green connections, ours is."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshake; nothing ever reads or writes
    port = silent.getsockname()[1]
    config = {
        **rabbit_config,
        "DB_URIS": {"silent_db:Base": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x"},
        "DB_ENGINE_OPTIONS": {"connect_args": {"connect_timeout": 1}},
    }
    container_factory(ReadsProducts, config).start()
    try:
        with ClusterRpcProxy(config, timeout=20) as cluster:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as raised:
                cluster.silent_db.check()
            assert time.monotonic() - started < 1 + 1
        assert raised.value.details["reason"] == "database"
    finally:
        silent.close()
