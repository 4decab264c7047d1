"""common.rotation against real RabbitMQ and PostgreSQL: a process out of rotation stops
consuming its RPC queue and consumes again once back; the watch sees a database that
does not answer. (A real partition of one process: tests/faults/test_partitions.py.)"""

import time

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from common.rotation import Rotation
from common.rpc import rpc


class RotatedService:
    name = "rotated"

    @rpc
    def echo(self, value):
        return value


def consumers_of(rabbit_manager, rabbit_config, queue, expected, within=15):
    """Poll the management API (refreshed every few seconds) until ``queue`` has
    ``expected`` consumers."""
    vhost = rabbit_config["AMQP_URI"].rsplit("/", 1)[1]
    deadline = time.monotonic() + within
    while (count := rabbit_manager.get_queue(vhost, queue).get("consumers")) != expected:
        assert time.monotonic() < deadline, f"{queue}: {count} consumers, not {expected}"
        time.sleep(0.3)


def test_out_of_rotation_stops_consuming_and_resumes_once_back(
    container_factory, rabbit_config, rabbit_manager
):
    container = container_factory(RotatedService, rabbit_config)
    container.start()
    rotation = next(ext for ext in container.extensions if isinstance(ext, Rotation))
    with ClusterRpcProxy(rabbit_config, timeout=20) as cluster:
        assert cluster.rotated.echo(1) == 1
        rotation.serving = False  # what the watch does when the database stops answering
        consumers_of(rabbit_manager, rabbit_config, "rpc-rotated", 0)
        waiting = cluster.rotated.echo.call_async(2)
        time.sleep(1)
        rotation.serving = True
        consumers_of(rabbit_manager, rabbit_config, "rpc-rotated", 1)
        assert waiting.result() == 2  # taken once the process is back in rotation


@pytest.fixture
def watch(container_factory, rabbit_config):
    """A Rotation as a container builds it (probe only: no watch thread)."""
    container = container_factory(RotatedService, rabbit_config)
    rotation = next(ext for ext in container.extensions if isinstance(ext, Rotation))
    yield rotation
    rotation.stop()


def test_the_probe_sees_a_database_that_answers_and_one_that_does_not(watch, databases):
    watch._engine = create_engine(databases["products"], poolclass=NullPool)
    assert watch.probe()
    # a server that accepts the connection and then says nothing (frozen, partitioned)
    silent = eventlet.listen(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    watch._drop_connection()
    watch._engine = create_engine(
        f"postgresql+psycopg2://nobody@127.0.0.1:{port}/none", poolclass=NullPool
    )
    started = time.monotonic()
    assert not watch.probe()
    assert time.monotonic() - started < 2.5
    silent.close()
