"""The gateway process can deserialize every error any service raises: each one is a
class of the contract module, common/errors.py, sent and registered under that path."""

import json
import subprocess
import sys

import pytest
from nameko.exceptions import deserialize, serialize

from common.config import ROOT
from common.errors import BY_CODE, FORMER_PATHS, InsufficientStock

REGISTERED = (
    "import json, {modules}; from nameko.exceptions import registry; "
    "print(json.dumps(sorted(k for k in registry if k.split('.')[0] in "
    "('common', 'customers', 'products', 'orders', 'gateway'))))"
)


def registered_errors(*modules):
    out = subprocess.run(
        [sys.executable, "-c", REGISTERED.format(modules=", ".join(modules))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(json.loads(out))


def test_gateway_registers_every_service_error():
    everything = registered_errors(
        "customers.service", "products.service", "orders.service", "gateway.service"
    )
    assert "common.errors.InsufficientStock" in everything
    assert registered_errors("gateway.service") == everything


@pytest.mark.parametrize("code", sorted(BY_CODE))
def test_an_error_crosses_rpc_as_its_contract_class(code):
    """What a service sends (nameko's serialize, over JSON) is what the caller rebuilds."""
    cls = BY_CODE[code]
    sent = json.loads(json.dumps(serialize(cls("it failed", {"id": 7}))))
    assert sent["exc_path"] == f"common.errors.{cls.__name__}"
    received = deserialize(sent)
    assert type(received) is cls
    assert (received.status, received.to_dict()) == (
        cls.status,
        {"error": code, "message": "it failed", "details": {"id": 7}},
    )


def test_an_error_sent_under_its_former_path_keeps_its_class():
    """A process of the version before the contract module (rolling upgrade)."""
    sent = json.loads(json.dumps(serialize(InsufficientStock("short", {"products": []}))))
    sent["exc_path"] = "products.exceptions.InsufficientStock"
    assert type(deserialize(sent)) is InsufficientStock
    assert all(cls.__module__ == "common.errors" for cls in FORMER_PATHS.values())
