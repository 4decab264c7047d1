"""The gateway process can deserialize every error any service raises."""
import json
import subprocess
import sys

from common.config import ROOT

REGISTERED = (
    "import json, {modules}; from nameko.exceptions import registry; "
    "print(json.dumps(sorted(k for k in registry if k.split('.')[0] in "
    "('common', 'customers', 'products', 'orders', 'gateway'))))"
)


def registered_errors(*modules):
    out = subprocess.run(
        [sys.executable, "-c", REGISTERED.format(modules=", ".join(modules))],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return set(json.loads(out))


def test_gateway_registers_every_service_error():
    everything = registered_errors(
        "customers.service", "products.service", "orders.service", "gateway.service"
    )
    assert "products.exceptions.InsufficientStock" in everything
    assert registered_errors("gateway.service") == everything
