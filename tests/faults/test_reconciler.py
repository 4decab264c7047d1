"""The hold reconciler keeps up (issue 9, part 2): with a backlog of aged holds and an
order load running, stock held for orders that never existed (orphans) is back within
HOLD_CONFIRM_AGE + one HOLD_CHECK_INTERVAL (+ SLACK), and the books balance.

The backlog is written straight into the test databases: BACKLOG holds ``reserved`` ten
minutes ago, each with its ``confirmed`` order, and no lines (no stock effect: the books
check sees neither). The orphans are real reservations (``products.reserve_stock`` over
RPC) for order_refs orders never heard of, made while the load runs, on a product of
their own; the reconciler must release them, and the books check requires their stock
back. The reconciler handles holds oldest first, so an orphan is on time only if the
whole backlog ahead of it is gone by then: the old reconciler (the same 100 holds per
tick in every process: about 100 holds/s here) needed 200 s for the backlog alone.

Bounded: the load runs until the orphans are released (about 15 s), at most their
deadline + 30 s; the stack's start and stop take about as long again.
"""

import time
import uuid

import eventlet
import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from tests.faults.conftest import FAST_RECOVERY, StoppableLoad, create_shop

BACKLOG = 20_000
ORPHANS = 20
ORPHAN_EVERY = 0.1  # seconds between two orphans, from the start of the load
# As many orders as 10 clients get through (toward `make bench`'s peak of 75-90/s here),
# stopped once every orphan is released: LOAD_COUNT is only an upper bound.
LOAD_COUNT, LOAD_CONCURRENCY, LOAD_PACE = 10_000, 10, 0.02
# Allowed beyond HOLD_CONFIRM_AGE + HOLD_CHECK_INTERVAL: the batch that finds the orphan
# (one orders.order_states RPC, its UPDATE) and the release, on a loaded 2-core machine.
SLACK = 3.0
DEADLINE = FAST_RECOVERY["HOLD_CONFIRM_AGE"] + FAST_RECOVERY["HOLD_CHECK_INTERVAL"] + SLACK


@pytest.fixture
def shop(stack):
    """Overrides conftest's: five products with stock for the whole load (every order
    confirmed, so holds keep coming for the reconciler), and the customer."""
    return create_shop(stack.urls[0], products=5, stock=5000)


@pytest.fixture
def orphan_product(stack, shop):
    """A product only orphans hold; in the books (``shop``), so its stock must come back."""
    product = requests.post(
        f"{stack.urls[0]}/api/products", json={"name": "orphaned", "price": "1.00", "stock": 100}
    ).json()
    shop[1][product["id"]] = 100
    return product["id"]


@pytest.fixture
def load(stack, shop, orphan_product):
    customer_id, stock_added = shop
    product_ids = sorted(pid for pid in stock_added if pid != orphan_product)
    return StoppableLoad(
        stack.urls,
        customer_id,
        product_ids,
        count=LOAD_COUNT,
        concurrency=LOAD_CONCURRENCY,
        pace=LOAD_PACE,
    )


def insert_backlog(engines, customer_id):
    """The orders first: the reconcilers are running, and a hold this old whose order they
    cannot see is an orphan (rightly: an order transaction cannot stay open that long)."""
    with engines["orders"].begin() as conn:
        conn.execute(
            text(
                "INSERT INTO orders (order_ref, customer_id, status, total, requested, "
                "idempotency_key, created_at, updated_at) "
                "SELECT 'backlog-' || n, :customer_id, 'confirmed', 0, '[]', 'backlog-' || n, "
                "now() - interval '10 minutes', now() - interval '10 minutes' "
                "FROM generate_series(1, :count) AS n"
            ),
            {"count": BACKLOG, "customer_id": customer_id},
        )
    with engines["products"].begin() as conn:
        conn.execute(
            text(
                "INSERT INTO order_holds (order_ref, status, created_at, updated_at) "
                "SELECT 'backlog-' || n, 'reserved', t, t FROM generate_series(1, :count) AS n, "
                "LATERAL (SELECT now() - interval '10 minutes' + n * interval '1 ms') AS c(t)"
            ),
            {"count": BACKLOG},
        )


def orphan_holds(engines, refs):
    """``{order_ref: (status, seconds from its reservation to its last change)}``."""
    with engines["products"].connect() as conn:
        rows = conn.execute(
            text(
                "SELECT order_ref, status, extract(epoch FROM updated_at - created_at) "
                "FROM order_holds WHERE order_ref = ANY(CAST(:refs AS text[]))"
            ),
            {"refs": refs},
        )
        return {ref: (status, float(seconds)) for ref, status, seconds in rows}


def test_orphaned_stock_is_back_on_time_under_load_and_a_backlog(
    stack, shop, orphan_product, load, check_books, clean_databases
):
    customer_id, _ = shop
    insert_backlog(clean_databases, customer_id)
    started = time.monotonic()
    load.start()
    try:
        orphans = make_orphans(stack, orphan_product)
        give_up = time.monotonic() + DEADLINE + 30
        while {status for status, _ in orphan_holds(clean_databases, orphans).values()} != {
            "released"
        }:
            assert time.monotonic() < give_up, (
                f"orphans still held {DEADLINE + 30:.0f} s after the last one was made: "
                f"{orphan_holds(clean_databases, orphans)}"
            )
            eventlet.sleep(0.2)
        assert len(load.answers) < LOAD_COUNT, "the load was over before the orphans were released"
    finally:
        load.stop()
    load_rate = len(load.answers) / (time.monotonic() - started)
    held_for = {
        ref: seconds for ref, (_, seconds) in orphan_holds(clean_databases, orphans).items()
    }
    late = {ref: seconds for ref, seconds in held_for.items() if seconds > DEADLINE}
    assert not late, f"released later than {DEADLINE} s after their reservation: {late}"

    load.settle()
    with clean_databases["products"].connect() as conn:
        assert conn.execute(
            text(
                "SELECT status, count(*) FROM order_holds WHERE order_ref LIKE 'backlog-%' "
                "GROUP BY status"
            )
        ).all() == [("confirmed", BACKLOG)]
        backlog_seconds = conn.scalar(
            text(
                "SELECT extract(epoch FROM max(updated_at) - min(updated_at)) FROM order_holds "
                "WHERE order_ref LIKE 'backlog-%'"
            )
        )
    check_books()  # the orphans' stock is back: the orphaned product has its 100 units
    print(
        f"orphans held {min(held_for.values()):.1f}-{max(held_for.values()):.1f} s "
        f"(deadline {DEADLINE} s), under {len(load.answers)} orders at {load_rate:.0f}/s; "
        f"backlog confirmed in {float(backlog_seconds):.1f} s"
    )


def make_orphans(stack, product_id):
    """ORPHANS reservations over RPC, ORPHAN_EVERY seconds apart, for order_refs orders
    never made (as an orders process killed before its commit leaves them)."""
    refs = []
    with ClusterRpcProxy({"AMQP_URI": stack.env["AMQP_URI"]}, timeout=10) as cluster:
        for _ in range(ORPHANS):
            eventlet.sleep(ORPHAN_EVERY)
            ref = f"orphan-{uuid.uuid4().hex}"
            hold = cluster.products.reserve_stock(ref, [{"id": product_id, "quantity": 1}])
            assert hold["status"] == "reserved"
            refs.append(ref)
    return refs
