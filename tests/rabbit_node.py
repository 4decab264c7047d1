"""Private RabbitMQ brokers for tests that break the broker (alarms, killed nodes): nodes
of their own (scripts/rabbit_cluster.py), on free ports, never the default node on 5672,
stopped by pid when the test ends."""

import contextlib

from scripts.rabbit_cluster import private_cluster


@contextlib.contextmanager
def private_rabbit_cluster(base_dir, count=3):
    """A running cluster of ``count`` nodes (``count=1``: a lone node) with the quorum
    vhost ``shop``; ``cluster.amqp_uri`` is the failover list of its nodes."""
    cluster = private_cluster(base_dir, count)
    try:
        yield cluster.up()
    finally:
        cluster.down()
