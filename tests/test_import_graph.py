"""No service package imports another (issue 15): what crosses a service boundary is the
contract in common/errors.py, carried over RPC, never another service's code.

Every .py file under customers/, products/, orders/ and gateway/ (their tests/ folders
included: a service's tests import that service only, and start the other services'
containers by their registered name, tests.harness.service_class) is parsed with ``ast``,
never imported, so an import inside a function or behind a condition counts too. common/
is the shared layer below the services: it imports none of them.
"""

import ast
from pathlib import Path

import pytest

from common.config import ROOT as ROOT_DIR
from common.registry import PROCESS_KINDS

ROOT = Path(ROOT_DIR)
SERVICE_PACKAGES = frozenset(PROCESS_KINDS)  # customers, products, orders, gateway
DYNAMIC_IMPORTS = frozenset({"import_module", "__import__"})


def imported_modules(source, module):
    """Every module ``source`` (the text of ``module``, a dotted name) imports, absolute:
    ``import``, ``from ... import`` (relative ones resolved) and string literals passed to
    ``importlib.import_module`` / ``__import__``; with the line of each."""
    package = module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else [])), node.lineno
            else:
                yield node.module, node.lineno
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if (
                name in DYNAMIC_IMPORTS
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                yield arg.value, node.lineno


def foreign_imports(source, module):
    """The imports of service packages other than ``module``'s own."""
    others = SERVICE_PACKAGES - {module.split(".")[0]}
    return [
        (imported, line)
        for imported, line in imported_modules(source, module)
        if imported.split(".")[0] in others
    ]


def modules_under(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        yield path, ".".join(relative.parts).removesuffix(".__init__")


def violations(package):
    """``path:line imports module`` for each foreign import under ``package``/."""
    return [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for path, module in modules_under(package)
        for imported, line in foreign_imports(path.read_text(), module)
    ]


@pytest.mark.parametrize("package", sorted(SERVICE_PACKAGES))
def test_no_service_package_imports_another(package):
    assert list(modules_under(package)), f"no Python file under {package}/"
    assert violations(package) == []


def test_common_imports_no_service_package():
    assert violations("common") == []


@pytest.mark.parametrize(
    "source",
    [
        "import products.exceptions",
        "from products.exceptions import InsufficientStock",
        "from products import stock",
        "import customers",
        "def f():\n    from customers.service import CustomersService",
        "if True:\n    import gateway.http as http",
        "import importlib\nimportlib.import_module('customers.service')",
        "from ...products import stock",
    ],
)
def test_the_check_sees_a_foreign_import(source):
    assert foreign_imports(source, "orders.tests.test_x") != []


@pytest.mark.parametrize(
    "source",
    [
        "from orders import flow",
        "from orders.exceptions import OrderFailed",
        "from . import flow",
        "from .models import Order",
        "from common.errors import InsufficientStock",
        "import productsish",
        "from tests.harness import service_class",
    ],
)
def test_the_check_lets_own_and_shared_imports_through(source):
    assert foreign_imports(source, "orders.tests.test_x") == []
