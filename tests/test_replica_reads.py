"""Reads routed to a read replica (common/replica.py, common/db.py): the breaker and the
routing rules on fakes, then the products service in a real container whose "replica"
refuses connections or never answers (the primary is the real test database). The same
service against a real streaming replica is in tests/faults/test_replica.py."""

import contextlib
import socket
import time

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text
from sqlalchemy.exc import InternalError, OperationalError

from common.db import engine_options, read_replica_uri, replica_engine_options
from common.errors import ProductNotFound
from common.replica import Breaker, ReplicaReads
from products.service import ProductsService
from tests.harness import free_port


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def reads(service, source):
    return (
        REGISTRY.get_sample_value("shop_db_reads_total", {"service": service, "source": source})
        or 0.0
    )


def replica_up(service):
    return REGISTRY.get_sample_value("shop_db_replica_up", {"service": service})


# -- the breaker ---------------------------------------------------------------------


def test_the_breaker_rests_after_a_failure_then_lets_one_probe_through():
    clock = Clock()
    breaker = Breaker(rest=5, clock=clock)
    assert breaker.allow() and breaker.allow()
    assert breaker.failed() is True  # it opened
    assert breaker.failed() is False  # already open
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # the others wait for its outcome
    assert breaker.succeeded(started_at=clock.now) is True
    assert breaker.closed and breaker.allow()


def test_a_failed_probe_rests_the_replica_again():
    clock = Clock()
    breaker = Breaker(rest=5, clock=clock)
    breaker.failed()
    clock.now += 5
    assert breaker.allow()
    breaker.failed()
    clock.now += 4
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_a_read_begun_before_the_failure_does_not_close_the_breaker():
    clock = Clock()
    breaker = Breaker(rest=5, clock=clock)
    started = clock.now
    clock.now += 0.1
    breaker.failed()
    assert breaker.succeeded(started_at=started) is False
    assert not breaker.closed


# -- the routing, on fake sessions ------------------------------------------------------


@contextlib.contextmanager
def primary():
    yield "primary"


def fake_replica(behaviour):
    """``open_session`` for ReplicaReads: yields ``"replica"``, or fails, or hangs."""

    @contextlib.contextmanager
    def open_session(engine):
        if behaviour == "refuses":
            raise OperationalError("connect", {}, Exception("connection refused"))
        if behaviour == "hangs":
            eventlet.sleep(30)
        yield "replica"

    return open_session


class FakeEngine:
    def dispose(self):
        pass


def router(service, behaviour, clock=time.monotonic, timeout=0.2):
    return ReplicaReads(
        FakeEngine(),
        service,
        fake_replica(behaviour),
        timeout=timeout,
        retry_seconds=5,
        clock=clock,
    )


def where(session):
    return session


def test_a_read_the_replica_answers_completely_stays_there():
    replica = router("unit-hit", "answers")
    assert replica.read(where, primary) == "replica"
    assert replica.read(where, primary, complete=lambda result: False) == "primary"
    assert reads("unit-hit", "replica") == 1
    assert reads("unit-hit", "fallback_miss") == 1
    assert replica_up("unit-hit") == 1


def test_a_replica_that_refuses_is_rested_and_retried():
    clock = Clock()
    replica = router("unit-refuses", "refuses", clock)
    assert replica.read(where, primary) == "primary"
    assert replica_up("unit-refuses") == 0
    assert replica.read(where, primary) == "primary"  # resting: not tried
    assert (reads("unit-refuses", "fallback_error"), reads("unit-refuses", "primary")) == (1, 1)
    replica.open_session = fake_replica("answers")
    clock.now += 5
    assert replica.read(where, primary) == "replica"  # the probe succeeded
    assert replica_up("unit-refuses") == 1
    assert replica.read(where, primary) == "replica"


def test_a_silent_replica_costs_one_bounded_read_then_nothing():
    replica = router("unit-silent", "hangs", timeout=0.2)
    started = time.monotonic()
    assert replica.read(where, primary) == "primary"
    assert 0.2 <= time.monotonic() - started < 1
    started = time.monotonic()
    assert replica.read(where, primary) == "primary"
    assert time.monotonic() - started < 0.05


def test_an_error_of_the_query_itself_is_raised_by_the_primary():
    """A bug is not hidden by the fallback: the primary runs the same query."""
    replica = router("unit-bug", "answers")

    def broken(session):
        if session == "replica":
            raise OperationalError("select", {}, Exception("replica: column missing"))
        raise KeyError("the same bug on the primary")

    with pytest.raises(KeyError):
        replica.read(broken, primary)


# -- configuration -----------------------------------------------------------------


def test_no_replica_when_unset_empty_or_the_primary_itself():
    primary_uri = "postgresql+psycopg2://postgres@127.0.0.1:5432/shop_products"
    key = "products:Base"
    assert read_replica_uri({}, key, primary_uri) is None
    assert read_replica_uri({"DB_READ_URIS": {key: ""}}, key, primary_uri) is None
    assert read_replica_uri({"DB_READ_URIS": {key: primary_uri}}, key, primary_uri) is None
    other = primary_uri.replace("5432", "5441")
    assert read_replica_uri({"DB_READ_URIS": {key: other}}, key, primary_uri) == other


def test_the_replica_engine_cannot_write_even_on_a_writable_server(databases):
    """Pointed at a primary by mistake, the read engine still writes nothing."""
    options = replica_engine_options(engine_options({"max_workers": 2}))
    assert options["connect_args"]["connect_timeout"] == 2
    engine = create_engine(databases["products"], **options)
    try:
        with (
            pytest.raises(InternalError, match="read-only transaction"),
            engine.begin() as connection,
        ):
            connection.execute(text("CREATE TEMP TABLE nope (x int)"))
    finally:
        engine.dispose()


# -- the products service with a replica that is down ------------------------------------


@contextlib.contextmanager
def silent_server():
    """A TCP port that accepts connections and never says a word (a hung host)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def replica_config(service_config, port):
    return {
        **service_config,
        "DB_READ_URIS": {"products:Base": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x"},
        "DB_REPLICA_TIMEOUT_MS": 300,
        "DB_REPLICA_RETRY_SECONDS": 1,
        "HOLD_CHECK_INTERVAL": 0,
    }


@pytest.mark.parametrize("replica", ["refused", "silent"])
def test_products_reads_fall_back_to_the_primary_within_the_bound(
    container_factory, service_config, replica
):
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(silent_server()) if replica == "silent" else free_port()
        config = replica_config(service_config, port)
        container_factory(ProductsService, config).start()
        before = {source: reads("products", source) for source in ("fallback_error", "primary")}
        with ClusterRpcProxy(config, timeout=10) as rpc:
            product = rpc.products.create_product({"name": "p", "price": "1", "stock": 3})
            started = time.monotonic()
            assert rpc.products.get_product(product["id"]) == product
            first = time.monotonic() - started
            started = time.monotonic()
            assert rpc.products.list_products()["items"] == [product]
            with pytest.raises(ProductNotFound):
                rpc.products.get_product(product["id"] + 1)
            resting = time.monotonic() - started
        assert first < 0.3 + 0.7  # the bound, plus an RPC
        assert resting < 0.5  # the replica rests: no read paid the bound again
        assert reads("products", "fallback_error") - before["fallback_error"] == 1
        assert reads("products", "primary") - before["primary"] == 2
        assert replica_up("products") == 0
