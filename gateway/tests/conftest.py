"""Fixtures of the gateway's own tests: a real gateway container on a free port."""

import pytest

from gateway.service import GatewayService
from tests.harness import free_port, service_class


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


@pytest.fixture
def start_shop(runner_factory, service_config):
    """``start_shop(**config_overrides)``: the whole shop in this process (a gateway and
    the three services, on a fresh vhost and the clean test databases); returns the
    gateway's base URL."""

    def start(**overrides):
        address = f"127.0.0.1:{free_port()}"
        config = {
            **service_config,
            "WEB_SERVER_ADDRESS": address,
            "RECOVERY_INTERVAL": 0,
            "HOLD_CHECK_INTERVAL": 0,
            **overrides,
        }
        services = [service_class(kind) for kind in ("customers", "products", "orders")]
        runner_factory(config, GatewayService, *services).start()
        return f"http://{address}"

    return start
