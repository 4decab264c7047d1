"""A starting gateway opens its listener only once it can receive RPC replies.

nameko starts a container's extensions all at once: without the wait, the listener was
open while the reply queue was still being declared, and a request taken then lost its
reply (a 504 at its bound). A new gateway beside an old one on the same port (a rolling
upgrade, tests/faults/test_rolling_upgrade.py), or one restarted under traffic, takes
requests from its first millisecond.
"""

import socket
from urllib.parse import urlsplit, urlunsplit

import eventlet
import pytest
import requests
from eventlet.event import Event

from gateway.service import GatewayService
from tests.harness import free_port

GATE_SECONDS = 1.0  # the broker connection held back this long: far below REPLY_QUEUE_WAIT


def gated_proxy(upstream, gate):
    """A TCP proxy to ``upstream`` (host, port) that connects nothing before ``gate`` is
    sent; returns ``(its address, stop)``. ``stop`` kills every green thread of the proxy
    and closes every socket it opened: none may outlive the test (a socket closed later,
    its file descriptor number reused meanwhile, breaks whatever now holds that number)."""
    server = eventlet.listen(("127.0.0.1", 0))
    sockets = [server]
    threads = eventlet.GreenPool()

    def pipe(source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass

    def serve(client):
        gate.wait()
        upstream_socket = eventlet.connect(upstream)
        sockets.append(upstream_socket)
        threads.spawn(pipe, client, upstream_socket)
        threads.spawn(pipe, upstream_socket, client)

    def accept():
        while True:
            client, _ = server.accept()
            sockets.append(client)
            threads.spawn(serve, client)

    threads.spawn(accept)

    def stop():
        for thread in list(threads.coroutines_running):
            thread.kill()
        for sock in sockets:
            sock.close()

    return server.getsockname(), stop


def test_the_listener_opens_once_the_reply_queue_is_consumed(
    container_factory, rabbit_config, base_config
):
    amqp = urlsplit(rabbit_config["AMQP_URI"])
    gate = Event()
    (host, port), stop_proxy = gated_proxy((amqp.hostname, amqp.port or 5672), gate)
    credentials = amqp.netloc.rsplit("@", 1)[0]
    proxied = urlunsplit(amqp._replace(netloc=f"{credentials}@{host}:{port}"))
    address = f"127.0.0.1:{free_port()}"
    config = {**base_config, **rabbit_config, "AMQP_URI": proxied, "WEB_SERVER_ADDRESS": address}
    config.pop("LOGGING", None)
    container = container_factory(GatewayService, config)
    try:
        starting = eventlet.spawn(container.start)
        eventlet.sleep(GATE_SECONDS)
        with pytest.raises(ConnectionRefusedError):  # no request taken before replies can come
            socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=2)
        gate.send()
        with eventlet.Timeout(30):
            starting.wait()
        assert requests.get(f"http://{address}/health", timeout=5).status_code == 200
    finally:
        if not gate.ready():
            gate.send()
        container.kill()  # its broker connections go through the proxy: closed first
        stop_proxy()
