"""The scenarios of `make bench`, in the order they run (``PLAN``), each with its setup:

1 ceiling (``GET /api/ping``, or ``/health`` on an older gateway), 2 product read by id,
3 first page of the catalog (>= BENCH_SMALL_CATALOG, >= BENCH_BIG_CATALOG), 4 customers,
5 orders spread over BENCH_ORDER_PRODUCTS products, 6 orders on one hot product with the
oversell check, 7 a burst of new connections (Python asyncio, not wrk), 8 latency at a
fixed arrival rate (bench/latency.py).

Each scenario takes the run's context (``settings``, ``workdir``, ``api`` and, for the
catalog scenarios, ``catalog``) and returns a ``bench.report.Row`` (scenario 8: a list).
"""

import asyncio
import math
import time

import requests

from bench.data import write_ids
from bench.latency import scenario_latency
from bench.report import Row
from bench.settings import HOST
from bench.wrk import run_wrk


def scenario_ceiling(ctx):
    settings = ctx["settings"]
    probe = requests.get(settings.url("/api/ping"), timeout=10)
    if probe.status_code == 404:
        path = "/health"
        row = Row("ceiling", "1 ceiling: GET /health (no RPC; /api/ping is 404)")
    else:
        path = "/api/ping"
        row = Row("ceiling", "1 ceiling: GET /api/ping (1 RPC)")
        if probe.status_code != 200:
            row.notes.append(f"probe: /api/ping answered {probe.status_code}: {probe.text[:200]}")
    run_wrk(settings, ctx["workdir"], "get.lua", row, path, {"WRKB_PATH": path})
    return row


def scenario_by_id(ctx):
    settings, catalog = ctx["settings"], ctx["catalog"]
    present = catalog.ensure(settings.small_catalog)
    ids = catalog.sample_ids()
    ids_file = write_ids(ctx["workdir"], "product-ids.txt", ids)
    row = Row("by_id", f"2 GET /api/products/<id> (random of {present:,})")
    run_wrk(
        settings,
        ctx["workdir"],
        "product_by_id.lua",
        row,
        "/api/products/1",
        {"WRKB_IDS_FILE": ids_file},
    )
    row.notes.append(f"ids drawn from a random sample of {len(ids):,} existing products")
    return row


def scenario_list(ctx, key, at_least):
    settings, catalog = ctx["settings"], ctx["catalog"]
    present = catalog.ensure(at_least)
    row = Row(key, f"3 GET /api/products page 1 (>= {short(at_least)}: {present:,})")
    run_wrk(
        settings, ctx["workdir"], "get.lua", row, "/api/products", {"WRKB_PATH": "/api/products"}
    )
    return row


def scenario_customers(ctx):
    row = Row("customers", "4 POST /api/customers (unique emails)")
    data = run_wrk(ctx["settings"], ctx["workdir"], "create_customer.lua", row, "/api/customers")
    taken = data["statuses"].get("409", 0)
    row.invariant = "no 409" if taken == 0 else f"{taken} x 409"
    return row


def scenario_orders(ctx):
    settings, api = ctx["settings"], ctx["api"]
    print(
        f"  creating {settings.order_products} products (stock 100,000,000) and a customer via the API ..."
    )
    ids = api.create_products(settings.order_products, 100_000_000, "spread")
    customer = api.create_customer("orders-spread")
    ids_file = write_ids(ctx["workdir"], "order-product-ids.txt", ids)
    row = Row("orders", f"5 POST /api/orders (1-3 lines over {len(ids)} products)")
    run_wrk(
        settings,
        ctx["workdir"],
        "create_order.lua",
        row,
        "/api/orders",
        {"WRKB_IDS_FILE": ids_file, "WRKB_CUSTOMER": customer, "WRKB_MAX_LINES": 3},
    )
    return row


def settled_stock(api, product_id, limit_s=15.0):
    """The stock once it stops moving (two equal reads 1 s apart), at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last = api.stock(product_id)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = api.stock(product_id)
        if current == last:
            return current
        last = current
    return last


def scenario_hot(ctx):
    settings, api = ctx["settings"], ctx["api"]
    stock = 10_000_000
    product = api.create_products(1, stock, "hot")[0]
    customer = api.create_customer("orders-hot")
    before = api.stock(product)
    print(f"  hot product {product}: stock {before:,}; customer {customer}")
    row = Row("hot", "6 POST /api/orders, 1 hot product x1")
    data = run_wrk(
        settings,
        ctx["workdir"],
        "create_order.lua",
        row,
        "/api/orders",
        {"WRKB_PRODUCT": product, "WRKB_CUSTOMER": customer},
    )
    after = settled_stock(api, product)
    confirmed = data["statuses"].get("201", 0)
    sold = before - after
    lost = max(data["lost"], 0)
    detail = f"stock {before:,} -> {after:,}: {sold} sold, {confirmed} x 201"
    if after < 0:
        row.invariant, row.failed = "FAIL (stock < 0)", True
    elif lost == 0 and sold == confirmed:
        row.invariant = f"PASS ({sold} = {confirmed})"
    elif lost == 0:
        row.invariant, row.failed = f"FAIL ({sold} sold != {confirmed})", True
    elif confirmed <= sold <= confirmed + lost:
        row.invariant = f"UNSURE ({lost} unanswered)"
    else:
        row.invariant, row.failed = f"FAIL ({sold} sold, {confirmed}+{lost})", True
    row.notes.append(f"invariant: {detail}; {lost} requests unanswered")
    return row


async def burst(settings, count, port):
    request = (f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n").encode()
    go = asyncio.Event()

    async def one():
        await go.wait()
        started = time.monotonic()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
            writer.write(request)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), 10)
            while data and b"\r\n\r\n" not in data:
                more = await asyncio.wait_for(reader.read(65536), 10)
                if not more:
                    break
                data += more
            if not data:
                return "closed without answer", None
            status = data.split(b"\r\n", 1)[0].split()
            code = status[1].decode() if len(status) > 1 else "?"
            return ("ok" if code == "200" else f"HTTP {code}"), time.monotonic() - started
        except ConnectionResetError:
            return "reset", None
        except ConnectionRefusedError:
            return "refused", None
        except TimeoutError:
            return "timeout (10s)", None
        except OSError as exc:
            return f"OSError {exc.errno}", None
        finally:
            if writer is not None:
                writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    await asyncio.sleep(0.2)  # every task waiting at the gate
    started = time.monotonic()
    go.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return results, time.monotonic() - started


def scenario_burst(ctx):
    settings = ctx["settings"]
    port = 8000 if 8000 in settings.ports else settings.ports[0]
    count = settings.burst
    row = Row("burst", f"7 burst: {count} new conns at once, GET /health :{port}")
    results, elapsed = asyncio.run(burst(settings, count, port))
    outcomes = {}
    for outcome, _ in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    times = sorted(t for outcome, t in results if outcome == "ok")
    ok = outcomes.get("ok", 0)
    row.rps = ok / elapsed if elapsed > 0 else 0.0
    if times:
        row.p50, row.p95, row.p99 = (percentile(times, q) * 1000 for q in (50, 95, 99))
    row.errors = count - ok
    resets = outcomes.get("reset", 0)
    row.invariant = f"{ok}/{count} ok, {resets} resets"
    row.notes.append(
        f"every connection finished within {elapsed:.2f}s; outcomes "
        + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
        + "; latency = connect + request + full answer"
    )
    row.raw = {"outcomes": outcomes, "elapsed_s": elapsed}
    return row


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def short(n):
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


PLAN = (
    ("ceiling", scenario_ceiling),
    ("by_id", scenario_by_id),
    ("list_small", lambda ctx: scenario_list(ctx, "list_small", ctx["settings"].small_catalog)),
    ("list_big", lambda ctx: scenario_list(ctx, "list_big", ctx["settings"].big_catalog)),
    ("customers", scenario_customers),
    ("orders", scenario_orders),
    ("hot", scenario_hot),
    ("burst", scenario_burst),
    ("latency", scenario_latency),  # a list of rows: capacities and fixed-rate rows
)
# The scenarios that read the products table directly (bench.data.Catalog).
NEEDS_CATALOG = {"by_id", "list_small", "list_big", "latency"}
