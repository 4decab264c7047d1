"""One gateway process on several addresses (``WEB_SERVER_ADDRESS`` "a,b,c"), as `make up`
runs the seed's three ports by default (``GATEWAY_PROCESSES``: scripts/supervisor.py)."""

import socket

import pytest
import requests

from gateway.service import GatewayService
from scripts.supervisor import gateway_processes, metrics_targets
from tests.harness import free_port


def refused(address):
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_one_process_answers_on_each_of_its_addresses_and_stops_listening_on_all(
    container_factory, rabbit_config, base_config
):
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    config = {**base_config, **rabbit_config, "WEB_SERVER_ADDRESS": ", ".join(addresses)}
    config.pop("LOGGING", None)
    container = container_factory(GatewayService, config)
    container.start()
    for address in addresses:
        assert requests.get(f"http://{address}/health", timeout=5).json() == {"status": "ok"}
        missing = requests.get(f"http://{address}/api/nowhere", timeout=5)
        assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    container.stop()  # the drain closes every listener, not only the first
    assert [address for address in addresses if not refused(address)] == []


CONFIG = {"GATEWAY_ADDRESSES": ["h:8000", "h:8001", "h:8002"], "PROCESSES": {}}


@pytest.mark.parametrize(
    "processes, dealt",
    [
        (1, [["h:8000", "h:8001", "h:8002"]]),
        (2, [["h:8000", "h:8002"], ["h:8001"]]),
        (3, [["h:8000"], ["h:8001"], ["h:8002"]]),
        (None, [["h:8000"], ["h:8001"], ["h:8002"]]),  # a config without the key: one each
    ],
)
def test_the_addresses_are_dealt_among_the_gateway_processes(processes, dealt):
    config = {**CONFIG, "GATEWAY_PROCESSES": processes}
    assert gateway_processes(config) == dealt
    # each process is scraped once, on its first address
    assert metrics_targets(config)["gateway"] == [addresses[0] for addresses in dealt]


def test_more_gateway_processes_than_addresses_is_refused():
    with pytest.raises(ValueError, match="GATEWAY_PROCESSES=4"):
        gateway_processes({**CONFIG, "GATEWAY_PROCESSES": 4})
