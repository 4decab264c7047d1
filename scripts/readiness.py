"""Waiting until a stack answers: the one implementation `make up` (scripts/manage.py
wait), the tests' stacks (tests/harness.py) and the bench's stacks (bench/reconciler.py)
use.

A stack is ready when every gateway given answers ``GET /health`` with 200 and every
service given answers an RPC ``ping()`` (which needs its queue consumed, so its container
is running).
"""

import time
import urllib.request

from nameko.standalone.rpc import ClusterRpcProxy

from common.registry import SERVICES


def ping(broker, service, timeout=2):
    """Whether ``service`` answers ``ping()`` within ``timeout`` seconds. ``broker``: an
    AMQP URI, or a nameko config (its ``AMQP_URI`` and, if any, TLS settings)."""
    config = {"AMQP_URI": broker} if isinstance(broker, str) else broker
    try:
        with ClusterRpcProxy(config, timeout=timeout) as cluster:
            return getattr(cluster, service).ping() == "pong"
    except Exception:  # noqa: BLE001 - not answering, whatever the reason
        return False


def answers(url, timeout=2):
    """Whether ``url`` answers 200 within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def gateway_answers(url, timeout=2):
    """Whether the gateway at ``url`` (``http://host:port``) answers ``/health``."""
    return answers(f"{url}/health", timeout)


def wait_answering(url, timeout=60.0, interval=0.3):
    """True once ``url`` answers 200 (one process's own probe: a gateway's ``/health``,
    a service's ``/ready``; an RPC ping could reach any process of the service), False
    if it has not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not answers(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_until_ready(broker, services=SERVICES, gateway_urls=(), timeout=60.0, interval=0.3):
    """Wait until every gateway and service answers, at most ``timeout`` seconds; returns
    what still did not answer then (sorted; empty when all did). ``broker`` as for
    :func:`ping`."""
    deadline = time.monotonic() + timeout
    pending_urls, pending_services = set(gateway_urls), set(services)
    while True:
        pending_urls = {url for url in pending_urls if not gateway_answers(url)}
        pending_services = {name for name in pending_services if not ping(broker, name)}
        if not (pending_urls or pending_services) or time.monotonic() > deadline:
            return sorted(pending_urls) + sorted(pending_services)
        time.sleep(interval)
