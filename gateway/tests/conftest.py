"""Fixtures of the gateway's own tests: a real gateway container on a free port."""
import pytest

from gateway.service import GatewayService
from tests.harness import free_port


@pytest.fixture
def start_gateway(container_factory, rabbit_config, base_config):
    """``start_gateway(**config_overrides)``: a GatewayService container listening on a
    free port of 127.0.0.1, on a fresh vhost (no service runs there unless the test starts
    one); returns its base URL."""

    def start(**overrides):
        address = f"127.0.0.1:{free_port()}"
        config = {**base_config, **rabbit_config, "WEB_SERVER_ADDRESS": address, **overrides}
        config.pop("LOGGING", None)
        container_factory(GatewayService, config).start()
        return f"http://{address}"

    return start
