"""End-to-end layer: the real stack as separate processes, driven over HTTP.

One stack for the whole folder (tests/harness.py): customers x1, products x2, orders x2 and, as
`make up` runs it, one gateway process listening on three free ports, on their own RabbitMQ
vhost and the test databases.
Tests talk to it only through HTTP (and read the databases to check invariants).
"""

import pytest

from tests.harness import books_balance, stack_on_vhost

PROCESSES = {"customers": 1, "products": 2, "orders": 2}


@pytest.fixture(scope="package")
def stack(request, rabbit_manager, databases, tmp_path_factory):
    """Up for the tests of this folder only: the fault layer starts stacks of its own, and
    two at once would exceed PostgreSQL's default 100 connections."""
    with stack_on_vhost(
        request,
        rabbit_manager,
        databases,
        str(tmp_path_factory.mktemp("e2e-stack")),
        "shop_e2e",
        PROCESSES,
        gateway_processes=1,
    ) as running:
        yield running


@pytest.fixture
def api(stack, clean_databases):
    """The first gateway's base URL, in front of empty databases."""
    return stack.urls[0]


@pytest.fixture
def assert_books_balance(clean_databases):
    def check(stock_added):
        assert books_balance(clean_databases, stock_added) == []

    return check
