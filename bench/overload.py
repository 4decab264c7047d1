"""`make bench-overload`: the shop at 1x to 16x the order connections it serves, with
reads alongside (issue 22). Run against `make up`.

Each level keeps ``BASE x level`` keep-alive connections busy placing orders back to back
(a shed order, ``503 overloaded``, is sent again at once, as wrk would: the offered load
never lets up), spread over the gateway ports, for ``BENCH_OVERLOAD_SECONDS``; meanwhile
one reader fetches a product and ``/health`` every 0.2 s on connections of its own.
wrk cannot say which latency belongs to which status, so the clients are Python asyncio
ones (cheap enough: a few percent of a core at these rates). Printed per level:
goodput (201/s) and its ratio to the 1x level's, sheds/s, other answers, p50/p99 of the
admitted orders (201) and of the sheds, and the reads' p50/max.

Knobs: BENCH_OVERLOAD_BASE [12], BENCH_OVERLOAD_LEVELS [1,2,4,8,16],
BENCH_OVERLOAD_SECONDS [15], BENCH_PORTS [8000,8001,8002]. Traffic goes to 127.0.0.1
only; every level is bounded in time, and answers are awaited at most 30 s. Results are
saved as JSON under .run/bench/.
"""

import asyncio
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.client import Connection  # noqa: E402
from bench.data import Api  # noqa: E402
from bench.report import machine_info  # noqa: E402
from bench.scenarios import percentile  # noqa: E402
from bench.settings import Settings, env_number  # noqa: E402

READ_EVERY = 0.2


async def run_level(ports, connections, seconds, order_body, product_id):
    """``connections`` order clients and one reader for ``seconds``; their answers."""
    orders, reads = [], []
    stop_at = time.monotonic() + seconds

    async def ordering(index):
        connection = Connection(ports[index % len(ports)])
        while time.monotonic() < stop_at:
            status, took = await connection.request("POST", "/api/orders", order_body)
            orders.append((status, took))
        connection.close()

    async def reading():
        product, health = Connection(ports[0]), Connection(ports[-1])
        while time.monotonic() < stop_at:
            reads.append(("product", *await product.request("GET", f"/api/products/{product_id}")))
            reads.append(("health", *await health.request("GET", "/health")))
            await asyncio.sleep(READ_EVERY)
        product.close()
        health.close()

    await asyncio.gather(reading(), *(ordering(index) for index in range(connections)))
    return orders, reads


def summarize(level, connections, seconds, orders, reads):
    served = sorted(took for status, took in orders if status == 201)
    shed = sorted(took for status, took in orders if status == 503)
    product_reads = sorted(took for what, status, took in reads if what == "product")

    def ms(values, q):
        value = percentile(values, q)
        return None if value is None else round(value * 1000, 1)

    return {
        "level": level,
        "connections": connections,
        "goodput_per_s": round(len(served) / seconds, 1),
        "shed_per_s": round(len(shed) / seconds, 1),
        "other": {
            str(status): sum(1 for s, _ in orders if s == status)
            for status in {s for s, _ in orders} - {201, 503}
        },
        "admitted_p50_ms": ms(served, 50),
        "admitted_p99_ms": ms(served, 99),
        "shed_p99_ms": ms(shed, 99),
        "read_p50_ms": ms(product_reads, 50),
        "read_max_ms": round(max(product_reads) * 1000, 1) if product_reads else None,
        "read_errors": sum(1 for _, status, _ in reads if status != 200),
    }


def print_table(rows):
    base = rows[0]["goodput_per_s"] or 1
    print(
        f"{'level':>5} {'conns':>5} {'goodput/s':>9} {'x 1x':>5} {'shed/s':>7} "
        f"{'p50 adm':>8} {'p99 adm':>8} {'p99 shed':>8} {'read p50':>8} {'read max':>8} other"
    )
    for row in rows:
        print(
            f"{row['level']:>4}x {row['connections']:>5} {row['goodput_per_s']:>9} "
            f"{row['goodput_per_s'] / base:>5.2f} {row['shed_per_s']:>7} "
            f"{row['admitted_p50_ms'] or '-':>8} {row['admitted_p99_ms'] or '-':>8} "
            f"{row['shed_p99_ms'] or '-':>8} {row['read_p50_ms'] or '-':>8} "
            f"{row['read_max_ms'] or '-':>8} {row['other'] or ''}"
            f"{' read errors ' + str(row['read_errors']) if row['read_errors'] else ''}"
        )
    print("(ms; adm: admitted orders, 201; shed: 503 overloaded; reads: GET a product)")


def main():
    settings = Settings()
    base = env_number("BENCH_OVERLOAD_BASE", 12, int)
    seconds = env_number("BENCH_OVERLOAD_SECONDS", 15.0)
    raw_levels = os.environ.get("BENCH_OVERLOAD_LEVELS", "1,2,4,8,16")
    levels = [int(level) for level in raw_levels.split(",") if level.strip()]
    api = Api(settings)
    product_ids = api.create_products(3, 100_000_000, "overload")
    customer = api.create_customer("overload")
    body = json.dumps(
        {"customer_id": customer, "products": [{"id": pid, "quantity": 1} for pid in product_ids]}
    ).encode()
    rows = []
    for level in levels:
        connections = base * level
        print(f"  {level}x: {connections} connections, {seconds:g} s ...", flush=True)
        orders, reads = asyncio.run(
            run_level(settings.ports, connections, seconds, body, product_ids[0])
        )
        rows.append(summarize(level, connections, seconds, orders, reads))
        time.sleep(2)  # the last answers drain before the next level
    print_table(rows)
    out_dir = os.path.join(ROOT, ".run", "bench")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"overload-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as out:
        json.dump({"machine": machine_info(), "rows": rows}, out, indent=2)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
